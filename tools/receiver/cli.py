"""`openpole receiver --listen HOST:PORT --data DIR` and `openpole receiver stats --data DIR [--json]`."""

import json
import logging
import signal
from pathlib import Path

from ..errors import UserError
from ..common import parse_hostport


def register(sub):
    p = sub.add_parser("receiver", help="the reference city receiver (stores upstream batches)")
    p.add_argument("--listen", default="127.0.0.1:8080", help="HOST:PORT to listen on (default 127.0.0.1:8080)")
    p.add_argument("--data", type=Path, default=Path("receiver-data"), help="directory for the receiver's database")
    p.add_argument("--keys", type=Path, help="TOML table of pole id = key (hex): take only batches those poles signed")
    p.set_defaults(func=serve)
    rsub = p.add_subparsers(dest="receiver_command", metavar="ACTION")
    s = rsub.add_parser("stats", help="counts of stored records")
    s.add_argument("--data", type=Path, required=True)
    s.add_argument("--json", action="store_true", help="one JSON object")
    s.set_defaults(func=stats)
    e = rsub.add_parser("export", help="CSV in the Array of Things layout (data.csv.gz, nodes, sensors, provenance)")
    e.add_argument("--data", type=Path, required=True)
    e.add_argument("--out", type=Path, required=True, help="directory for the CSV files")
    e.set_defaults(func=export_cmd)


def serve(args):
    from .server import Receiver

    host, port = parse_hostport(args.listen, 8080, flag="--listen")
    keys = pole_keys(args.keys) if args.keys else {}
    try:
        r = Receiver(host, port, args.data, keys)
    except OSError as e:
        raise UserError(f"cannot listen on {host}:{port}: {e.strerror}; choose another --listen port") from None
    logging.getLogger("openpole").info("receiver listening on %s, data in %s", r.url, args.data)
    signal.signal(signal.SIGTERM, lambda *a: (_ for _ in ()).throw(KeyboardInterrupt))
    try:
        r.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        r.httpd.server_close()
        r.store.close()
    return 0


def stats(args):
    from .store import ReceiverStore

    if not (args.data / "receiver.sqlite").exists():
        raise UserError(f"no receiver data in {args.data}: pass the --data directory the receiver used")
    st = ReceiverStore(args.data)
    s = st.stats()
    st.close()
    if args.json:
        print(json.dumps(s))
    else:
        print(f"records {s['records']}, unique {s['unique']}, duplicates {s['duplicates']}, nodes {s['nodes']}")
    return 0


KEY_MIN_BYTES = 16  # 128 bits at the least; RFC 2104 advises the hash's length, 32 bytes for SHA-256


def pole_keys(path):
    """A TOML table of pole id = key (hex, at least 16 bytes) -> {pole: key bytes}; a one-line
    UserError naming the file and the pole otherwise (never the key). The HTTP receiver's --keys and
    the city loaders' take the same file."""
    import tomllib

    try:
        data = tomllib.loads(path.read_text())
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError):
        raise UserError(f"{path}: expected lines like  pole-7 = \"00112233...\"  (the key in hex)") from None
    if not data:  # taking every batch unsigned is not what --keys asks for
        raise UserError(f"{path}: no pole keys in it; expected lines like  pole-7 = \"00112233...\"  (the key in hex)")
    keys = {}
    for pole, key in data.items():
        name = f"pole {pole[:64]!r}"
        try:
            key = bytes.fromhex(key) if type(key) is str else None
        except ValueError:
            key = None
        if key is None:
            raise UserError(f"{path}: the key of {name} is not hex; write it as  {pole[:64]} = \"00112233...\"")
        if len(key) < KEY_MIN_BYTES:
            size = f"{len(key)} bytes" if key else "empty"
            raise UserError(f"{path}: the key of {name} is {size}; it needs at least {KEY_MIN_BYTES} bytes "
                            f"({2 * KEY_MIN_BYTES} hex digits): make one with  openssl rand -hex 32")
        keys[pole] = key
    return keys


def export_cmd(args):
    from .export import export

    n = export(args.data, args.out)
    print(f"wrote {n} records to {args.out}/data.csv.gz, with nodes.csv, sensors.csv and provenance.csv")
    return 0
