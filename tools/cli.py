"""The `openpole` command: one entry point, subcommands registered by each concern."""

import argparse
import logging
import sys

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

    return (field_cli, spec_cli, sim_cli, edge_cli, receiver_cli, noise_cli, conformance)


# Optional dependencies -> the extra that brings them (pyproject.toml).
EXTRAS = {"esptool": "field", "littlefs": "field", "mpremote": "field", "serial": "field",
          "smbus2": "pi", "amqtt": "sim"}


def build_parser():
    parser = argparse.ArgumentParser(prog="openpole", description="openpole: open sensor poles, from node to city.")
    parser.add_argument("--version", action="version", version=f"openpole {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in _commands():
        module.register(sub)
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
            raise
        print(f"openpole: {e.name} is not installed: pip install 'openpole[{extra}]'", file=sys.stderr)
        return 2
    return status or 0


if __name__ == "__main__":
    sys.exit(main())
