"""`openpole ota`: make and check bundles, push them to a pole's nodes, follow and cancel jobs.

push and cancel hand a command to the running agent through its state directory (ota/inbox/), and
wait for its answer: whoever may write the agent's state (its own user: `sudo -u openpole`) may
update the nodes, no port is opened for it, and the agent stays the only writer of the jobs. status
reads the jobs from the state directory read-only, so it works while the agent is down.
"""

import json
import os
import secrets
import time
from pathlib import Path

from openpole.errors import UserError

ANSWER_WAIT_S = 30.0


def register(sub):
    p = sub.add_parser("ota", help="over-the-air updates: bundles, pushes to a pole's nodes, their progress")
    osub = p.add_subparsers(dest="ota_command", metavar="ACTION", required=True)
    b = osub.add_parser("build", help="make a bundle of the node app (or a firmware image) for a board",
                        description="Example: openpole ota build --board esp32-devkitc --out app-0.3.0.zip --sign release.key")
    b.add_argument("--board", required=True, help="the board file the nodes were flashed for (board_defs/)")
    b.add_argument("--version", help="the app's version in the bundle (default: firmware/node.py's VERSION)")
    b.add_argument("--out", required=True, type=Path, help="the bundle file to write")
    b.add_argument("--sign", metavar="KEYFILE", type=Path, help="sign it with this release key (openpole ota keygen)")
    b.add_argument("--firmware", metavar="APP_BIN", type=Path,
                   help="a firmware bundle of this MicroPython .app-bin (boards with OTA partitions only)")
    b.add_argument("--micropython", nargs=2, metavar=("MIN", "MAX"), default=None,
                   help="the firmware versions the app runs on, major.minor (default 1.24 1.29)")
    b.add_argument("--sim", action="store_true", help="for the simulator's nodes (the Unix port's architecture)")
    b.set_defaults(func=build)
    i = osub.add_parser("inspect", help="check a bundle and show what is in it",
                        description="Example: openpole ota inspect app-0.3.0.zip --key 9df2...e5")
    i.add_argument("bundle", type=Path)
    i.add_argument("--json", action="store_true", help="one JSON object")
    i.add_argument("--key", action="append", default=[], metavar="HEX", help="check its signature against this public key")
    i.set_defaults(func=inspect)
    k = osub.add_parser("keygen", help="make a release key; prints the public key for the agents' [ota] release_keys",
                        description="Example: openpole ota keygen ~/openpole-release.key")
    k.add_argument("keyfile", type=Path, help="where the private key goes (never overwritten)")
    k.set_defaults(func=keygen)
    examples = {"push": "sudo -u openpole openpole ota push --bundle app-0.3.0.zip --nodes 'pole17-*' --canary 1",
                "status": "openpole ota status --config /etc/openpole/agent.toml",
                "cancel": "sudo -u openpole openpole ota cancel --rollout 3"}
    for name, helptext in (("push", "update a pole's nodes with a bundle (a canary first)"),
                           ("status", "the pole's update jobs, node by node"),
                           ("cancel", "cancel jobs not yet on trial")):
        c = osub.add_parser(name, help=helptext, description=f"Example: {examples[name]}")
        c.add_argument("--config", type=Path, help="the agent's config (its [state] dir); default /var/lib/openpole")
        c.add_argument("--state", type=Path, help="the agent's state directory (instead of --config)")
        if name == "push":
            c.add_argument("--bundle", required=True, type=Path)
            c.add_argument("--nodes", required=True, action="append", metavar="PATTERN",
                           help="node ids, shell patterns allowed ('pole17-*'); may be given again")
            c.add_argument("--canary", type=int, default=1, help="nodes that must confirm before the rest start (default 1)")
            c.add_argument("--max-parallel", type=int, help="nodes updating at once (default: the agent's ota.max_parallel)")
        elif name == "cancel":
            g = c.add_mutually_exclusive_group(required=True)
            g.add_argument("--job", type=int, action="append", help="a job id (openpole ota status)")
            g.add_argument("--rollout", type=int, help="every job of one push")
        else:
            c.add_argument("--json", action="store_true", help="one JSON object")
        c.set_defaults(func={"push": push, "status": status, "cancel": cancel}[name])


def build(args):
    from . import bundle

    mp = tuple(args.micropython) if args.micropython else bundle.DEFAULT_MICROPYTHON
    manifest, data = bundle.build(args.board, args.out, args.version, args.sign, args.firmware, args.sim, mp)
    b = bundle.read(data)
    d = bundle.describe(b)
    print(f"{args.out}: {d['kind']} {d['version']} for {d['board']}, {len(d['files'])} files, {d['total_bytes']} bytes to "
          f"send, MicroPython {d['micropython'][0]} to {d['micropython'][1]}, {'signed' if d['signed'] else 'unsigned'}")
    return 0


