"""`openpole sim node` (one node on the MicroPython Unix port) and `openpole sim demo` (a whole pole)."""

import os
import signal
import subprocess
import sys
import tempfile
import time
import tty
from pathlib import Path

from ..common import parse_hostport
from ..errors import UserError
from ..field import appbuild
from . import node as simnode


def register(sub):
    p = sub.add_parser("sim", help="simulated nodes and a simulated pole")
    ssub = p.add_subparsers(dest="sim_command", metavar="ACTION", required=True)

    n = ssub.add_parser("node", help="run the real firmware under MicroPython with simulated sensors")
    n.add_argument("--broker", default="127.0.0.1:1883", help="HOST:PORT of the MQTT broker")
    n.add_argument("--node-id", default="sim-1", help="node id (a-z, 0-9, _ and -)")
    n.add_argument("--interval", type=float, default=1.0, help="seconds between sampling cycles")
    n.add_argument("--cycles", type=int, help="exit 0 after N sampling cycles and print the peak heap")
    n.add_argument("--heap", help="MicroPython heap size, e.g. 48k (default 128k; 192k with --image, whose block "
                                  "device is Python code in the node's heap where a board has a C flash driver)")
    n.add_argument("--state", type=Path, help="the node's filesystem directory (default: a temporary one)")
    n.add_argument("--sensors", default=",".join(simnode.ALL_SENSORS), help="sensors to fit (default: all)")
    n.add_argument("--ack", choices=("pole", "broker"), default="pole",
                   help="what frees a sent message: the pole agent's ack (default; needs `openpole edge run`) or the "
                        "broker's PUBACK (a broker with no agent)")
    n.add_argument("--serial-pty", action="store_true", help="put the node's console on a new pty; print its path first")
    n.add_argument("--fs-app", action="store_true",
                   help="the app is already in the node's filesystem (--state), put there with `openpole deploy`; "
                        "without one the node boots to the MicroPython REPL")
    n.add_argument("--from-build", action="store_true",
                   help="run the app from its build directory instead of the node's filesystem (by default it is "
                        "installed there, as a flashed board has it, so the heap the node reports is a board's)")
    n.add_argument("--image", type=Path,
                   help="boot this image from `openpole image build --sim` instead (its config says the broker)")
    n.add_argument("--micropython", type=Path, metavar="PATH",
                   help="run on this MicroPython Unix port build (e.g. a 32-bit one); the app is compiled for its architecture")
    n.add_argument("--firmware-lib", type=Path, metavar="DIR",
                   help="modules that stand for a firmware's frozen ones (e.g. another umqtt), on the path after the app's")
    n.set_defaults(func=run_node)

    b = ssub.add_parser("board", help="a virtual ESP32 on an RFC 2217 serial port, for `openpole flash --sim`",
                        description="A virtual ESP32 for the flashing flow: esptool's ROM protocol, a 4 MB flash in "
                                    "a file, and the node it boots on the same serial port. Prints its endpoint "
                                    "(rfc2217://HOST:PORT) first. Example: openpole sim board --flash board1.bin")
    b.add_argument("--flash", type=Path, required=True, help="the board's flash, kept in this file (made erased if new)")
    b.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT of the RFC 2217 endpoint (default a free loopback port)")
    b.add_argument("--chip", choices=("esp32", "esp32s3"), default="esp32", help="the chip it reports (default esp32)")
    b.add_argument("--flash-mb", type=int, default=4, help="the flash size it reports (default 4)")
    b.add_argument("--no-auto-reset", action="store_true",
                   help="no DTR/RTS reset circuit: esptool cannot put it in download mode (the BOOT button case)")
    b.add_argument("--fail-write-at", type=lambda t: int(t, 0), metavar="ADDRESS",
                   help="a flash write covering this address fails (a failing module)")
    b.add_argument("--mute", action="store_true", help="the node boots but its console never answers")
    b.add_argument("--heap", default="192k", help="MicroPython heap of the node it boots (default 192k)")
    b.add_argument("--micropython", type=Path, metavar="PATH", help="run the node on this MicroPython Unix port build")
    b.set_defaults(func=run_board)

    from .load import register as register_load

    register_load(ssub)

    d = ssub.add_parser("demo", help="a simulated pole: broker, nodes, edge agent, receiver, live table")
    d.add_argument("--nodes", type=int, default=3, help="number of nodes (default 3)")
    d.add_argument("--duration", type=float, default=0, help="stop after S seconds (0: until Ctrl-C)")
    d.add_argument("--interval", type=float, default=1.0, help="node sampling interval in seconds")
    d.add_argument("--heap", help="MicroPython heap per node (default 128k; 192k with --flash, whose nodes boot a "
                                  "filesystem image through Python code in their heap)")
    d.add_argument("--state", type=Path, help="keep the demo's files here (default: a temporary directory)")
    d.add_argument("--broker-kind", choices=("mosquitto", "amqtt"),
                   help="which broker to start (default: mosquitto when installed, else amqtt)")
    d.add_argument("--flash", action="store_true",
                   help="flash the nodes first through virtual ESP32 boards with `openpole flash`, as a technician would")
    d.add_argument("--page", default="127.0.0.1:0", metavar="HOST:PORT",
                   help="serve the pole's web page there (default: a free loopback port; 'off' for none)")
    d.add_argument("--city", action="store_true",
                   help="the pole's upstream is a city's store on this machine: NATS JetStream, a loader, PostgreSQL, "
                        "the SensorThings API and its live feed (needs nats-server, postgresql and mosquitto)")
    d.set_defaults(func=run_demo)


