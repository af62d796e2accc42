"""Field tools: flash, image build, deploy, and the node's serial console (diag, monitor, log,
config, selftest), each on one port or several (`--port` repeated, or a glob), and `pole init`."""

import json
import os
import re
import threading
import time
import tomllib
from pathlib import Path

from ..errors import UserError

SITE_HELP = "the site directory: inventory.csv and secrets/ (default: $OPENPOLE_SITE or .)"


def _port_arg(p):
    p.add_argument("--port", action="append", metavar="PORT",
                   help="the node's serial port; repeat it, or use a glob (/dev/ttyUSB*), for several nodes "
                        "(default: the one USB serial device present)")


def register(sub):
    p = sub.add_parser("ports", help="list the USB serial devices a node could be on, with their USB ids",
                       description="The USB serial devices present (a node's CP2102/CH340/FTDI bridge, an "
                                   "ESP32-S3's own USB). Example: openpole ports")
    p.set_defaults(func=run_ports)

    p = sub.add_parser("flash", help="turn a blank ESP32 into a registered node: firmware, app, config, check")
    _port_arg(p)
    p.add_argument("--board", required=True, help="board id from board_defs/ (e.g. esp32-devkitc)")
    p.add_argument("--node-id", required=True,
                   help="the node's id; with several ports use {n} (1, 2, ...) or {mac} (last 6 hex digits of the MAC)")
    p.add_argument("--firmware", required=True, type=Path, help="the board's MicroPython .bin (micropython.org/download)")
    p.add_argument("--config", type=Path, help="the site's node settings (TOML: wifi, broker, sensors, interval_s)")
    p.add_argument("--site", type=Path, help=SITE_HELP)
    p.add_argument("--baud", type=int, default=460800, help="flashing baud rate (default 460800; 115200 for poor cables)")
    p.add_argument("--new-secrets", action="store_true", help="give a reflashed node new credentials (run pole init after)")
    p.add_argument("--sim", action="store_true",
                   help="the port is a virtual board (`openpole sim board`): the app for the Unix port, simulated hardware")
    p.set_defaults(func=run_flash)

    p = sub.add_parser("image", help="per-node flash images without a device (flashing stations, web flashers)")
    isub = p.add_subparsers(dest="image_command", metavar="ACTION", required=True)
    b = isub.add_parser("build", help="build a node's merged image (firmware + filesystem), verified by mounting it")
    b.add_argument("--board", required=True, help="board id from board_defs/")
    b.add_argument("--node-id", required=True, help="the node's id")
    b.add_argument("--firmware", type=Path, help="the board's MicroPython .bin; without it, the filesystem image alone")
    b.add_argument("--config", type=Path, help="the site's node settings (TOML)")
    b.add_argument("--site", type=Path, help=SITE_HELP)
    b.add_argument("--out", type=Path, required=True, help="the image file to write")
    b.add_argument("--sim", action="store_true",
                   help="for the simulator (x64 app, simulated hardware): try it with `openpole sim node --image`")
    b.set_defaults(func=run_image_build)

    p = sub.add_parser("deploy", help="update a node's app over the raw REPL (unchanged files are skipped), then restart it")
    _port_arg(p)
    p.add_argument("--board", help="the node's board (default: as the node reports it)")
    p.add_argument("--sim", action="store_true", help="the node is `openpole sim node --fs-app` (x64, simulated hardware)")
    p.add_argument("--no-restart", action="store_true", help="leave the node at the REPL after the update")
    p.add_argument("--site", type=Path, help=SITE_HELP + "; a node whose config says broker.tls gets its CA "
                                                         "certificate (ca.der) from here")
    p.set_defaults(func=run_deploy)

    p = sub.add_parser("diag", help="a node's diagnostics, what is wrong first (it keeps sampling)")
    _port_arg(p)
    p.add_argument("--json", action="store_true", help="the node's diag as JSON")
    p.set_defaults(func=run_diag)

    p = sub.add_parser("monitor", help="live readings from a node's console")
    _port_arg(p)
    p.add_argument("--duration", type=float, help="stop after S seconds (default: Ctrl-C)")
    p.add_argument("--count", type=int, help="stop after N readings")
    p.set_defaults(func=run_monitor)

    p = sub.add_parser("log", help="a node's recent log lines and its last crash")
    _port_arg(p)
    p.set_defaults(func=lambda a: _console_command(a, "log"))

    p = sub.add_parser("selftest", help="check each sensor of a node is present and plausible")
    _port_arg(p)
    p.set_defaults(func=run_selftest)

    p = sub.add_parser("config", help="read or change a node's settings over its console")
    csub = p.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    g = csub.add_parser("get", help="print a setting (secrets show as ***)")
    g.add_argument("key", help="a dotted key, e.g. interval_s or broker.host")
    _port_arg(g)
    g.set_defaults(func=lambda a: _console_command(a, f"config get {a.key}"))
    s = csub.add_parser("set", help="change a setting; it takes effect at the next reboot")
    s.add_argument("key")
    s.add_argument("value", help="JSON (60, true, \"text\") or plain text")
    _port_arg(s)
    s.set_defaults(func=lambda a: _console_command(a, f"config set {a.key} {a.value}", ok_prefix="ok:"))

    p = sub.add_parser("pole", help="the pole's broker and agent configuration")
    psub = p.add_subparsers(dest="pole_command", metavar="ACTION", required=True)
    i = psub.add_parser("init", help="Mosquitto users, ACL and config, and the agent's node keys, from the inventory")
    i.add_argument("--site", type=Path, help=SITE_HELP)
    i.add_argument("--out", type=Path, default=Path("pole-config"),
                   help="where to write etc/mosquitto and etc/openpole (default ./pole-config; / installs them)")
    i.add_argument("--listen", default="0.0.0.0:1883", help="the broker's HOST:PORT (default 0.0.0.0:1883)")
    i.add_argument("--pole-id", default="pole", help="this pole's id, for the agent config")
    i.add_argument("--persistence-dir", help="Mosquitto's persistence directory (default /var/lib/mosquitto; "
                                             "left to etc/mosquitto/mosquitto.conf when it sets one, as Debian's does)",
                   default="/var/lib/mosquitto")
    i.add_argument("--tls", metavar="HOST:PORT", help="also a TLS listener for the nodes (e.g. 0.0.0.0:8883), its "
                                                     "certificate signed by the site's CA (made on first use)")
    i.add_argument("--tls-name", action="append", default=[], metavar="NAME",
                   help="a host name or address the nodes use for the broker (repeat; needed with --tls)")
    i.set_defaults(func=run_pole_init)


