"""`openpole spec check` and `openpole spec build`."""

import sys
from pathlib import Path

from .. import paths


def register(sub):
    p = sub.add_parser("spec", help="check and build the open sensor, board and payload specs")
    ssub = p.add_subparsers(dest="spec_command", metavar="ACTION", required=True)
    c = ssub.add_parser("check", help="validate sensor_specs/ and board_defs/")
    _dirs(c)
    c.set_defaults(func=check)
    b = ssub.add_parser("build", help="generate the firmware constants and docs/specs/")
    _dirs(b)
    b.add_argument("--check", action="store_true", help="write nothing; exit 1 if a generated file is stale")
    b.add_argument("--site", type=Path, default=paths.ROOT / "build" / "site" if paths.CHECKOUT else Path("openpole-specs"),
                   help="where to write the HTML site (default build/site in a checkout, ./openpole-specs otherwise)")
    b.set_defaults(func=run_build)


def _dirs(p):
    p.add_argument("--specs", type=Path, default=paths.SENSOR_SPECS, help="sensor_specs directory")
    p.add_argument("--boards", type=Path, default=paths.BOARD_DEFS, help="board_defs directory")


def _load(args):
    from . import model

    specs = model.load(args.specs, args.boards)
    for w in specs.warnings:
        print(f"warning: {w}", file=sys.stderr)
    for e in specs.errors:
        print(f"error: {e}", file=sys.stderr)
    return specs


def check(args):
    specs = _load(args)
    if specs.errors:
        print(f"{len(specs.errors)} error(s): fix the files named above, then run `openpole spec check` again.", file=sys.stderr)
        return 1
    print(
        f"specs ok: {len(specs.quantities)} quantities, {len(specs.sensors)} sensors, "
        f"{len(specs.mics)} microphones, {len(specs.boards)} boards ({len(specs.warnings)} warning(s))"
    )
    return 0


def run_build(args):
    from . import build, site

    specs = _load(args)
    if specs.errors:
        print("not building from specs with errors: run `openpole spec check`.", file=sys.stderr)
        return 1
    files = build.outputs(specs)
    if args.check:
        old = build.stale(files)
        for rel in old:
            print(f"stale: {rel}", file=sys.stderr)
        if old:
            print("generated files are stale: run `openpole spec build` and commit the result.", file=sys.stderr)
            return 1
        print(f"{len(files)} generated files are fresh")
        return 0
    if paths.CHECKOUT:
        build.write(files)
    elif build.stale(files):
        # The installed package's generated files are its own; specs of your own belong in a clone.
        print("these specs differ from the installed package's: to build firmware and docs from them, work in "
              "a clone of openpole (git clone, then make specs)", file=sys.stderr)
        return 1
    pages = site.write_site(files, args.site)
    bad = site.broken_links(args.site)
    for b in bad:
        print(f"broken link: {b}", file=sys.stderr)
    what = f"wrote {len(files)} files (firmware constants and docs/specs/) and" if paths.CHECKOUT else "wrote"
    print(f"{what} {pages} HTML pages in {args.site}")
    return 1 if bad else 0
