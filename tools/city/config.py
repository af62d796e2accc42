"""`openpole city load`'s settings: read here and nowhere else (the --config file, then the flags).

The file is TOML (docs/city.md shows every key with its default); an unknown section or key, or a
value of the wrong type, stops the loader at start with one line naming it.
"""

import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path

from ..errors import UserError


@dataclass
class LoadConfig:
    nats: str | None = None  # the cluster's servers: nats://a:4222,nats://b:4222
    nats_creds: str | None = None
    nats_tls_ca: str | None = None
    db: str | None = field(default=None, repr=False)  # a DSN may hold a password: never shown
    keys: str | None = None  # TOML table of pole id = key (hex)
    group: int = 200  # batches fetched and committed at once
    name: str | None = None  # this loader's name in `city status` (default HOST:PID)
    metrics: str | None = None  # HOST:PORT for Prometheus
    quiet: bool = False
    exit_when_idle: float | None = None  # a flag only: batch runs and tests
    # The hourly and daily aggregates are folded in this often (seconds) by one loader at a time; 0:
    # this loader leaves them to the others.
    aggregate_every_s: float = 10.0


# (section, key) in the file -> (attribute, what it must be)
_KEYS = {
    ("nats", "url"): ("nats", str),
    ("nats", "creds"): ("nats_creds", str),
    ("nats", "tls_ca"): ("nats_tls_ca", str),
    ("db", "dsn"): ("db", str),
    ("load", "keys"): ("keys", str),
    ("load", "group"): ("group", int),
    ("load", "name"): ("name", str),
    ("load", "metrics"): ("metrics", str),
    ("load", "quiet"): ("quiet", bool),
    ("aggregates", "every_s"): ("aggregate_every_s", float),
}
_WHAT = {str: "text in quotes", int: "a whole number", float: "a number", bool: "true or false"}


def load(path=None, **overrides):
    """The settings from the file at path (None: none), with the flags that were given (not None)
    over them; a UserError in one line for anything wrong."""
    cfg = LoadConfig()
    where = {}  # attribute -> the name that set it, for the errors below
    if path is not None:
        try:
            data = tomllib.loads(Path(path).read_text())
        except OSError as e:
            raise UserError(f"--config {path}: {e.strerror}") from None
        except tomllib.TOMLDecodeError as e:
            raise UserError(f"--config {path} is not valid TOML: {e}") from None
        sections = sorted({s for s, _ in _KEYS})
        for section, table in data.items():
            if section not in sections:
                raise UserError(f"config {path}: unknown section [{section}] (known: {', '.join(sections)})")
            if not isinstance(table, dict):
                raise UserError(f"config {path}: {section} must be a table ([{section}])")
            for key, value in table.items():
                if (section, key) not in _KEYS:
                    known = ", ".join(sorted(k for s, k in _KEYS if s == section))
                    raise UserError(f"config {path}: unknown setting {section}.{key} (known in [{section}]: {known})")
                attr, kind = _KEYS[(section, key)]
                ok = type(value) is kind or (kind is float and type(value) is int)
                if not ok:
                    raise UserError(f"config {path}: {section}.{key} must be {_WHAT[kind]}, not {value!r}")
                setattr(cfg, attr, value)
                where[attr] = f"config {path}: {section}.{key}"
        if cfg.keys is not None:  # relative to the file, as the agent's keys_file is
            cfg.keys = str((Path(path).parent / cfg.keys).resolve())
    names = {f.name for f in fields(LoadConfig)}
    for attr, value in overrides.items():
        assert attr in names, attr
        if value is not None:
            setattr(cfg, attr, value)
            where[attr] = "--" + attr.replace("_", "-")
    if not cfg.nats or not cfg.db:
        missing = "--nats URL (nats.url)" if not cfg.nats else "--db DSN (db.dsn)"
        raise UserError(f"city load: give {missing}, as a flag or in --config FILE")
    if type(cfg.group) is not int or cfg.group < 1:
        raise UserError(f"{where.get('group', '--group')}: at least 1 batch")
    if not 0 <= cfg.aggregate_every_s <= 86400:
        raise UserError(f"{where.get('aggregate_every_s', '--aggregate-every')}: 0 (off) to 86400 seconds")
    if cfg.metrics is not None:
        from ..common import parse_hostport

        parse_hostport(cfg.metrics, 9109, flag=where.get("metrics", "--metrics"))
    return cfg