def run_board(args):
    from . import board

    return board.run(args)


def run_node(args):
    from .world import WorldServer

    host, port = parse_hostport(args.broker)
    args.heap = args.heap or ("192k" if args.image else "128k")
    if args.firmware_lib and not args.firmware_lib.is_dir():
        raise UserError(f"--firmware-lib {args.firmware_lib}: not a directory")
    if args.fs_app and args.from_build:
        raise UserError("--fs-app and --from-build: the app is either in the node's filesystem or in the build directory")
    app = None if args.fs_app else appbuild.build_app(arch=simnode.vm_arch(args.micropython))
    world = WorldServer()
    sensors = tuple(s for s in args.sensors.split(",") if s)
    with tempfile.TemporaryDirectory(prefix="openpole-node-") as tmp:
        state = args.state or Path(tmp)
        cfg = simnode.node_config(args.node_id, host, port, args.interval, cycles=args.cycles,
                                  world=f"{world.host}:{world.port}", sensors=sensors, ack=args.ack)
        if not (args.fs_app and (state / "config.json").exists()):
            simnode.write_config(state, cfg)
        if app is not None and not args.from_build and not args.image:
            simnode.install(app, state)  # the node's filesystem holds the app, as a flashed board's does
            app = None
        if args.serial_pty:
            master, slave = os.openpty()
            tty.setraw(slave)
            print(os.ttyname(slave), flush=True)
            popen = dict(interactive=True, stdin=master, stdout=master, stderr=master)
        else:
            popen = dict(stdout=sys.stdout, stderr=subprocess.STDOUT)
        # Terminated ourselves (a test, a supervisor): take the node down too, never orphan it.
        signal.signal(signal.SIGTERM, lambda *a: (_ for _ in ()).throw(KeyboardInterrupt))
        proc = None
        try:
            fs = simnode.fs_from_image(args.image, tmp) if args.image else None
            while True:
                if fs:
                    proc = simnode.start_image(fs, f"{world.host}:{world.port}", heap=args.heap, vm=args.micropython,
                                               firmware_lib=args.firmware_lib, **popen)
                else:
                    proc = simnode.start(state, app, heap=args.heap, vm=args.micropython, firmware_lib=args.firmware_lib,
                                         **popen)
                rc = proc.wait()
                # A reset (the firmware's hw.reset()) or, on the console, Ctrl-D at the REPL (a soft
                # reset on a board) boots the node again; anything else ends the simulation.
                if rc == -signal.SIGUSR1 or (args.serial_pty and rc == 0 and not args.cycles):
                    time.sleep(0.2)
                    continue
                return rc
        except KeyboardInterrupt:
            if proc is None or proc.poll() is not None:
                return 130
            proc.terminate()
            try:
                return proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                return proc.wait()
        finally:
            world.close()


def run_demo(args):
    from . import demo

    heap = args.heap or ("192k" if args.flash else "128k")
    page = None if args.page == "off" else args.page
    if page:
        parse_hostport(page, 0, flag="--page")
    return demo.run(args.nodes, args.duration, args.interval, heap, args.state, broker_kind=args.broker_kind,
                    flash=args.flash, page=page, city=args.city)
