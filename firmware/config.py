# Node configuration: JSON on the flash (config.json), validated, with safe defaults.
# Secrets (wifi.password, broker.password, key) are never printed: use redacted().
import json

PATH = "config.json"
SECRETS = ("password", "key")
DEFAULTS = {
    "board": "esp32-devkitc",
    "interval_s": 60,
    "sensors": {"bme280": {"address": 0x76}},
    "broker": {"host": "192.168.4.1", "port": 1883, "user": None, "password": None},
    "wifi": {"ssid": "", "password": ""},
    "key": None,
}
_ID_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789_-"


class ConfigError(ValueError):
    pass


def validate(cfg):
    """Fill defaults and check types; raise ConfigError naming the field."""
    out = {}
    for k, v in DEFAULTS.items():
        out[k] = cfg.get(k, v)
    for k, v in cfg.items():
        out.setdefault(k, v)
    node_id = out.get("node_id")
    if not isinstance(node_id, str) or not 1 <= len(node_id) <= 32 or any(c not in _ID_CHARS for c in node_id):
        raise ConfigError("node_id: 1-32 characters of a-z, 0-9, _ and -")
    if not isinstance(out["interval_s"], (int, float)) or not 0.1 <= out["interval_s"] <= 86400:
        raise ConfigError("interval_s: a number of seconds from 0.1 to 86400")
    if not isinstance(out["sensors"], dict):
        raise ConfigError("sensors: a table of sensor name -> settings")
    b = out["broker"]
    if not isinstance(b, dict) or not isinstance(b.get("host"), str) or not isinstance(b.get("port", 1883), int):
        raise ConfigError("broker: needs host (text) and port (number)")
    return out


def load(path=PATH):
    with open(path) as f:
        return validate(json.load(f))


def redacted(cfg):
    """A copy safe to print: every secret replaced by '***' (or None when unset)."""
    if isinstance(cfg, dict):
        return {k: (("***" if v else None) if k in SECRETS else redacted(v)) for k, v in cfg.items()}
    return cfg
