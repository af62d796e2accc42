"""`openpole sim demo`: a whole simulated pole on this machine.

A broker, N nodes running the real firmware under MicroPython with simulated sensors, the edge
agent and the reference receiver (with city=True, a city's store: citydemo.py); a live table of the latest reading per node, then a summary.
With flash=True the nodes are virtual boards (sim.board) that `openpole flash` puts the firmware
on first, as a technician would. Exit 0 only if readings from every node reached the receiver.
"""

import logging
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from rich.console import Console
from rich.live import Live
from rich.table import Table

from openpole.edge_agent.agent import Agent
from openpole.edge_agent.config import AgentConfig

from ..receiver.server import Receiver
from ..field import appbuild
from . import node as simnode
from .broker import Broker, free_port
from .world import WorldServer

COLUMNS = (("temperature", "T °C", 1), ("humidity", "RH %", 0), ("pressure", "p hPa", 0), ("pm2_5", "PM2.5", 0),
           ("laeq", "LAeq", 1))


class FlashedNode:
    """A virtual ESP32 (sim.board) in this process, flashed with `openpole flash` as a technician
    would; it then runs the node it was given. The same face as NodeProcess."""

    def __init__(self, node_id, state, world, heap):
        from .board import Board, Server

        state.mkdir(parents=True, exist_ok=True)
        self.node_id = node_id
        self.board = Board(state / "flash.bin", f"{world.host}:{world.port}", heap=heap)
        self.server = Server(self.board)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.board.boot("flash")
        self.published = self.readings = 0
        self.last_line = self.last_error = ""
        self.proc = self  # poll(): None while the board runs

    def flash(self, firmware, site, base):
        from ..errors import UserError
        from ..field.flash import flash

        try:
            r = flash(self.server.url, "esp32-devkitc", self.node_id, firmware, site, base, sim=True)
        except UserError as e:
            r = None
            self.last_line = f"flash failed: {e}"
        else:
            self.last_line = f"flashed ({r.chip}, MAC {r.mac}): {r.verdict}"
        return r is not None and r.ok

    def poll(self):
        return None

    def stop(self):
        self.server.close()
        self.board.close()


def flash_nodes(names, state, world, broker, heap, console):
    """Virtual boards flashed in parallel, as a flashing station does; (nodes, their keys, all flashed)."""
    from ..field.site import Site
    from .board import stand_in_firmware

    firmware = stand_in_firmware(state / "ESP32_GENERIC.bin")
    site = Site(state / "site")
    base = {"interval_s": 1.0, "broker": {"host": broker.host, "port": broker.port},
            "sensors": {name: {} for name in simnode.ALL_SENSORS}}
    nodes = [FlashedNode(name, state / name, world, heap) for name in names]
    console.print(f"flashing {len(nodes)} virtual ESP32 boards: " + ", ".join(n.server.url for n in nodes))
    results = {}
    threads = [threading.Thread(target=lambda n=n: results.__setitem__(n.node_id, n.flash(firmware, site, base)))
               for n in nodes]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for n in nodes:
        console.print(f"  {n.node_id}: {n.last_line}")
    keys = {n.node_id: bytes.fromhex(site.node_secrets(n.node_id)["key"]) for n in nodes}  # they sign their messages
    return nodes, keys, all(results.values())


class NodeProcess:
    """One simulated node; its console output is kept for the summary."""

    def __init__(self, node_id, state, app, broker, world, interval_s, heap):
        simnode.write_config(state, simnode.node_config(node_id, broker.host, broker.port, interval_s,
                                                        world=f"{world.host}:{world.port}"))
        self.node_id = node_id
        self.proc = simnode.start(state, app, heap=heap, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.last_line = ""
        self.last_error = ""  # the last exception the node printed: its crash, before main.py's reset line
        self.published = 0  # messages seen at the broker
        self.readings = 0
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            if line.strip():
                self.last_line = line.strip()
                if line.split(":")[0].endswith(("Error", "Exception")):
                    self.last_error = self.last_line

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def _last_words(n):
    """What a node said last: its last exception first, when a reset line came after it."""
    if n.last_error and n.last_error != n.last_line:
        return f"{n.last_error} (then: {n.last_line})"
    return n.last_line or "(none)"


def _table(nodes, store, started):
    """store: the receiver's, or the city's PostgreSQL (citydemo.CityStore): latest(), per_node()."""
    latest = {}
    for row in store.latest():
        latest.setdefault(row["node"], {})[row["name"]] = row
    counts = store.per_node()
    t = Table(title=f"openpole demo pole: {len(nodes)} nodes, {time.monotonic() - started:.0f} s", expand=False,
              caption="PM2.5 appears after the PMS5003's 30 s laser warm-up")
    t.add_column("node")
    for _, header, _ in COLUMNS:
        t.add_column(header, justify="right")
    t.add_column("age", justify="right")
    t.add_column("msgs sent", justify="right")
    t.add_column("readings stored", justify="right")
    now = time.time()
    for n in nodes:
        vals = latest.get(n.node_id, {})
        cells = [f"{vals[name]['value']:.{d}f}" if name in vals else "-" for name, _, d in COLUMNS]
        newest = max((v["time"] for v in vals.values()), default=None)
        age = f"{now - newest:.1f} s" if newest else "-"
        t.add_row(n.node_id, *cells, age, str(n.published), str(counts.get(n.node_id, 0)))
    return t


class Tap:
    """Counts the node messages (and readings) the broker carries, per node."""

    def __init__(self, broker, nodes, keys=None):
        import paho.mqtt.client as mqtt

        from openpole.wire import node_message

        self.by_id = {n.node_id: n for n in nodes}
        self.decode = lambda payload: node_message.decode(payload, keys)
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="openpole-demo-tap")
        c.on_connect = lambda cl, *a: cl.subscribe("openpole/v1/+/data", qos=1)
        c.on_message = self._on_message
        c.connect(broker.host, broker.port)
        c.loop_start()
        self.client = c

    def _on_message(self, client, userdata, msg):
        try:
            m = self.decode(msg.payload)
        except Exception:
            return
        n = self.by_id.get(m.node)
        if n is not None:
            n.published += 1
            n.readings += len(m.readings)

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()