def _site(args):
    from .site import Site

    return Site(args.site or os.environ.get("OPENPOLE_SITE") or ".")


def run_ports(args):
    from . import ports

    found = ports.candidates()
    for device, ids, desc in found:
        print(f"{device}  {ids}  {desc}")
    if not found:
        print("no USB serial device: plug the node in (a charge-only cable shows nothing)")
    return 0


def _ports(args):
    from . import ports

    return ports.expand(args.port)


def _base_config(path):
    if path is None:
        return None
    try:
        return tomllib.loads(path.read_text())
    except OSError as e:
        raise UserError(f"--config {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"--config {path} is not valid TOML: {e}") from None


def run_flash(args):
    from . import multi
    from .flash import flash

    from . import image

    base, site = _base_config(args.config), _site(args)
    board, _ = image.board_info(args.board)
    unknown = set(re.findall(r"{[^}]*}", args.node_id)) - {"{n}", "{mac}"}
    if unknown:
        raise UserError(f"--node-id {args.node_id}: {', '.join(sorted(unknown))} is not a placeholder: use {{n}} "
                        f"(1, 2, ...) or {{mac}} (the last 6 hex digits of the MAC)")
    # The id, the board and the site's settings are checked before any port is opened or secret made.
    image.node_config(args.node_id.replace("{n}", "1").replace("{mac}", "a1b2c3"), args.board, base)
    image.check_firmware(args.firmware, board["chip"])
    port_list = _ports(args)
    if len(port_list) > 1 and "{" not in args.node_id:
        raise UserError("several ports need distinct ids: use {n} or {mac} in --node-id, e.g. pole17-{n}")

    def job(port, progress):
        node_id = args.node_id.replace("{n}", str(port_list.index(port) + 1))
        r = flash(port, args.board, node_id, args.firmware, site, base, baud=args.baud, progress=progress,
                  new_secrets=args.new_secrets, sim=args.sim)
        return r.ok, f"{r.node_id} ({r.chip}, MAC {r.mac}): {r.verdict}"

    return multi.run(job, port_list, "flash")


def run_image_build(args):
    from . import image

    t0 = time.monotonic()
    board, chip = image.board_info(args.board)
    firmware = image.check_firmware(args.firmware, board["chip"]) if args.firmware else None
    site = _site(args)
    files, build = image.app_for(chip, sim=args.sim)
    cfg = image.node_config(args.node_id, args.board, _base_config(args.config), site.node_secrets(args.node_id))
    files = image.with_site_files(files, cfg, site)
    fs = image.build_fs(board, files, cfg)
    n = image.verify_fs(fs, files, cfg)
    out = image.merge(board, board["chip"], firmware, fs) if firmware else fs
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(out)
    site.record(node_id=args.node_id, board=args.board, chip=chip["esptool_name"],
                firmware=args.firmware.name if args.firmware else "", app=build, how="image")
    where = (f"flash it from 0x0 (esptool write-flash 0x0 {args.out})" if firmware else
             f"flash it at 0x{board['fs_offset']:x} (esptool write-flash 0x{board['fs_offset']:x} {args.out})")
    print(f"{args.out}: {len(out)} bytes for node {args.node_id} on {args.board} ({n} files, app {build}, "
          f"mounted and checked) in {time.monotonic() - t0:.2f} s; {where}")
    return 0


def _deploy_target(args, port):
    """(files, label) for the node on `port`."""
    from . import image
    from .console import NodeConsole

    if args.sim:
        return image.app_for(None, sim=True)
    board_id, config = args.board, {}
    if board_id is None:
        try:
            with NodeConsole(port, timeout=5) as c:
                config = c.attach().diag()["config"]
        except UserError as e:
            raise UserError(f"{e} (or give --board: the node cannot say which board it is)") from None
        board_id = config["board"]
    board, chip = image.board_info(board_id)
    files, label = image.app_for(chip)
    # A node switched to TLS with `config set broker.tls true` needs the site's CA before it restarts.
    if (config.get("broker") or {}).get("tls"):
        files = image.with_site_files(files, config, _site(args))
    return files, label


def run_deploy(args):
    from . import multi
    from .deploy import deploy

    port_list = _ports(args)

    def job(port, progress):
        files, build = _deploy_target(args, port)
        r = deploy(port, files, progress=progress, restart=not args.no_restart)
        rate = r.bytes_sent / r.seconds if r.seconds else 0
        text = (f"{port}: app {build}: {len(r.sent)} file(s) sent ({r.bytes_sent} bytes, {rate:.0f} B/s), "
                f"{r.skipped} unchanged, {len(r.removed)} removed")
        if args.no_restart:
            return True, text + "; left at the REPL"
        verdict, ok = _after_restart(port)
        return ok, f"{text}; restarted: {verdict}"

    return multi.run(job, port_list, "deploy")


def _after_restart(port):
    from .. import diagnosis
    from .console import wait_for_diag

    try:
        d = wait_for_diag(port, timeout=30)
    except UserError as e:
        return f"the app did not come back: {e}", False
    return f"node {d.get('node')} {diagnosis.verdict(d)}", True


def run_diag(args):
    from rich.console import Console

    from . import multi
    from .. import diagnosis
    from .console import NodeConsole

    port_list = _ports(args)
    console = Console()
    got = {}

    def job(port, progress):
        with NodeConsole(port) as c:
            d = c.attach().diag()
        got[port] = d
        if len(port_list) == 1:
            if args.json:  # the exit status still says healthy (0) or not (1), for scripts
                return not diagnosis.problems(d), json.dumps(d, indent=1)
            diagnosis.render(d, console)
            return not diagnosis.problems(d), ""
        return not diagnosis.problems(d), f"node {d.get('node')}: {diagnosis.verdict(d)}"

    if args.json and len(port_list) > 1:
        status = multi.run(job, port_list, "diag", console=Console(stderr=True))
        print(json.dumps(got, indent=1))
        return status
    return multi.run(job, port_list, "diag", console=console)


def run_monitor(args):
    from rich.console import Console

    from .. import diagnosis
    from .console import NodeConsole

    port_list = _ports(args)
    console = Console()
    errors = []
    stop = threading.Event()

    def one(port):
        prefix = f"{port} " if len(port_list) > 1 else ""
        try:
            with NodeConsole(port) as c:
                c.attach()
                for name, values in c.monitor(duration=args.duration, count=args.count, stop=stop):
                    console.print(f"{prefix}{time.strftime('%H:%M:%S')} [bold]{name}[/] {diagnosis.values_text(values)}",
                                  highlight=False)
        except UserError as e:
            errors.append(str(e))

    threads = [threading.Thread(target=one, args=(p,), daemon=True) for p in port_list]
    try:  # a Ctrl-C as soon as the first line shows finds the guard in place
        for t in threads:
            t.start()
        for t in threads:
            while t.is_alive():
                t.join(0.2)
    except KeyboardInterrupt:  # Ctrl-C: switch every node's monitor off before leaving
        stop.set()
        for t in threads:
            t.join(6)
    if errors:
        raise UserError(errors[0] if len(errors) == 1 else "; ".join(errors))
    return 0


def _console_command(args, line, ok_prefix=None):
    from . import multi
    from .console import NodeConsole

    port_list = _ports(args)

    def job(port, progress):
        with NodeConsole(port) as c:
            out = c.attach().command(line).strip()
        ok = not out.startswith("error:") and (ok_prefix is None or ok_prefix in out)
        if not ok and len(port_list) == 1:
            raise UserError(f"{port}: {out.removeprefix('error: ')}")
        return ok, out

    return multi.run(job, port_list, line.split()[0])


def run_selftest(args):
    from . import multi
    from .console import NodeConsole

    port_list = _ports(args)

    def job(port, progress):
        with NodeConsole(port) as c:
            out = c.attach().command("selftest", timeout=30).strip()
        ok = "selftest: PASS" in out
        return ok, out if len(port_list) == 1 else out.splitlines()[-1] + "; " + "; ".join(
            ln for ln in out.splitlines()[:-1] if not ln.endswith(": ok"))

    return multi.run(job, port_list, "selftest")


def run_pole_init(args):
    from .pole import init

    site = _site(args)
    files = init(site, args.out, listen=args.listen, pole_id=args.pole_id, persistence_dir=args.persistence_dir,
                 tls_listen=args.tls, tls_names=args.tls_name)
    n = len(site.nodes())
    print(f"pole config for {n} node(s) written under {args.out}:")
    for what, path in files.items():
        print(f"  {path}")
    print(f"the pole's page (page.listen in agent.toml turns it on): its password is page_password in "
          f"{site.agent_secrets_path()}")
    print("on the Pi: run this with --out / (as root; it makes the agent's user), or copy etc/ over /etc and "
          "`sudo chown mosquitto: /etc/mosquitto/openpole.passwd`; then `sudo systemctl restart mosquitto` "
          "and `sudo openpole edge install-service --config /etc/openpole/agent.toml`")
    return 0
