# Node configuration: JSON on the flash (config.json), validated, with a last good copy
# (config.last.json) and safe defaults to fall back on; written atomically (temp file + rename).
# Secrets (wifi.password, broker.password, key) are never printed: lib/redact.py redacts them.
import json
import os

PATH = "config.json"
LAST_GOOD = "config.last.json"
DEFAULTS = {
    "board": "esp32-devkitc",
    "interval_s": 60,
    "diag_interval_s": 300,
    "sensors": {"bme280": {}},
    "broker": {"host": "192.168.4.1", "port": 1883, "user": None, "password": None},
    "wifi": {"ssid": "", "password": ""},
    "key": None,
    "uplink": "mqtt",  # or "serial": messages as OPMSG lines on the console, for a node on a Pi's USB
    "queue_ram_bytes": 1024,  # messages kept in RAM (half a dozen); beyond, they spill to flash (half the free LittleFS)
    "ack": "pole",  # a message leaves the node when the pole's agent has it on disk; "broker": on PUBACK
    "ack_timeout_s": 30,  # no ack for this long: the unacknowledged messages are sent again
}
SENSOR_KEYS = ("address", "interval_s", "duty_cycle", "mic")
_ID_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789_-"


class ConfigError(ValueError):
    pass


def _number(v, lo, hi, what):
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not lo <= v <= hi:
        raise ConfigError("%s: a number from %s to %s" % (what, lo, hi))


def validate(cfg, boards=None):
    """Fill defaults and check types; raise ConfigError naming the field. boards: the board ids
    (a host tool passes them from board_defs/; the node has them generated in lib/boards.py)."""
    if not isinstance(cfg, dict):
        raise ConfigError("config: must be a JSON object")
    out = {}
    for k, v in DEFAULTS.items():
        out[k] = cfg.get(k, v)
    for k, v in cfg.items():
        out.setdefault(k, v)
    node_id = out.get("node_id")
    if not isinstance(node_id, str) or not 1 <= len(node_id) <= 32 or any(c not in _ID_CHARS for c in node_id):
        raise ConfigError("node_id: 1-32 characters of a-z, 0-9, _ and -")
    _number(out["interval_s"], 0.1, 86400, "interval_s")
    _number(out["diag_interval_s"], 1, 86400, "diag_interval_s")
    _number(out["queue_ram_bytes"], 512, 65536, "queue_ram_bytes")
    if not isinstance(out["sensors"], dict):
        raise ConfigError("sensors: a table of sensor name -> settings")
    for name, s in out["sensors"].items():
        if not isinstance(s, dict):
            raise ConfigError("sensors.%s: a table of settings" % name)
        for k in s:
            if k not in SENSOR_KEYS:
                raise ConfigError("sensors.%s.%s: unknown setting (known: %s)" % (name, k, ", ".join(SENSOR_KEYS)))
        if "interval_s" in s:
            _number(s["interval_s"], 0.1, 86400, "sensors.%s.interval_s" % name)
    if out["uplink"] not in ("mqtt", "serial"):
        raise ConfigError("uplink: mqtt or serial")
    _number(out["ack_timeout_s"], 1, 3600, "ack_timeout_s")
    if out["ack"] not in ("pole", "broker"):
        raise ConfigError("ack: pole (the agent's ack frees a message) or broker (its PUBACK does)")
    if boards is None:
        import sys

        from boards import BOARDS as boards

        del sys.modules["boards"]  # wanted for this check only: its heap goes back
    if out["board"] not in boards:
        raise ConfigError("board: unknown %r (known: %s)" % (out["board"], ", ".join(boards)))
    b = out["broker"]
    port = b.get("port", 1883) if isinstance(b, dict) else None
    if not isinstance(b, dict) or not isinstance(b.get("host"), str) or not b["host"] or not isinstance(port, int) \
            or isinstance(port, bool) or not 1 <= port <= 65535:
        raise ConfigError("broker: a table with host (text) and port (1-65535)")
    for k in ("user", "password"):
        if b.get(k) is not None and not isinstance(b[k], str):
            raise ConfigError("broker.%s: text" % k)
    if "timeout_s" in b:
        _number(b["timeout_s"], 1, 60, "broker.timeout_s")
    if "keepalive_s" in b:  # the broker sends the node's last will "offline" 1.5 keepalives after it goes quiet
        _number(b["keepalive_s"], 2, 600, "broker.keepalive_s")
    if not isinstance(b.get("tls", False), bool):
        raise ConfigError("broker.tls: true (TLS, checked against ca.der) or false")
    w = out["wifi"]
    if not isinstance(w, dict) or not all(isinstance(w.get(k, ""), str) for k in ("ssid", "password")):
        raise ConfigError("wifi: a table with ssid and password (text)")
    key = out.get("key")
    if key is not None:
        try:
            if len(bytes.fromhex(key)) < 16:
                raise ValueError
        except (TypeError, ValueError):
            raise ConfigError("key: the node key in hex, at least 16 bytes")
    return out


def _read(path):
    with open(path) as f:
        return validate(json.load(f))


def load(log=print, unique_id=b"\x00"):
    """The config to run with: config.json, else the last good copy, else safe defaults.
    Says which it used when it is not config.json."""
    try:
        cfg = _read(PATH)
        try:
            os.stat(LAST_GOOD)
        except OSError:
            _write(LAST_GOOD, cfg)
        return cfg
    except (OSError, ValueError) as e:
        problem = e
    try:
        cfg = _read(LAST_GOOD)
        log("config: config.json is unusable (%s); running on the last good copy" % problem)
        return cfg
    except (OSError, ValueError):
        pass
    cfg = validate({"node_id": "node-" + "".join("%02x" % b for b in unique_id[-3:])})
    log("config: config.json is unusable (%s) and there is no good copy; running on safe defaults" % problem)
    return cfg


def _write(path, cfg):
    with open(path + ".tmp", "w") as f:
        json.dump(cfg, f)
    os.rename(path + ".tmp", path)  # atomic on LittleFS and POSIX


def save(cfg):
    """Validate and write atomically; the last good copy follows."""
    cfg = validate(cfg)
    _write(PATH, cfg)
    _write(LAST_GOOD, cfg)
    return cfg


def get(cfg, key):
    """Dotted key ('broker.host'); secrets come back redacted."""
    from redact import SECRETS, redacted

    v = cfg
    parts = key.split(".")
    for part in parts:
        if not isinstance(v, dict) or part not in v:
            raise ConfigError("%s: no such setting" % key)
        v = v[part]
    if parts[-1] in SECRETS:
        return "***" if v else None
    return redacted(v)


def set(cfg, key, text):
    """Set a dotted key from text (JSON, or a plain string); returns the validated new config."""
    try:
        value = json.loads(text)
    except ValueError:
        value = text
    new = json.loads(json.dumps(cfg))  # a deep copy
    parts = key.split(".")
    d = new
    for part in parts[:-1]:
        if not isinstance(d.get(part), dict):
            d[part] = {}
        d = d[part]
    d[parts[-1]] = value
    return save(new)