def run(n_nodes=3, duration_s=0, interval_s=1.0, heap="128k", state_dir=None, console=None, broker_kind=None,
        flash=False, page=None, city=False):
    console = console or Console()
    logging.getLogger("openpole").setLevel(logging.WARNING)  # the table is the output
    tmp = None
    if state_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="openpole-demo-")
        state_dir = tmp.name
    state = Path(state_dir)
    app = appbuild.build_app()
    world = WorldServer()
    receiver = store = None
    if city:
        from .citydemo import CityDemo

        city = CityDemo(state / "city", "demo-pole")
        store = city.store
        console.print(f"[bold]SensorThings API[/]: {city.url}", soft_wrap=True)
        console.print(f"[bold]live feed[/]: {city.feed} (MQTT, anonymous read-only: v1.1/Observations, "
                      f"v1.1/Datastreams(ID)/Observations), and Server-Sent Events at "
                      f"{city.url}/Datastreams(ID)/Observations/events", soft_wrap=True)
    try:
        broker = Broker(state / "broker", kind=broker_kind).start()
    except BaseException:
        if city:
            city.stop()
        raise
    if not city:
        receiver = Receiver("127.0.0.1", free_port(), state / "receiver").start()
        store = receiver.store
    cfg = AgentConfig(pole_id="demo-pole", broker_host=broker.host, broker_port=broker.port,
                      upstream=city.nats_url if city else receiver.url, state_dir=state / "edge", batch_interval_s=1.0)
    if city:
        cfg.upstream_key = city.key
    page_password = None
    if page:
        import secrets

        from openpole.edge_agent.password import hash_password

        page_password = secrets.token_urlsafe(9)
        cfg.page_listen, cfg.page_password_hash, cfg.page_offline_after_s = page, hash_password(page_password), 30.0
    agent = Agent(cfg)
    agent.start()
    pole_page = None
    if page:
        from openpole.edge_agent.page import serve as serve_page

        pole_page = serve_page(agent, page)
        console.print(f"[bold]the pole's page[/]: {pole_page.url}  (password for its actions: {page_password})",
                      soft_wrap=True)
    upstream = f"the city's NATS JetStream {city.nats_url}, a loader, PostgreSQL" if city else f"receiver {receiver.url}"
    console.print(f"[bold]openpole demo[/]: {broker.kind} on {broker.host}:{broker.port}, {upstream}, "
                  f"{n_nodes} nodes on MicroPython (heap {heap}); "
                  + (f"{duration_s:g} s" if duration_s else "Ctrl-C to stop"))
    names = [f"node-{i + 1}" for i in range(n_nodes)]
    flashed = True
    if flash:
        nodes, keys, flashed = flash_nodes(names, state, world, broker, heap, console)
        cfg.node_keys.update(keys)
    else:
        nodes = [NodeProcess(name, state / name, app, broker, world, interval_s, heap) for name in names]
    tap = Tap(broker, nodes, cfg.node_keys)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *a: stop.set())
    started = time.monotonic()
    try:
        with Live(_table(nodes, store, started), console=console, refresh_per_second=2,
                  auto_refresh=False, transient=False) as live:
            while not stop.is_set() and (not duration_s or time.monotonic() - started < duration_s):
                if all(n.proc.poll() is not None for n in nodes):
                    break
                stop.wait(1.0)
                live.update(_table(nodes, store, started), refresh=console.is_terminal)
            live.update(_table(nodes, store, started), refresh=True)
        console.print()
    except KeyboardInterrupt:
        pass
    finally:
        for n in nodes:
            n.stop()
        # Every message the broker carried reaches the agent: wait until the agent has it on disk
        # and the last batch has reached the receiver.
        time.sleep(0.3)
        tap.close()
        published = sum(n.published for n in nodes)
        deadline = time.monotonic() + cfg.batch_interval_s + 5
        while time.monotonic() < deadline and (
            agent.store.counters().get("messages_accepted", 0) < published or agent.store.depth()[0]
        ):
            time.sleep(0.1)
        if pole_page:
            pole_page.stop()
        agent.stop()
        if city:
            city.settle(sum(n.readings for n in nodes))  # the loader commits what the stream holds
        counts = store.per_node()
        stats = store.stats()
        if city:
            city.stop()
        else:
            receiver.stop()
        broker.stop()
        world.close()
    where = "in the city's PostgreSQL" if city else "at the receiver"
    missing = [n.node_id for n in nodes if not counts.get(n.node_id)]
    console.print(f"summary: {len(nodes)} nodes, {sum(n.published for n in nodes)} messages published "
                  f"with {sum(n.readings for n in nodes)} readings, {stats['unique']} readings {where} "
                  f"({stats['duplicates']} duplicates), from {stats['nodes']} nodes")
    for n in nodes:
        if not counts.get(n.node_id):
            console.print(f"[red]{n.node_id}[/]: no readings arrived; its last words: {_last_words(n)}")
    if tmp:
        tmp.cleanup()
    if missing:
        console.print(f"[red]FAIL[/]: no readings from {', '.join(missing)}")
        return 1
    if not flashed:
        console.print("[red]FAIL[/]: a board was not flashed cleanly (above)")
        return 1
    console.print(f"[green]OK[/]: readings from every node reached {'the city' if city else 'the receiver'}")
    return 0
