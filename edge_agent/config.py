"""The edge agent's settings: read here and nowhere else (file, then command-line overrides)."""

import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from openpole.errors import UserError


@dataclass
class AgentConfig:
    pole_id: str = "pole"
    broker_host: str = "127.0.0.1"
    broker_port: int = 1883
    broker_user: str | None = None
    broker_password: str | None = field(default=None, repr=False)  # never logged
    upstream: str = "http://127.0.0.1:8080"
    state_dir: Path = Path("/var/lib/openpole")
    batch_interval_s: float = 10.0  # a batch leaves at most this long after its first record
    batch_max: int = 2000  # records per batch
    upstream_key: bytes | None = field(default=None, repr=False)  # signs batches (COSE_Mac0 HMAC)
    compress: bool = False  # gzip batches over HTTP
    # nats:// upstreams: credentials (user and password, or a .creds file with an nkey) and a CA
    nats_user: str | None = None
    nats_password: str | None = field(default=None, repr=False)
    nats_creds: str | None = None
    nats_tls_ca: str | None = None
    node_keys: dict = field(default_factory=dict, repr=False)  # node id -> key bytes
    node_keys_file: Path | None = None  # nodes.keys_file, resolved: the service user must own it
    require_mac: bool = False
    group_commit_ms: int = 50  # a node message waits at most this long for its PUBACK
    # ... or sooner, once nothing has arrived for this long: after a short read the MQTT 3.1.1 ingest
    # waits this long for more (a trickle comes a few messages a wake-up, each of them up to this
    # late) and tells the writer when none came (edge_agent/ingest.py).
    group_commit_idle_ms: float = 8.0
    receive_maximum: int = 4096  # MQTT v5: unacknowledged messages the broker may send us
    # 3.1.1 by default: paho builds a v5 Properties object per message (a quarter of the agent's
    # CPU); the pole's broker config allows the in-flight window v5's Receive Maximum would ask for.
    mqtt_version: int = 3
    quota_bytes: int = 512 * 1024 * 1024  # pending data on disk; the oldest goes first past it
    min_free_bytes: int = 64 * 1024 * 1024  # below this free on the queue's disk, nothing is stored or acked
    max_age_s: float = 7 * 86400.0  # pending data older than this is dropped (counted)
    metrics_port: int = 9108  # Prometheus text at http://127.0.0.1:PORT/metrics; 0: off
    sources: list = field(default_factory=list)  # [[sources]] tables: sensors on the Pi, serial nodes
    # The pole's web page (edge_agent/page.py): off unless page.listen is set.
    page_listen: str = ""  # HOST:PORT, e.g. "0.0.0.0:8080"
    page_password_hash: str | None = field(default=None, repr=False)  # `openpole pole init` writes it
    page_open_read: bool = True  # false: the read-only pages ask for the password too
    page_offline_after_s: float = 180.0  # a node silent this long shows offline
    page_refresh_s: float = 5.0  # how often an open page updates itself
    # Over-the-air updates (edge_agent/ota.py, docs/ota.md).
    ota_release_keys: list = field(default_factory=list)  # Ed25519 public keys (hex) a bundle may be signed by
    ota_require_signed: bool = False  # true: unsigned bundles are refused
    ota_pace_ms: int = 100  # a node asks for its next chunk no sooner than this
    ota_trial_s: int = 300  # the new app has this long to confirm, or the node rolls back
    ota_max_parallel: int = 1  # nodes updating at once, unless a push says otherwise


