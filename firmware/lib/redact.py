# What a node never prints: the secrets in its config (wifi.password, broker.password, key).
# A module of its own, a few hundred bytes: the diag report redacts without loading config.py.
SECRETS = ("password", "key")


def redacted(cfg):
    """A copy safe to print: every secret replaced by '***' (or None when unset)."""
    if isinstance(cfg, dict):
        return {k: (("***" if v else None) if k in SECRETS else redacted(v)) for k, v in cfg.items()}
    return cfg
