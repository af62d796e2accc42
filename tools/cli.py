"""The `openpole` command: one entry point, subcommands registered by each concern."""

import argparse
import logging
import sys
import traceback

from . import __version__
from .errors import UserError


def _commands():
    # Each concern's cli module has register(subparsers); heavy imports wait inside the handlers.
    from .spec import cli as spec_cli
    from .sim import cli as sim_cli
    from .receiver import cli as receiver_cli
    from .edge_agent import cli as edge_cli
    from . import conformance
    from .noise import analyze as noise_cli
    from .field import cli as field_cli
    from .city import cli as city_cli
    from .ota import cli as ota_cli

    return (field_cli, spec_cli, sim_cli, edge_cli, ota_cli, receiver_cli, city_cli, noise_cli, conformance)


# Optional dependencies -> the extra that brings them (pyproject.toml).
EXTRAS = {"esptool": "field", "littlefs": "field", "mpremote": "field", "serial": "field",
          "smbus2": "pi", "amqtt": "sim", "nats": "city", "psycopg": "city"}


EXIT_CODES = """exit status:
  0  done, and every device or node checked is healthy
  1  a device or node reports a problem (diag, selftest, flash's verdict; diag --json too)
  2  usage: a bad flag, file or setting, or a device that cannot be reached; the message says what to do
  70 an openpole bug: run again with --debug and report the traceback"""


# One example per command, shown under its --help (commands that set their own description say it there).
EXAMPLES = {
    "flash": "openpole flash --port /dev/ttyUSB0 --board esp32-devkitc --node-id pole17-{mac} "
             "--firmware ESP32_GENERIC.bin --config site.toml --site ~/pole17",
    "image build": "openpole image build --board esp32-devkitc --node-id pole17-1 --firmware ESP32_GENERIC.bin "
                   "--config site.toml --out pole17-1.bin",
    "deploy": "openpole deploy --port /dev/ttyUSB0",
    "diag": "openpole diag --port /dev/ttyUSB0        (exit 1 when the node reports a problem; --json too)",
    "monitor": "openpole monitor --port /dev/ttyUSB0 --count 10",
    "log": "openpole log --port /dev/ttyUSB0",
    "selftest": "openpole selftest --port /dev/ttyUSB0",
    "config get": "openpole config get broker.host --port /dev/ttyUSB0",
    "config set": "openpole config set interval_s 30 --port /dev/ttyUSB0",
    "pole init": "openpole pole init --site ~/pole17 --out / --listen 127.0.0.1:1883 --tls 0.0.0.0:8883 "
                 "--tls-name 192.168.4.1",
    "spec check": "openpole spec check",
    "spec build": "openpole spec build --check",
    "sim node": "openpole sim node --broker 127.0.0.1:1883 --node-id sim-1 --serial-pty",
    "sim load": "openpole sim load --broker 127.0.0.1:1883 --nodes 50 --messages 10000",
    "sim demo": "openpole sim demo --nodes 3 --flash",
    "edge run": "openpole edge run --config /etc/openpole/agent.toml",
    "edge install-service": "sudo openpole edge install-service --config /etc/openpole/agent.toml",
    "receiver": "openpole receiver --listen 0.0.0.0:8080 --data /var/lib/openpole-receiver",
    "receiver stats": "openpole receiver stats --data /var/lib/openpole-receiver --json",
    "receiver export": "openpole receiver export --data /var/lib/openpole-receiver --out export/",
    "noise analyze": "openpole noise analyze street.wav --mic inmp441",
    "capture": "openpole capture --broker 127.0.0.1:1883 --node-id pole17-1 --duration 120 --out pole17-1.jsonl",
    "conformance": "openpole conformance --capture pole17-1.jsonl --node-id pole17-1",
    "city init": "openpole city init --nats nats://nats1:4222,nats://nats2:4222,nats://nats3:4222 --db postgresql://openpole@db1/openpole",
    "city load": "openpole city load --nats nats://nats1:4222,nats://nats2:4222 --db postgresql://openpole@db1/openpole --keys poles.toml --metrics 0.0.0.0:9109",
    "city stats": "openpole city stats --db postgresql://openpole@db1/openpole --json",
    "city status": "openpole city status --nats nats://nats1:4222 --db postgresql://openpole@db1/openpole",
    "city latest": "openpole city latest --db postgresql://openpole@db1/openpole --pole pole17",
    "city export": "openpole city export --db postgresql://openpole@db1/openpole --out export/ --since 2026-11-01",
}


def _describe(parser, path=()):
    """Each command's --help: its one-line purpose and an example (EXAMPLES)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            for name, sub in action.choices.items():
                key = " ".join(path + (name,))
                if key in EXAMPLES and "Example" not in (sub.description or ""):
                    sub.description = f"{helps.get(name) or ''}\n\nexample:\n  {EXAMPLES[key]}"
                    sub.formatter_class = argparse.RawDescriptionHelpFormatter
                _describe(sub, path + (name,))


def build_parser():
    parser = argparse.ArgumentParser(prog="openpole", description="openpole: open sensor poles, from node to city.",
                                     epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"openpole {__version__}")
    parser.add_argument("--debug", action="store_true", help="on an unexpected error, show Python's traceback")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in _commands():
        module.register(sub)
    _describe(parser)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        status = args.func(args)
    except UserError as e:
        print(f"openpole: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except ModuleNotFoundError as e:
        extra = EXTRAS.get((e.name or "").split(".")[0])
        if extra is None:
            return _unexpected(e, args)
        print(f"openpole: {e.name} is not installed: pip install 'openpole[{extra}]'", file=sys.stderr)
        return 2
    except OSError as e:  # a file or device the user named: its path and the system's reason
        where = f"{e.filename}: " if e.filename else ""
        print(f"openpole: {where}{e.strerror or e}", file=sys.stderr)
        return 2
    except UnicodeDecodeError as e:
        print(f"openpole: not text (byte 0x{e.object[e.start]:02x} at offset {e.start} is not {e.encoding}): "
              f"is it the right file?", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001  the boundary: one line, the traceback on request
        return _unexpected(e, args)
    return status or 0


def _unexpected(e, args):
    if getattr(args, "debug", False):
        traceback.print_exc()
    else:
        first = str(e).splitlines()[0] if str(e) else ""
        print(f"openpole: unexpected error: {type(e).__name__}{': ' + first if first else ''} "
              f"(run again with --debug for the traceback, and report it)", file=sys.stderr)
    return 70


if __name__ == "__main__":
    sys.exit(main())