_SECTIONS = {
    ("pole", "id"): "pole_id",
    ("broker", "host"): "broker_host",
    ("broker", "port"): "broker_port",
    ("broker", "user"): "broker_user",
    ("broker", "password"): "broker_password",
    ("upstream", "url"): "upstream",
    ("upstream", "batch_interval_s"): "batch_interval_s",
    ("upstream", "batch_max"): "batch_max",
    ("upstream", "compress"): "compress",
    ("upstream", "nats_user"): "nats_user",
    ("upstream", "nats_password"): "nats_password",
    ("upstream", "nats_creds"): "nats_creds",
    ("upstream", "nats_tls_ca"): "nats_tls_ca",
    ("state", "dir"): "state_dir",
    ("state", "quota_bytes"): "quota_bytes",
    ("state", "min_free_bytes"): "min_free_bytes",
    ("state", "max_age_s"): "max_age_s",
    ("ingest", "group_commit_ms"): "group_commit_ms",
    ("ingest", "group_commit_idle_ms"): "group_commit_idle_ms",
    ("ingest", "receive_maximum"): "receive_maximum",
    ("ingest", "mqtt_version"): "mqtt_version",
    ("metrics", "port"): "metrics_port",
    ("page", "listen"): "page_listen",
    ("page", "password_hash"): "page_password_hash",
    ("page", "open_read"): "page_open_read",
    ("page", "offline_after_s"): "page_offline_after_s",
    ("page", "refresh_s"): "page_refresh_s",
    ("nodes", "require_mac"): "require_mac",
    ("ota", "require_signed"): "ota_require_signed",
    ("ota", "pace_ms"): "ota_pace_ms",
    ("ota", "trial_s"): "ota_trial_s",
    ("ota", "max_parallel"): "ota_max_parallel",
}


def load(path=None, **overrides):
    cfg = AgentConfig()
    if path is not None:
        try:
            data = tomllib.loads(Path(path).read_text())
        except OSError as e:
            raise UserError(f"cannot read config {path}: {e.strerror}") from None
        except tomllib.TOMLDecodeError as e:
            raise UserError(f"config {path} is not valid TOML: {e}") from None
        _check_known(data, path)
        for (section, key), attr in _SECTIONS.items():
            if key in data.get(section, {}):
                setattr(cfg, attr, _typed(data[section][key], attr, f"{section}.{key}", path))
        if "dir" in data.get("state", {}) and not Path(cfg.state_dir).is_absolute():
            cfg.state_dir = Path(path).resolve().parent / cfg.state_dir  # as keys_file: beside the config
        if "key" in data.get("upstream", {}):
            cfg.upstream_key = _key(data["upstream"]["key"], f"config {path}: upstream.key", "the pole's key")
        cfg.sources = data.get("sources", [])
        cfg.ota_release_keys = _release_keys(data.get("ota", {}).get("release_keys", []), path)
        keys_file = data.get("nodes", {}).get("keys_file")
        if keys_file:  # `openpole pole init` keeps the keys apart, readable by the agent alone
            keys_path = cfg.node_keys_file = (Path(path).parent / keys_file).resolve()
            try:
                _read_keys(cfg, tomllib.loads(keys_path.read_text()), keys_path)
            except OSError as e:
                raise UserError(f"config {path}: nodes.keys_file {keys_path}: {e.strerror}") from None
            except tomllib.TOMLDecodeError as e:
                raise UserError(f"{keys_path} is not valid TOML: {e}") from None
        _read_keys(cfg, data, path)
    for name, value in overrides.items():
        if value is not None:
            setattr(cfg, name, value)
    cfg.state_dir = Path(cfg.state_dir)
    from openpole.wire.batch import POLE_ID

    if not isinstance(cfg.pole_id, str) or not POLE_ID.fullmatch(cfg.pole_id):
        raise UserError(f"pole.id {cfg.pole_id!r}: 1-64 of a-z, A-Z, 0-9, '.', '_' and '-' (it names the pole upstream)")
    for name in ("broker_port", "batch_max", "quota_bytes", "receive_maximum"):
        if not isinstance(getattr(cfg, name), int) or getattr(cfg, name) <= 0:
            raise UserError(f"{name.replace('_', '.', 1)} must be a positive integer, not {getattr(cfg, name)!r}")
    if not isinstance(cfg.batch_interval_s, (int, float)) or not 0 < cfg.batch_interval_s <= 3600:
        raise UserError("upstream.batch_interval_s must be a number of seconds from 0 to 3600")
    if cfg.mqtt_version not in (3, 5):
        raise UserError("ingest.mqtt_version must be 3 (MQTT 3.1.1) or 5")
    if cfg.page_listen:
        from openpole.common import parse_hostport

        parse_hostport(cfg.page_listen, 8080, flag="page.listen")
        if cfg.page_password_hash and not cfg.page_password_hash.startswith("scrypt$"):
            raise UserError("page.password_hash: not a hash `openpole pole init` wrote (scrypt$...); run "
                            "`openpole pole init --page-password` again")
    if cfg.page_listen and not cfg.page_open_read and not cfg.page_password_hash:
        raise UserError("page.open_read = false needs page.password_hash (openpole pole init writes it): without it "
                        "the page would be open to all")
    for name in ("page_offline_after_s", "page_refresh_s"):
        if not 1 <= getattr(cfg, name) <= 86400:
            raise UserError(f"{name.replace('_', '.', 1)} must be 1 to 86400 seconds")
    for name, lo, hi in (("ota_pace_ms", 0, 60000), ("ota_trial_s", 30, 86400), ("ota_max_parallel", 1, 1000)):
        if not lo <= getattr(cfg, name) <= hi:
            raise UserError(f"ota.{name[4:]} must be {lo} to {hi}")
    if not isinstance(cfg.group_commit_ms, int) or not 0 <= cfg.group_commit_ms <= 100:
        raise UserError("ingest.group_commit_ms must be 0 to 100 (a node waits that long for its PUBACK)")
    return cfg


