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
    node_keys: dict = field(default_factory=dict, repr=False)  # node id -> key bytes
    require_mac: bool = False


_SECTIONS = {
    ("pole", "id"): "pole_id",
    ("broker", "host"): "broker_host",
    ("broker", "port"): "broker_port",
    ("broker", "user"): "broker_user",
    ("broker", "password"): "broker_password",
    ("upstream", "url"): "upstream",
    ("upstream", "batch_interval_s"): "batch_interval_s",
    ("upstream", "batch_max"): "batch_max",
    ("state", "dir"): "state_dir",
    ("nodes", "require_mac"): "require_mac",
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
        for (section, key), attr in _SECTIONS.items():
            if key in data.get(section, {}):
                setattr(cfg, attr, data[section][key])
        for node, hexkey in data.get("nodes", {}).get("keys", {}).items():
            try:
                cfg.node_keys[node] = bytes.fromhex(hexkey)
            except (TypeError, ValueError):
                raise UserError(f"config {path}: nodes.keys.{node} must be the key in hex") from None
    for name, value in overrides.items():
        if value is not None:
            setattr(cfg, name, value)
    cfg.state_dir = Path(cfg.state_dir)
    for name in ("broker_port", "batch_max"):
        if not isinstance(getattr(cfg, name), int) or getattr(cfg, name) <= 0:
            raise UserError(f"{name.replace('_', '.', 1)} must be a positive integer, not {getattr(cfg, name)!r}")
    if not isinstance(cfg.batch_interval_s, (int, float)) or not 0 < cfg.batch_interval_s <= 3600:
        raise UserError("upstream.batch_interval_s must be a number of seconds from 0 to 3600")
    return cfg
