"""What a pole does to a node that a simulator forgets, under the MicroPython VM: the ESP32 board
layer (firmware/hw/esp32.py) on a recording `machine` and `network` (tests/mpfakes), the node's
MQTT client against a fake socket that has only the ESP32 socket's methods, timers across the
ticks_ms wrap, and the boot guard's delayed hard reset."""

import json
import signal
import subprocess
from pathlib import Path

from openpole.sim import node as simnode

FAKES = Path(__file__).with_name("mpfakes")
# MicroPython's esp32 port, ports/esp32/modsocket.c: the methods of a socket object (v1.24-v1.28).
ESP32_SOCKET_METHODS = {"bind", "listen", "accept", "connect", "send", "sendall", "sendto", "recv", "recvfrom",
                        "setsockopt", "settimeout", "setblocking", "makefile", "fileno", "read", "readinto",
                        "readline", "write", "close"}


def run_mp(app, tmp_path, code, fakes=True, heap="128k", vm=None):
    """Run code under MicroPython with the firmware (and the fakes) on the path; return the process."""
    script = tmp_path / "t.py"
    script.write_text(code)
    env = simnode.node_env(app)
    if fakes:
        env["MICROPYPATH"] = f"{FAKES}:" + env["MICROPYPATH"]
    return subprocess.run([simnode.micropython(vm), "-X", f"heapsize={heap}", str(script)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)


def last_json(r):
    assert r.returncode == 0, r.stdout + r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


ETHERNET = """
import json, machine, network
from hw.esp32 import Hardware
hw = Hardware({"board": "olimex-esp32-poe", "wifi": {"ssid": "", "password": ""}}, machine.WDT(timeout=8000))
first = hw.network_up()
network.link[0] = True  # the cable is in and DHCP answered
print(json.dumps({"first": first, "up": hw.network_up(), "info": hw.net_info(), "log": network.log,
                  "machine": machine.log}))
"""


def test_an_ethernet_board_brings_up_network_lan_from_its_board_file(app, tmp_path):
    got = last_json(run_mp(app, tmp_path, ETHERNET))
    assert ["freq", 240000000] in got["machine"]  # pole power: the node runs at 240 MHz, not the firmware's 160
    lan = [e for e in got["log"] if e[0] == "LAN"]
    assert lan == [["LAN", [["mdc", "Pin(23)"], ["mdio", "Pin(18)"], ["phy_addr", "0"], ["phy_type", "1"],
                            ["power", "Pin(12)"], ["ref_clk", "Pin(17)"], ["ref_clk_mode", "3"]]]]
    assert not any(e[0] == "WLAN" for e in got["log"])
    assert got["first"] is False and got["up"] is True
    assert got["info"] == {"type": "ethernet", "connected": True, "ip": "10.0.0.7"}


WIFI_WRAP = """
import json, time, network, machine
from hw.esp32 import Hardware
time.start_at(time.PERIOD - 25000)  # 25 s before ticks_ms wraps
hw = Hardware({"board": "esp32-devkitc", "wifi": {"ssid": "street", "password": "pw"}}, machine.WDT(timeout=8000))
def tries(seconds):
    n0 = sum(1 for e in network.log if e[0] == "connect")
    for _ in range(seconds * 10):
        hw.network_up()
        time.sleep_ms(100)
    return sum(1 for e in network.log if e[0] == "connect") - n0
across_wrap = tries(60)  # no access point: a try every 10 s, through the wrap
network.link[0] = True
hw.network_up()
time.advance(7 * 86400 * 1000)  # connected for a week: more than half the ticks period
network.link[0] = False
after_week = tries(15)
pm = [e for e in network.log if e[0] == "config"]
print(json.dumps({"across_wrap": across_wrap, "after_week": after_week, "pm": pm}))
"""


def test_wifi_retries_keep_their_pace_across_a_ticks_wrap_and_after_a_week_online(app, tmp_path):
    got = last_json(run_mp(app, tmp_path, WIFI_WRAP))
    assert got["across_wrap"] == 6  # one try every 10 s for 60 s, the wrap in the middle
    assert got["after_week"] >= 1  # at once after the drop, not days later
    assert got["pm"] == [["config", {"pm": 0}]]  # power save off: pole power, not a battery


DNS_WATCHDOG = """
import json, machine, socket
from hw.esp32 import Hardware
hw = Hardware({"board": "esp32-devkitc", "wifi": {"ssid": "", "password": ""}}, machine.WDT(timeout=8000))
machine.log[:] = []
addr = hw.resolve("localhost", 1883)
print(json.dumps({"wdt": machine.log, "port": addr[0][-1][1] if isinstance(addr[0][-1], tuple) else None}))
"""


def test_name_resolution_holds_the_watchdog_longer_and_gives_it_back(app, tmp_path):
    got = last_json(run_mp(app, tmp_path, DNS_WATCHDOG))
    assert got["wdt"] == [["WDT", 30000], ["WDT", 8000]]


# A broker on the other end of a fake socket: it answers what the client writes.
FAKE_SOCKET = """
import json, sys, time, errno
import transport
ALLOWED = %(allowed)r
calls = []
class FakeSocket:
    def __init__(self):
        self.inbox = bytearray()
        self.stream = bytearray()
        self.sent = []
        self.connected = False
        self.refuse_connack = 0
    def __getattr__(self, name):
        raise AttributeError("the ESP32 socket has no %%s" %% name)
for m in ALLOWED:
    def make(m):
        def f(self, *a):
            calls.append(m)
            return getattr(self, "_" + m)(*a)
        return f
    setattr(FakeSocket, m, make(m))
def _setblocking(self, flag): pass
def _setsockopt(self, *a): pass
def _connect(self, addr): raise OSError(errno.EINPROGRESS)
def _close(self): pass
def _write(self, buf):
    # The client may write a packet in pieces (a publish's payload after its header): the fake
    # broker reads a stream, as a real one does, and answers each whole packet.
    self.stream.extend(bytes(buf))
    while len(self.stream) >= 2:
        n, i, mult = 0, 1, 1
        while self.stream[i] & 0x80:
            n += (self.stream[i] & 0x7F) * mult
            mult <<= 7
            i += 1
        n += self.stream[i] * mult
        if len(self.stream) < i + 1 + n:
            break
        b = bytes(self.stream[:i + 1 + n])
        self.stream[:i + 1 + n] = b""
        self.packet(b)
    return len(buf)
def _packet(self, b):
    self.sent.append(b)
    kind = b[0] & 0xF0
    if kind == 0x10:
        self.inbox.extend(b"\\x20\\x02\\x00" + bytes((self.refuse_connack,)))
    elif kind == 0x82:
        self.inbox.extend(b"\\x90\\x03" + b[2:4] + b"\\x00")
    elif kind == 0x30 and (b[0] >> 1) & 3 == 1 and not HOLD_ACKS[0]:
        tl = (b[2] << 8) | b[3] if b[1] < 128 else (b[3] << 8) | b[4]
        i = 4 + tl if b[1] < 128 else 5 + tl
        self.inbox.extend(b"\\x40\\x02" + b[i:i + 2])
    elif kind == 0xC0:
        self.inbox.extend(b"\\xd0\\x00")
def _readinto(self, buf):
    if not self.inbox:
        return None
    n = min(len(buf), len(self.inbox))
    buf[:n] = self.inbox[:n]
    self.inbox[:n] = b""
    return n
for name in ("setblocking", "setsockopt", "connect", "close", "write", "readinto"):
    setattr(FakeSocket, "_" + name, globals()["_" + name])
FakeSocket.packet = _packet
HOLD_ACKS = [False]
socks = []
class Poll:
    def register(self, s, ev): pass
    def ipoll(self, t): return [(None, 4)]  # POLLOUT: the TCP connect completed
class SocketModule:
    def socket(self, *a):
        s = FakeSocket()
        socks.append(s)
        return s
    def getaddrinfo(self, host, port): return [(2, 1, 0, "", (host, port))]
class Select:
    POLLOUT, POLLERR, POLLHUP = 4, 8, 16
    def poll(self): return Poll()
sys.modules["socket"] = SocketModule()  # what transport_connect imports when it is loaded
sys.modules["select"] = Select()
t = transport.Transport("n1", "broker.local", 1883, user="n1", password="s3cret", keepalive_s=60, window=3,
                        subscribe=("openpole/v1/n1/cmd",))
got = []
t.on_message = lambda topic, payload: got.append([topic.decode(), payload.decode()])
while not t.ensure():
    pass
let_go = t.conn is None and "transport_connect" not in sys.modules  # the connect code, once up
sent = [t.publish("openpole/v1/n1/data", b"x" * 200, dup=(i == 0)) for i in range(3)]
HOLD_ACKS[0] = True
sent += [t.publish("openpole/v1/n1/data", b"y") for _ in range(4)]  # the window of 3 is full until PUBACKs
t.poll()
HOLD_ACKS[0] = False
pubs = [b for b in socks[0].sent if b[0] & 0xF0 == 0x30]
t.publish("openpole/v1/n1/diag", [b'{"a": ', b"1" * 300, b"}"], qos=0)  # a report in pieces: one packet
pieces = socks[0].sent[-1]
# The broker sends a command at QoS 1, an oversized packet the node drops, and a QoS 0 one.
s = socks[0]
s.inbox.extend(b"\\x32\\x18\\x00\\x12openpole/v1/n1/cmd\\x00\\x07hi")
s.inbox.extend(b"\\x30" + bytes((0xA0, 0x06)) + b"\\x00\\x01z" + b"o" * (800 - 3))
s.inbox.extend(b"\\x30\\x16\\x00\\x12openpole/v1/n1/cmdok")
t.poll()
time.sleep_ms(31000)  # idle past half the keepalive: a PINGREQ, answered
t.poll()
t.poll()
pinged = any(b == b"\\xc0\\x00" for b in s.sent)
# A refused CONNACK: a one-line reason, then backoff, and no password anywhere in it.
t.close()
t2 = transport.Transport("n1", "broker.local", 1883, user="n1", password="s3cret")
socks_before = len(socks)
sys.modules["socket"].socket = lambda *a: (lambda s: (setattr(s, "refuse_connack", 5), socks.append(s), s)[-1])(FakeSocket())
for _ in range(3):
    t2.ensure()
print(json.dumps({"calls": sorted(set(calls)), "sent": sent, "dup": [bool(b[0] & 8) for b in pubs],
                  "connect": socks[0].sent[0].hex(), "got": got, "oversized": t.oversized, "pinged": pinged,
                  "ping_answered": t.ping_sent is None,
                  "pieces": [pieces[0], len(pieces), pieces[-307:].decode()], "refused": t2.last_error, "up": t2.connected, "let_go": let_go}))
"""


def test_the_mqtt_client_uses_only_the_esp32_socket_surface_and_never_blocks(app, tmp_path):
    from transport import SOCKET_CALLS

    assert set(SOCKET_CALLS) <= ESP32_SOCKET_METHODS
    got = last_json(run_mp(app, tmp_path, FAKE_SOCKET % {"allowed": list(SOCKET_CALLS)}, heap="64k"))
    assert set(got["calls"]) <= set(SOCKET_CALLS)
    assert got["sent"] == [True, True, True, False, False, False, False]  # at most 3 await PUBACK
    assert got["dup"] == [True, False, False]  # a re-send carries DUP
    connect = bytes.fromhex(got["connect"])
    assert connect[0] == 0x10 and b"MQTT\x04" in connect and connect[9] == 0xC2  # user, password, clean session
    assert got["got"] == [["openpole/v1/n1/cmd", "hi"], ["openpole/v1/n1/cmd", "ok"]]
    assert got["oversized"] == 1
    assert got["let_go"]
    # A list payload goes out as one PUBLISH (QoS 0, 2-byte length, topic, payload) written in pieces.
    assert got["pieces"] == [0x30, 1 + 2 + 2 + len("openpole/v1/n1/diag") + 307, "{\"a\": " + "1" * 300 + "}"]
    assert got["pinged"] and got["ping_answered"]
    assert got["refused"] == "connect: broker refused: not authorised" and not got["up"]
    assert "s3cret" not in json.dumps(got["refused"])


TRANSPORT_WRAP = """
import json, sys, time, errno
import transport
time.start_at(time.PERIOD - 3000)  # 3 s before the wrap
tries = []
class S:
    def setblocking(self, f): pass
    def setsockopt(self, *a): pass
    def connect(self, a):
        tries.append(time.ticks_ms())
        raise OSError(errno.ECONNREFUSED)
    def close(self): pass
class M:
    def socket(self, *a): return S()
    def getaddrinfo(self, h, p): return [(2, 1, 0, "", (h, p))]
sys.modules["socket"] = M()  # what transport_connect imports when it is loaded
t = transport.Transport("n1", "10.0.0.1", 1883, backoff_max_ms=2000)
for _ in range(600):  # 60 s
    t.ensure()
    time.sleep_ms(100)
t.failed_at = time.ticks_add(time.ticks_ms(), -(time.PERIOD // 2 + 5))  # a failure 6 days old: not days of waiting
n = len(tries)
t.ensure()  # loads the connect code: a step of its own
t.ensure()
print(json.dumps({"tries": n, "stale_retried": len(tries) == n + 1}))
"""


def test_mqtt_reconnects_keep_trying_across_the_ticks_wrap(app, tmp_path):
    got = last_json(run_mp(app, tmp_path, TRANSPORT_WRAP))
    assert got["tries"] >= 30  # about one every 1-2 s (backoff capped at 2 s), through the wrap
    assert got["stale_retried"]


CONNECT_SHORT_OF_HEAP = """
import gc, json, sys, time, errno
import transport
class S:
    def setblocking(self, f): pass
    def setsockopt(self, *a): pass
    def connect(self, a): raise OSError(errno.ECONNREFUSED)
    def close(self): pass
class M:
    def socket(self, *a): return S()
    def getaddrinfo(self, h, p): return [(2, 1, 0, "", (h, p))]
sys.modules["socket"] = M()  # what transport_connect imports when it is loaded
t = transport.Transport("n1", "10.0.0.1", 1883, backoff_max_ms=2000)
hold = [None] * 4000
failed = [None] * 6  # made now: the full heap below has no room for it
i = 0
gc.collect()
while gc.mem_free() > 600:  # the heap taken but for less than the connect code needs
    hold[i] = bytearray(16)
    i += 1
failed[0] = t.ensure()  # loading transport_connect.py finds no room: a failed attempt, not a crash
failed[1], failed[2], failed[3] = t.errors, t.last_error, t.wait_ms > 0
failed[4], failed[5] = "transport_connect" in sys.modules, t.conn is None
hold = None
gc.collect()
waiting = [t.ensure(), t.errors]  # within its backoff: no new attempt
time.sleep_ms(t.wait_ms + 1)
t.ensure()  # the connect code, loaded now
t.ensure()  # the attempt: refused
print(json.dumps({"failed": failed, "waiting": waiting, "then": [t.errors, t.last_error]}))
"""


def test_a_heap_too_full_for_the_connect_code_is_a_failed_attempt_with_backoff(app, tmp_path):
    got = last_json(run_mp(app, tmp_path, CONNECT_SHORT_OF_HEAP, fakes=False, heap="64k"))
    assert got["failed"] == [False, 1, "connect: out of heap", True, False, True]
    assert got["waiting"] == [False, 1]
    assert got["then"] == [2, "connect: connection refused"]


def test_a_boot_failure_ends_in_a_hard_reset_after_a_growing_delay_never_a_loop(app, tmp_path):
    # The app on the node's filesystem, with one module missing (an interrupted deploy).
    import shutil

    state = tmp_path / "node"
    shutil.copytree(app, state)
    (state / "node.mpy").unlink()
    simnode.write_config(state, simnode.node_config("bf-1", "127.0.0.1", 1, sensors=("bme280",)))
    env = dict(simnode.node_env(None), MICROPYPATH=f"{FAKES}::lib")
    runs = []
    for _ in range(4):
        r = subprocess.run([simnode.micropython(), "-X", "heapsize=128k", "-c",
                            "import time\ntime.start_at(1000)\nimport main"], cwd=state, env=env,
                           capture_output=True, text=True, timeout=60)
        runs.append(r)
    for r in runs:
        assert r.returncode == -signal.SIGUSR1, r.stdout + r.stderr  # the board's reset line, not an exit
    said = [next(line for line in r.stdout.splitlines() if line.startswith("crash ")) for r in runs]
    assert said == [f"crash {n} in a row (first kept in crash.txt): hard reset in {d} s"
                    for n, d in ((1, 1), (2, 2), (3, 4), (4, 8))]
    assert "ImportError" in (state / "crash.txt").read_text()
    assert (state / "crashes.txt").read_text() == "4"


def test_a_config_with_an_unknown_board_or_a_bad_wifi_falls_back_instead_of_crashing(mp):
    got = mp.json(
        "import json, config\n"
        "out = []\n"
        "for bad in ({'board': 'esp32-nope'}, {'wifi': 'street'}, {'broker': {'host': 'h', 'port': 'x'}},"
        " {'broker': 'h'}, {'wifi': {'ssid': 5}}):\n"
        "    c = {'node_id': 'n1'}\n"
        "    c.update(bad)\n"
        "    try:\n"
        "        config.validate(c)\n"
        "        out.append('accepted')\n"
        "    except config.ConfigError as e:\n"
        "        out.append(str(e))\n"
        "print(json.dumps(out))\n"
    )
    assert got[0].startswith("board: unknown 'esp32-nope' (known: ") and "olimex-esp32-poe" in got[0]
    assert got[1] == got[4] == "wifi: a table with ssid and password (text)"
    assert got[2] == got[3] == "broker: a table with host (text) and port (1-65535)"


def sim_node(*args, timeout=90):
    import sys

    return subprocess.run([sys.executable, "-m", "openpole", "sim", "node", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_sim_node_runs_with_a_firmware_library_set_and_another_vm(tmp_path, mosquitto):
    from helpers import Collector

    from openpole.wire import node_message

    # A firmware's frozen modules, as a stock ESP32 build carries them (umqtt.simple among them):
    # the node's own MQTT client must not depend on which one, or whether it is there at all.
    fw = tmp_path / "fwlib"
    (fw / "umqtt").mkdir(parents=True)
    (fw / "umqtt" / "simple.py").write_text("print('FROZEN UMQTT IMPORTED')\n")
    (fw / "ntptime.py").write_text("print('FROZEN NTPTIME IMPORTED')\n")
    sub = Collector(mosquitto, "openpole/v1/fw-1/data")
    r = sim_node("--broker", f"{mosquitto.host}:{mosquitto.port}", "--node-id", "fw-1", "--cycles", "3", "--interval",
                 "0.2", "--sensors", "bme280", "--ack", "broker", "--firmware-lib", str(fw),
                 "--micropython", simnode.micropython())
    msgs = sub.wait_for(lambda m: len(m) >= 3)
    sub.close()
    assert r.returncode == 0, r.stdout + r.stderr
    assert "done cycles=3 published=3 delivered=3 queued=0" in r.stdout
    assert "IMPORTED" not in r.stdout
    assert [node_message.decode(p).seq for _, p, _ in msgs] == [0, 1, 2]


def test_sim_node_reports_the_heap_a_board_layout_holds_as_the_bench_measures_it(tmp_path, mosquitto):
    """`sim node` lays the app out as a board has it (in the node's filesystem, its root), as
    bench/node.py does: the two report the same live heap. From the build directory (longer module
    paths, interned for good) the node holds more."""
    import re
    import sys
    from concurrent.futures import ThreadPoolExecutor

    from openpole.field import appbuild
    from openpole.sim.world import WorldServer

    common = ["--broker", f"{mosquitto.host}:{mosquitto.port}", "--cycles", "150", "--interval", "0.1", "--ack", "broker",
              "--heap", "128k"]

    def bench_layout():
        world = WorldServer()
        try:
            state = tmp_path / "bench"
            simnode.write_config(state, simnode.node_config("lay-b", mosquitto.host, mosquitto.port, interval_s=0.1,
                                                            cycles=150, world=f"{world.host}:{world.port}", ack="broker"))
            simnode.install(appbuild.build_app(), state)
            p = simnode.start(state, None, heap="128k", stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            return p.communicate(timeout=120)[0]
        finally:
            world.close()

    with ThreadPoolExecutor(3) as pool:
        runs = [pool.submit(sim_node, "--node-id", "lay-s", *common, timeout=150),
                pool.submit(sim_node, "--node-id", "lay-f", "--from-build", *common, timeout=150),
                pool.submit(bench_layout)]
        sim, build, bench = (r.result() for r in runs)
    live = []
    for out in (sim.stdout, build.stdout, bench):
        m = re.search(r"done cycles=150 .*heap_live=(\d+)", out)
        assert m, out[-2000:]
        live.append(int(m.group(1)))
    sim_live, build_live, bench_live = live
    assert abs(sim_live - bench_live) <= max(256, bench_live // 100), live
    assert build_live > bench_live + 512, live


def test_sim_node_says_what_is_wrong_with_a_bad_vm_or_library_path(tmp_path):
    r = sim_node("--micropython", str(tmp_path / "nope"), "--cycles", "1")
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert f"--micropython {tmp_path / 'nope'}: not an executable MicroPython Unix port" in r.stderr
    r = sim_node("--firmware-lib", str(tmp_path / "nodir"), "--cycles", "1")
    assert r.returncode != 0 and f"--firmware-lib {tmp_path / 'nodir'}: not a directory" in r.stderr