def inspect(args):
    from . import bundle

    try:
        data = args.bundle.read_bytes()
    except OSError as e:
        raise UserError(f"{args.bundle}: {e.strerror}") from None
    d = bundle.describe(bundle.read(data, args.key, require_signed=bool(args.key)))
    if args.json:
        print(json.dumps(d))
        return 0
    sig = ("signed by " + d["signed_by"]) if d["signed_by"] else ("signed (not checked: --key HEX)" if d["signed"] else "unsigned")
    print(f"{args.bundle}: {d['kind']} {d['version']} for {d['board']} (mpy {d['mpy']}), MicroPython "
          f"{d['micropython'][0]} to {d['micropython'][1]}, {d['total_bytes']} bytes, {sig}")
    print(f"sha256 {d['sha256']}, manifest {d['manifest_sha256']}")
    for f in d["files"]:
        print(f"  {f['size']:>7}  {f['sha256'][:16]}  {f['path']}")
    if d["firmware"]:
        print(f"  {d['firmware']['size']:>7}  {d['firmware']['sha256'][:16]}  firmware.app-bin")
    return 0


def keygen(args):
    from . import bundle

    pub = bundle.keygen(args.keyfile)
    print(f"release key written to {args.keyfile} (keep it off the poles). Its public key, for each agent's config:")
    print(f'[ota]\nrelease_keys = ["{pub}"]')
    return 0


def state_dir(args):
    if args.state:
        return args.state
    if args.config:
        from openpole.edge_agent import config

        return config.load(args.config).state_dir
    return Path("/var/lib/openpole")


def ask_agent(state, cmd, bundle_bytes=None, wait_s=ANSWER_WAIT_S):
    """Leave a command in the agent's inbox and wait for its answer (a dict)."""
    from openpole.edge_agent.ota import inbox_dir

    d = inbox_dir(state)
    if not d.is_dir():
        raise UserError(f"no agent state in {state} (ota/inbox): is `openpole edge run` running with that state dir?")
    name = f"{time.time_ns()}-{secrets.token_hex(4)}"
    try:
        if bundle_bytes is not None:
            tmp = d / f".{name}.bundle"
            tmp.write_bytes(bundle_bytes)
            os.replace(tmp, d / f"{name}.bundle")
        tmp = d / f".{name}.cmd"
        tmp.write_text(json.dumps(cmd))
        os.replace(tmp, d / f"{name}.json")  # last: the agent takes it once it is whole
    except OSError as e:
        raise UserError(f"cannot write the agent's inbox {d}: {e.strerror} (run as the agent's user: sudo -u openpole ...)") from None
    answer = d / f"{name}.answer.json"
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if answer.exists():
            out = json.loads(answer.read_text())
            answer.unlink()
            if not out.pop("ok"):
                raise UserError(out["error"])
            return out
        time.sleep(0.1)
    for p in (d / f"{name}.json", d / f"{name}.bundle"):
        try:
            p.unlink()
        except OSError:
            pass
    raise UserError(f"the agent did not take the command within {wait_s:.0f} s: is `openpole edge run` running on {state}?")


def push(args):
    try:
        data = args.bundle.read_bytes()
    except OSError as e:
        raise UserError(f"--bundle {args.bundle}: {e.strerror}") from None
    from . import bundle

    b = bundle.read(data)  # a damaged bundle fails here, before the agent sees it
    out = ask_agent(state_dir(args), {"cmd": "push", "nodes": args.nodes, "canary": args.canary,
                                      "max_parallel": args.max_parallel}, data)
    m = b.manifest
    print(f"rollout {out['rollout']}: {m['kind']} {m['version']} to {len(out['jobs'])} nodes, canary {args.canary}")
    for node, jid in sorted(out["jobs"].items()):
        print(f"  job {jid:>5}  {node}")
    for node, why in sorted(out["skipped"].items()):
        print(f"  skipped     {node}: {why}")
    return 0


def cancel(args):
    out = ask_agent(state_dir(args), {"cmd": "cancel", "jobs": args.job, "rollout": args.rollout})
    if not out["cancelled"]:
        raise UserError("no such job on this pole (openpole ota status lists them)")
    for jid, what in sorted(out["cancelled"].items(), key=lambda kv: int(kv[0])):
        print(f"job {jid}: {what}")
    return 0


def status(args):
    from openpole.edge_agent import ota

    try:
        st = ota.read_only(state_dir(args))
    except ota.OtaError as e:
        raise UserError(str(e)) from None
    if args.json:
        print(json.dumps(st))
        return 0
    for line in human(st):
        print(line)
    return 0


def human(st):
    """Lines for people: each rollout, then its jobs node by node."""
    if not st["jobs"]:
        return ["no update jobs on this pole (openpole ota push starts one)"]
    out = []
    for r in st["rollouts"]:
        out.append(f"rollout {r['id']}: {r['kind']} {r['version']}, {r['state']}" + (f" ({r['reason']})" if r["reason"] else ""))
        for j in sorted((j for j in st["jobs"] if j["rollout"] == r["id"]), key=lambda j: j["id"]):
            pct = 100 * j["done"] // j["total"] if j["total"] else 0
            out.append(f"  job {j['id']:>5}  {j['node']:<20} {j['state']:<12} {pct:>3}%"
                       + (" canary" if j["canary"] else "") + (f"  {j['reason']}" if j["reason"] else ""))
    return out
