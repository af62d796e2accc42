"""`openpole sim node` (one node on the MicroPython Unix port) and `openpole sim demo` (a whole pole)."""

import os
import signal
import subprocess
import sys
import tempfile
import tty
from pathlib import Path

from . import node as simnode


def register(sub):
    p = sub.add_parser("sim", help="simulated nodes and a simulated pole")
    ssub = p.add_subparsers(dest="sim_command", metavar="ACTION", required=True)

    n = ssub.add_parser("node", help="run the real firmware under MicroPython with simulated sensors")
    n.add_argument("--broker", default="127.0.0.1:1883", help="HOST:PORT of the MQTT broker")
    n.add_argument("--node-id", default="sim-1", help="node id (a-z, 0-9, _ and -)")
    n.add_argument("--interval", type=float, default=1.0, help="seconds between sampling cycles")
    n.add_argument("--cycles", type=int, help="exit 0 after N sampling cycles and print the peak heap")
    n.add_argument("--heap", default="128k", help="MicroPython heap size, e.g. 48k (default 128k)")
    n.add_argument("--state", type=Path, help="the node's filesystem directory (default: a temporary one)")
    n.add_argument("--sensors", default=",".join(simnode.ALL_SENSORS), help="sensors to fit (default: all)")
    n.add_argument("--serial-pty", action="store_true", help="put the node's console on a new pty; print its path first")
    n.set_defaults(func=run_node)

    from .load import register as register_load

    register_load(ssub)

    d = ssub.add_parser("demo", help="a simulated pole: broker, nodes, edge agent, receiver, live table")
    d.add_argument("--nodes", type=int, default=3, help="number of nodes (default 3)")
    d.add_argument("--duration", type=float, default=0, help="stop after S seconds (0: until Ctrl-C)")
    d.add_argument("--interval", type=float, default=1.0, help="node sampling interval in seconds")
    d.add_argument("--heap", default="128k", help="MicroPython heap per node (default 128k)")
    d.add_argument("--state", type=Path, help="keep the demo's files here (default: a temporary directory)")
    d.add_argument("--broker-kind", choices=("mosquitto", "amqtt"),
                   help="which broker to start (default: mosquitto when installed, else amqtt)")
    d.set_defaults(func=run_demo)


def run_node(args):
    from .world import WorldServer

    host, port = simnode.parse_hostport(args.broker)
    app = simnode.build_app()
    world = WorldServer()
    sensors = tuple(s for s in args.sensors.split(",") if s)
    with tempfile.TemporaryDirectory(prefix="openpole-node-") as tmp:
        state = args.state or Path(tmp)
        cfg = simnode.node_config(args.node_id, host, port, args.interval, cycles=args.cycles,
                                  world=f"{world.host}:{world.port}", sensors=sensors)
        simnode.write_config(state, cfg)
        if args.serial_pty:
            master, slave = os.openpty()
            tty.setraw(slave)
            print(os.ttyname(slave), flush=True)
            proc = simnode.start(state, app, heap=args.heap, interactive=True, stdin=master, stdout=master, stderr=master)
        else:
            proc = simnode.start(state, app, heap=args.heap, stdout=sys.stdout, stderr=subprocess.STDOUT)
        # Terminated ourselves (a test, a supervisor): take the node down too, never orphan it.
        signal.signal(signal.SIGTERM, lambda *a: (_ for _ in ()).throw(KeyboardInterrupt))
        try:
            return proc.wait()
        except KeyboardInterrupt:
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

    return demo.run(args.nodes, args.duration, args.interval, args.heap, args.state, broker_kind=args.broker_kind)