# Settings the file may hold beyond _SECTIONS, read by their own code.
_OTHER = {("upstream", "key"), ("nodes", "keys_file"), ("nodes", "keys"), ("ota", "release_keys")}


def _check_known(data, path):
    """Unknown sections and keys fail at start: a misspelt setting silently left at its default is
    a pole that misbehaves for months."""
    known = set(_SECTIONS) | _OTHER
    sections = {s for s, _ in known}
    for section, table in data.items():
        if section == "sources":
            if not isinstance(table, list):
                raise UserError(f"config {path}: sources must be [[sources]] tables")
            continue
        if section not in sections:
            raise UserError(f"config {path}: unknown section [{section}] (known: {', '.join(sorted(sections | {'sources'}))})")
        if not isinstance(table, dict):
            raise UserError(f"config {path}: {section} must be a table ([{section}])")
        for key in table:
            if (section, key) not in known:
                names = sorted(k for s, k in known if s == section)
                raise UserError(f"config {path}: unknown setting {section}.{key} (known in [{section}]: {', '.join(names)})")


def _typed(value, attr, name, path):
    """The value if it has the setting's type (from AgentConfig's default); else a one-line error.
    TOML has real booleans: require_mac = "false" is an error, not true."""
    default = getattr(AgentConfig(), attr)
    if isinstance(default, bool):
        ok, what = type(value) is bool, "true or false"
    elif isinstance(default, int):
        ok, what = type(value) is int, "a whole number"
    elif isinstance(default, float):
        ok, what = type(value) in (int, float), "a number"
    else:  # text: str, Path, or a secret that defaults to None
        ok, what = type(value) is str, "text in quotes"
    if not ok:
        raise UserError(f"config {path}: {name} must be {what}, not {value!r}")
    return value


KEY_MIN_BYTES = 16  # what `openpole flash` makes is 32; an empty or one-byte key signs nothing


def _key(hexkey, where, what):
    """A key from its hex text, or a one-line UserError (never showing the key)."""
    try:
        key = bytes.fromhex(hexkey)
    except (TypeError, ValueError):
        raise UserError(f"{where} must be {what} in hex") from None
    if len(key) < KEY_MIN_BYTES:
        raise UserError(f"{where} is {len(key)} bytes: {what} is at least {KEY_MIN_BYTES} (32 from openpole flash)")
    return key


def _read_keys(cfg, data, path):
    for node, hexkey in data.get("nodes", {}).get("keys", {}).items():
        cfg.node_keys[node] = _key(hexkey, f"config {path}: nodes.keys.{node}", "the node's key")


def _release_keys(keys, path):
    """[ota] release_keys: Ed25519 public keys, 64 hex digits each (what `openpole ota keygen` prints)."""
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise UserError(f"config {path}: ota.release_keys must be a list of keys in quotes")
    for k in keys:
        try:
            ok = len(bytes.fromhex(k)) == 32
        except ValueError:
            ok = False
        if not ok:
            raise UserError(f"config {path}: ota.release_keys: {k[:16]!r}... is not an Ed25519 public key (64 hex "
                            "digits, as `openpole ota keygen` prints)")
    return [k.lower() for k in keys]
