"""The node runtime under MicroPython (compiled with mpy-cross, heap capped) against real Mosquitto,
its buses served by the simulated world: messages in order, boot counter, signing, secrets, config
fallback, sensor faults, no broker."""

import json
import re
import subprocess

from helpers import Collector

from openpole.wire import node_message
from openpole.sim import node as simnode


HEAP = "128k"


def run_node(app, state, broker, cycles, world, heap=HEAP, sensors=("bme280",), **cfg_kw):
    """Run a node against a broker with no edge agent: the broker's PUBACK frees its messages."""
    cfg_kw.setdefault("ack", "broker")
    simnode.write_config(state, simnode.node_config("sk-1", broker.host, broker.port, interval_s=0.2, cycles=cycles,
                                                    world=f"{world.host}:{world.port}", sensors=sensors, **cfg_kw))
    p = simnode.start(state, app, heap=heap, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out, _ = p.communicate(timeout=60)
    assert p.returncode == 0, out
    return out


def test_node_publishes_valid_v1_messages_in_order(app, tmp_path, mosquitto, world):
    sub = Collector(mosquitto)
    out = run_node(app, tmp_path / "node", mosquitto, cycles=5, world=world)
    msgs = sub.wait_for(lambda m: sum(t.endswith("/data") for t, _, _ in m) >= 5)
    sub.close()
    data = [node_message.decode(p) for t, p, _ in msgs if t == "openpole/v1/sk-1/data"]
    assert [m.seq for m in data] == [0, 1, 2, 3, 4]
    assert len({m.boot for m in data}) == 1 and data[0].boot >= 1
    for m in data:
        names = {r.name: r for r in m.readings}
        assert set(names) == {"temperature", "humidity", "pressure"}
        assert all(r.flags == 0 for r in m.readings)  # plausible, in range
        assert 0 <= names["temperature"].age_ms < 5000
        assert m.status == {"bme280": [0, 0]}
    assert ("openpole/v1/sk-1/status", b"online") in [(t, p) for t, p, _ in msgs]
    assert "done cycles=5 published=5 delivered=5 queued=0 dropped=0" in out
    assert len(msgs[1][1]) < 80, "a BME280 message should stay small"


def test_boot_counter_persists_on_the_node_filesystem(app, tmp_path, mosquitto, world):
    state = tmp_path / "node"
    sub = Collector(mosquitto)
    run_node(app, state, mosquitto, cycles=1, world=world)
    run_node(app, state, mosquitto, cycles=1, world=world)
    msgs = sub.wait_for(lambda m: sum(t.endswith("/data") for t, _, _ in m) >= 2)
    sub.close()
    boots = [node_message.decode(p).boot for t, p, _ in msgs if t.endswith("/data")]
    assert boots[1] == boots[0] + 1  # a new boot id, one up: (node, boot, seq) stays unique
    assert (state / "boot_count").read_text() == str(boots[1])


def test_signed_messages_verify_at_the_agent_and_a_wrong_key_is_refused(app, tmp_path, mosquitto, world):
    key = "00112233445566778899aabbccddeeff"
    sub = Collector(mosquitto)
    run_node(app, tmp_path / "node", mosquitto, cycles=2, world=world, key=key)
    msgs = sub.wait_for(lambda m: sum(t.endswith("/data") for t, _, _ in m) >= 2)
    sub.close()
    payloads = [p for t, p, _ in msgs if t.endswith("/data")]
    assert [node_message.decode(p, {"sk-1": bytes.fromhex(key)}).seq for p in payloads] == [0, 1]
    for keys, reason in (({"sk-1": b"\x00" * 16}, "bad_mac"), ({}, "unknown_node")):
        try:
            node_message.decode(payloads[0], keys)
        except node_message.Rejected as e:
            assert e.reason == reason
        else:
            raise AssertionError("a message with a wrong or unknown key was accepted")


def test_node_without_a_broker_keeps_its_messages_and_never_hangs(app, tmp_path, world):
    from openpole.sim.broker import free_port

    class Nowhere:
        host, port = "127.0.0.1", free_port()

    out = run_node(app, tmp_path / "node", Nowhere, cycles=4, world=world)
    assert "done cycles=4 published=0 delivered=0 queued=4 dropped=0" in out


def test_secrets_never_reach_the_console(app, tmp_path, mosquitto, world):
    state = tmp_path / "node"
    cfg = simnode.node_config("sk-1", mosquitto.host, mosquitto.port, interval_s=0.2, cycles=2, key="c0ffee" * 5 + "00", ack="broker",
                              world=f"{world.host}:{world.port}", sensors=("bme280",))
    cfg["wifi"] = {"ssid": "street", "password": "wifi-pass-123"}
    cfg["broker"]["password"] = "mqtt-pass-456"  # mosquitto here allows anonymous and ignores it
    cfg["broker"]["user"] = "sk-1"
    simnode.write_config(state, cfg)
    p = simnode.start(state, app, heap=HEAP, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out, _ = p.communicate(timeout=60)
    assert "done cycles=2" in out
    for secret in ("wifi-pass-123", "mqtt-pass-456", "c0ffee"):
        assert secret not in out


def test_corrupt_config_falls_back_to_the_last_good_copy_and_says_so(app, tmp_path, mosquitto, world):
    state = tmp_path / "node"
    run_node(app, state, mosquitto, cycles=1, world=world)  # a good boot leaves config.last.json
    (state / "config.json").write_text('{"node_id": "sk-1", "broker": ')  # torn by a power cut
    p = simnode.start(state, app, heap=HEAP, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out, _ = p.communicate(timeout=60)
    assert p.returncode == 0, out
    assert "config: config.json is unusable" in out and "running on the last good copy" in out
    assert "done cycles=1 published=1 delivered=1" in out


def test_without_any_usable_config_the_node_runs_on_safe_defaults(app, tmp_path, world):
    state = tmp_path / "node"
    state.mkdir()
    (state / "config.json").write_text("not json")
    (state / "run.py").write_text(
        "import config\n"
        "cfg = config.load(unique_id=b'\\x02\\x00\\x00\\xab\\xcd\\xef')\n"
        "print(cfg['node_id'], cfg['interval_s'], sorted(cfg['sensors']))\n"
    )
    r = subprocess.run([simnode.micropython(), "-X", "heapsize=64k", "run.py"], cwd=state, env=simnode.node_env(app),
                       capture_output=True, text=True, timeout=30)
    assert "running on safe defaults" in r.stdout
    assert r.stdout.strip().splitlines()[-1] == "node-abcdef 60 ['bme280']"


def test_a_missing_sensor_is_reported_while_the_others_keep_working(app, tmp_path, mosquitto, world):
    world.world("sk-1", chips=("pms5003", "noise"))  # no BME280 on this node's bus
    sub = Collector(mosquitto)
    out = run_node(app, tmp_path / "node", mosquitto, cycles=3, world=world, sensors=("bme280", "noise"))
    msgs = sub.wait_for(lambda m: sum(t.endswith("/data") for t, _, _ in m) >= 3)
    sub.close()
    data = [node_message.decode(p) for t, p, _ in msgs if t.endswith("/data")]
    assert all("laeq" in {r.name for r in m.readings} for m in data), [m.readings for m in data]
    # Extremes and percentiles start once the meter has settled (250 ms): the last message has them.
    assert {r.name for r in data[-1].readings} == {"laeq", "lamax", "lamin", "la10", "la50", "la90"}
    assert all(m.status["bme280"][0] == 3 and m.status["bme280"][1] >= 1 and m.status["noise"] == [0, 0] for m in data), \
        [m.status for m in data]
    diags = [json.loads(p) for t, p, _ in msgs if t.endswith("/diag")]
    assert diags and diags[0]["sensors"]["bme280"]["state"] == "failed"
    assert "no device at I2C address 0x76" in diags[0]["sensors"]["bme280"]["last_error"]
    assert "bme280=failed" in out


def test_redacted_config_hides_every_secret(mp):
    out = mp.json(
        "import json, config, redact\n"
        "c = config.validate({'node_id': 'n1', 'key': '00' * 16, 'wifi': {'ssid': 's', 'password': 'pw'},"
        " 'broker': {'host': 'h', 'port': 1, 'password': 'pw2'}})\n"
        "print(json.dumps(redact.redacted(c)))\n"
    )
    assert out["key"] == "***" and out["wifi"] == {"ssid": "s", "password": "***"}
    assert out["broker"]["password"] == "***" and out["broker"]["host"] == "h"


CONFIG_GET_SET = """
import json, config
cfg = config.validate({"node_id": "n1", "broker": {"host": "h", "port": 1, "password": "pw2"}})
out = [config.get(cfg, "broker.host"), config.get(cfg, "broker.password"), config.get(cfg, "broker")["password"]]
cfg = config.set(cfg, "interval_s", "30")
cfg = config.set(cfg, "sensors.bme280.address", "119")
out += [cfg["interval_s"], cfg["sensors"]["bme280"]["address"], json.load(open("config.json"))["interval_s"]]
for key, value in (("interval_s", "0"), ("node_id", "Bad Id"), ("sensors.bme280.colour", "1"), ("nope.x", "1")):
    try:
        config.set(cfg, key, value)
        out.append("accepted")
    except ValueError as e:
        out.append(str(e))
try:
    config.get(cfg, "nope")
except ValueError as e:
    out.append(str(e))
print(json.dumps(out))
"""


def test_config_get_and_set_are_validated_atomic_and_redacted(mp):
    got = mp.json(CONFIG_GET_SET)
    assert got[:3] == ["h", "***", "***"]
    assert got[3:6] == [30, 119, 30]
    assert got[6] == "interval_s: a number from 0.1 to 86400"
    assert got[7] == "node_id: 1-32 characters of a-z, 0-9, _ and -"
    assert got[8].startswith("sensors.bme280.colour: unknown setting")
    assert got[9] == "accepted"  # an extra section is kept (forward compatible), validated as a whole
    assert got[10] == "nope: no such setting"


OUTAGE_CAPACITY = """
import os, vfs
import message
from outbox import Outbox, record_fields

class RAMBlocks:  # a LittleFS partition in RAM, 4096-byte blocks as on an ESP32 board
    def __init__(self, n):
        self.data = bytearray(n * 4096)
    def readblocks(self, n, buf, off=0):
        buf[:] = memoryview(self.data)[n * 4096 + off : n * 4096 + off + len(buf)]
    def writeblocks(self, n, buf, off=None):
        off = off or 0
        self.data[n * 4096 + off : n * 4096 + off + len(buf)] = buf
    def ioctl(self, op, arg):
        return {4: len(self.data) // 4096, 5: 4096}.get(op, 0)

bd = RAMBlocks(%(blocks)d)
vfs.VfsLfs2.mkfs(bd)
vfs.mount(vfs.VfsLfs2(bd), "/flash")
for rel in %(app_files)r:  # the app as a board has it: a file each, every one at least a block
    src = open(%(app)r + "/" + rel, "rb")
    parts = rel.split("/")
    for i in range(1, len(parts)):
        try:
            os.mkdir("/flash/" + "/".join(parts[:i]))
        except OSError:
            pass
    with open("/flash/" + rel, "wb") as dst:
        dst.write(src.read())
    src.close()
os.chdir("/flash")
with open("other-files", "wb") as f:  # config, crash log, certificates ... and whatever else is there
    for _ in range(%(other)d // 4096):
        f.write(bytearray(4096))
ob = Outbox(spill_dir="spill")
free0 = os.statvfs(".")[4]
bme = message.encode_values({"temperature": 21.37, "humidity": 45.21, "pressure": 1013.27})
pms = message.encode_values({"pm1": 7, "pm2_5": 11, "pm10": 17, "pm1_cf1": 8, "pm2_5_cf1": 12, "pm10_cf1": 18,
                             "pc0_3": 1980, "pc0_5": 605, "pc1": 132, "pc2_5": 17, "pc5": 4, "pc10": 1})
noise = message.encode_values({"laeq": 63.2, "lamax": 71.5, "lamin": 55.1, "la10": 66.3, "la50": 61.9, "la90": 57.0})
status = bytes.fromhex("a366626d6532383082000067706d7335303033820000656e6f697365820000")
least = free0
for n in range(1440):  # 24 h at the default 60 s interval, every sensor in every message
    ob.put(1, n, 0, [bme, pms, noise], status)
    least = min(least, os.statvfs(".")[4])
ob.save()  # a deliberate reset
again = Outbox(spill_dir="spill")
seqs = []
while len(again):
    seqs.append(record_fields(*again.peek())[1])
    again.pop()
print(ob.dropped, len(seqs), seqs == list(range(1440 - len(seqs), 1440)), ob.max_segments, free0, least)
"""


def outage(mp, blocks, other=0):
    """A day's outage at the default interval into a LittleFS of `blocks` blocks holding the app and
    `other` bytes of other files: (dropped, replayed, the newest kept in order, max segments, free
    blocks before, least free blocks during)."""
    from openpole.field import appbuild

    files = [rel for rel in appbuild.app_files(mp.app)]
    got = mp.run(OUTAGE_CAPACITY % {"blocks": blocks, "app_files": files, "app": str(mp.app), "other": other},
                 heap="4m", timeout=300).split()
    return [int(v) if v.isdigit() else v == "True" for v in got[:6]]


def smallest_filesystems():
    """The smallest LittleFS a supported board has (board_defs/*.toml), and the 960 KiB the
    ESP32_GENERIC-OTA layout leaves (two 1.5 MiB app slots on a 4 MB flash)."""
    from openpole.field import image

    smallest = min(b["fs_size"] for b in image.specs().boards.values())
    return [smallest // 4096, 960 * 1024 // 4096]


def test_a_24_hour_outage_fits_the_outbox_whole_on_the_smallest_filesystems_and_survives_a_reset(mp):
    for blocks in smallest_filesystems():
        dropped, replayed, newest, max_segments, free0, least = outage(mp, blocks)
        assert dropped == 0 and replayed == 1440 and newest, (blocks, dropped, replayed)
        # A spill fills the block its segment takes: the day's 1440 messages (about 150 bytes each)
        # take some 50 blocks, not a block per 1 KB spill (about 240, more than the OTA layout has).
        assert free0 - least < 70, (blocks, free0, least)
        assert abs(max_segments - free0 // 2) <= 1, (max_segments, free0)  # half the free blocks, a block each


def test_flash_that_cannot_hold_a_day_drops_the_oldest_counted_and_never_fills(mp):
    # The OTA layout's 960 KiB holding 600 KB of other files: some 30 blocks free, half for the outbox.
    dropped, replayed, newest, max_segments, free0, least = outage(mp, 240, other=600 * 1024)
    assert abs(max_segments - free0 // 2) <= 1 and max_segments < 20, (max_segments, free0)
    assert 0 < replayed < 1440 and dropped == 1440 - replayed and newest  # the newest kept, in order
    assert least >= free0 - max_segments - 2, (free0, max_segments, least)  # its share, never the rest


def test_bus_errors_are_counted_and_the_sensor_recovers(app, tmp_path, mosquitto, world):
    w = world.world("sk-1", chips=("bme280",))
    w.i2c.fail[0x76] = 3  # three transfers fail: the chip-id check, then a reading
    sub = Collector(mosquitto)
    out = run_node(app, tmp_path / "node", mosquitto, cycles=6, world=world)
    msgs = sub.wait_for(lambda m: sum(t.endswith("/data") for t, _, _ in m) >= 4)
    sub.close()
    data = [node_message.decode(p) for t, p, _ in msgs if t.endswith("/data")]
    assert data and data[-1].status["bme280"][0] == 0  # ok again
    assert data[-1].status["bme280"][1] >= 1  # the errors were counted
    assert "sensor bme280" in out or "bme280=failed" in out  # and said on the console


def test_commands_over_mqtt_are_validated_and_answered(app, tmp_path, mosquitto, world):
    from helpers import publish_all

    state = tmp_path / "node"
    simnode.write_config(state, simnode.node_config("sk-1", mosquitto.host, mosquitto.port, interval_s=0.2, cycles=40,
                                                    world=f"{world.host}:{world.port}", sensors=("bme280",), ack="broker"))
    sub = Collector(mosquitto, "openpole/v1/sk-1/#")
    p = simnode.start(state, app, heap=HEAP, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        sub.wait_for(lambda m: any(t.endswith("/status") and pl == b"online" for t, pl, _ in m), timeout=20)
        cmd = "openpole/v1/sk-1/cmd"
        publish_all(mosquitto, [(cmd, b'{"cmd": "diag"}'), (cmd, b'{"cmd": "interval", "value": 0.3}'),
                                (cmd, b'{"cmd": "interval", "value": -1}'), (cmd, b'{"cmd": "dance"}'), (cmd, b"\xff garbage")])
        msgs = sub.wait_for(lambda m: sum(b'"cmd"' in pl for t, pl, _ in m if t.endswith("/diag")) >= 5, timeout=20)
    finally:
        out, _ = p.communicate(timeout=60)
        sub.close()
    replies = [json.loads(pl) for t, pl, _ in msgs if t.endswith("/diag") and b'"cmd"' in pl]
    by_cmd = {}
    for r in replies:
        by_cmd.setdefault(r["cmd"], []).append(r)
    assert by_cmd["diag"][0]["ok"] and by_cmd["diag"][0]["diag"]["node"] == "sk-1"
    assert [r["ok"] for r in by_cmd["interval"]] == [True, False]
    assert "interval_s" in by_cmd["interval"][1]["error"]
    assert by_cmd["dance"][0] == {"cmd": "dance", "ok": False, "error": "unknown command (interval, diag, selftest, reboot)"}
    assert any(r["cmd"] is None and not r["ok"] for r in replies)  # garbage: answered, not a crash
    assert json.loads((state / "config.json").read_text())["interval_s"] == 0.3  # saved atomically
    assert p.returncode == 0, out


def test_pms5003_sleeps_between_readings_and_wakes_30_s_before_each(app, tmp_path, mosquitto, world):
    w = world.world("sk-1", chips=("pms5003",))
    sub = Collector(mosquitto, "openpole/v1/sk-1/data")
    state = tmp_path / "node"
    cfg = simnode.node_config("sk-1", mosquitto.host, mosquitto.port, interval_s=32, cycles=2,
                              world=f"{world.host}:{world.port}", sensors=("pms5003",), ack="broker")
    cfg["sensors"]["pms5003"] = {"duty_cycle": True}
    simnode.write_config(state, cfg)
    p = simnode.start(state, app, heap=HEAP, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out, _ = p.communicate(timeout=120)
    assert p.returncode == 0, out
    msgs = sub.wait_for(lambda m: len(m) >= 2, timeout=10)
    sub.close()
    data = [node_message.decode(pl) for _, pl, _ in msgs]
    assert len(data) == 2 and all({r.name for r in m.readings} >= {"pm2_5", "pc0_3"} for m in data)
    # The SET pin (pin 1 in the simulated world): on at start, off after the first reading, on again
    # 30 s before the second, off after it. Readings are asked for over the UART in passive mode.
    assert [v for pin, v in w.pin_log if pin == 1] == [1, 0, 1, 0]
    cmds = [bytes(w.uart.written[i : i + 7]) for i in range(0, len(w.uart.written), 7)]
    assert cmds[0] == bytes.fromhex("424de100000170") and cmds.count(bytes.fromhex("424de200000171")) == 2
    assert w.uart.chip.asleep  # the laser is off when the node is done


def test_audio_the_loop_was_too_late_for_is_counted_as_the_dma_loses_it(app, tmp_path, mosquitto, world):
    w = world.world("sk-1", chips=("bme280", "noise"))
    out = run_node(app, tmp_path / "quiet", mosquitto, cycles=8, world=world, sensors=("bme280", "noise"))
    assert w.mic.lost == 0 and "audio_lost=0" in out  # every tick's work fits the DMA buffer
    # A slow I2C bus (a long cable, a chip stretching the clock): each BME280 reading keeps the
    # loop away from the audio for longer than the ESP32's DMA holds (52 ms).
    w2 = world.world("sk-2", chips=("bme280", "noise"))
    w2.i2c_delay_s = 0.03
    sub = Collector(mosquitto, "openpole/v1/sk-2/data")
    simnode.write_config(tmp_path / "slow", simnode.node_config(
        "sk-2", mosquitto.host, mosquitto.port, interval_s=0.2, cycles=8, world=f"{world.host}:{world.port}",
        sensors=("bme280", "noise"), ack="broker"))
    p = simnode.start(tmp_path / "slow", app, heap=HEAP, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out, _ = p.communicate(timeout=60)
    msgs = sub.wait_for(lambda m: len(m) >= 8)
    sub.close()
    assert p.returncode == 0, out
    lost = int(re.search(r"audio_lost=(\d+)", out).group(1))
    world_blocks = w2.mic.lost / 480
    assert world_blocks > 5, "the slow bus should have overrun the DMA"
    # The node's count (from elapsed time) against what the DMA really overwrote, in 10 ms blocks.
    assert abs(lost - world_blocks) <= 0.2 * world_blocks + 8, (lost, world_blocks)
    # The noise meter is ok, without errors, and its last message counts the lost audio: no more
    # than the node's final count, which went on after that message.
    state, errors, counted = node_message.decode(msgs[-1][1]).status["noise"]
    assert (state, errors) == (0, 0) and 0 < counted <= lost, (state, errors, counted, lost)
    assert int(re.search(r"tick_max_ms=(\d+)", out).group(1)) > 52


def test_selftest_judges_readings_by_the_registry_ranges(app, tmp_path, mosquitto, world):
    """The self-test's ranges are the registry's (sensor_specs/quantities.toml, generated into
    lib/ranges.py): a quiet night's 15 dB(A) is a level (LAeq from 0 dB), -45 °C is no air temperature."""
    from helpers import publish_all

    w = world.world("sk-1", chips=("bme280", "noise"))
    w.street.noise_level = lambda t: 15.0
    w.i2c.devices[0x76].env = lambda: (-45.0, 50.0, 1000.0)
    state = tmp_path / "node"
    simnode.write_config(state, simnode.node_config("sk-1", mosquitto.host, mosquitto.port, interval_s=0.2, cycles=40,
                                                    world=f"{world.host}:{world.port}", sensors=("bme280", "noise"),
                                                    ack="broker"))
    sub = Collector(mosquitto, "openpole/v1/sk-1/#")
    p = simnode.start(state, app, heap=HEAP, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        def levels(m):
            return [r.value for t, pl, _ in m if t.endswith("/data") for r in node_message.decode(pl).readings
                    if r.name == "laeq"]

        msgs = sub.wait_for(lambda m: levels(m), timeout=30)  # the noise meter has reported: a reading to judge
        assert levels(msgs) and levels(msgs)[0] < 20, levels(msgs)
        publish_all(mosquitto, [("openpole/v1/sk-1/cmd", b'{"cmd": "selftest"}')])
        msgs = sub.wait_for(lambda m: any(b'"selftest"' in pl for t, pl, _ in m if t.endswith("/diag")), timeout=20)
    finally:
        out, _ = p.communicate(timeout=60)
        sub.close()
    assert p.returncode == 0, out
    reply = next(json.loads(pl) for t, pl, _ in msgs if t.endswith("/diag") and b'"selftest"' in pl)
    assert reply["selftest"] == {"bme280": "implausible: temperature", "noise": "ok"}, reply


def test_the_tick_kinds_bits_are_the_same_in_every_module():
    """commands.KINDS names a tick's work by bit; node.py, diag.py and console.py set the bits as
    const()s of their own (a const is gone at run time, an imported name would be interned): they
    must agree."""
    import ast

    from openpole import paths

    def consts(path):
        out = {}
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call) and \
                    getattr(node.value.func, "id", "") == "const":
                out[node.targets[0].id] = node.value.args[0].value
        return out

    kinds = next(n.value for n in ast.parse((paths.FIRMWARE / "commands.py").read_text()).body
                 if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == "KINDS")
    kinds = [e.value for e in kinds.elts]
    node = consts(paths.FIRMWARE / "node.py")
    for name in ("node.py", "diag.py", "console.py"):
        for const, value in consts(paths.FIRMWARE / name).items():
            kind = const[1:].lower()
            if kind in kinds:
                assert value == 1 << kinds.index(kind), (name, const, value)
    assert {k for k in kinds if "_" + k.upper() in node} == set(kinds)  # node.py has a bit for each



DIAG_PIECES = """
import json
import diag

class O:
    def __init__(self, **kw):
        for k, v in kw.items():
            setattr(self, k, v)

class Outbox(O):
    def __len__(self):
        return 3

sent = []
class MQTT(O):
    def publish(self, topic, payload, qos=1, length=None):
        parts = []
        payload(parts.append)
        sent.append((topic, length, b"".join(parts)))
        return True

node = O(ota_rejected=0, cfg={"board": "esp32-devkitc", "broker": {"host": "h", "password": "s3cret"}}, node_id="n1", t0=0, boot=7,
         hw=O(reset_cause=lambda: "power_on", net_info=lambda: {"connected": True}), heap_min_free=1, short_of_heap=0,
         tick_max_ms=3, noise=O(lost=0), last_publish=None, published=1, delivered=1, resent=0, inflight=0,
         mqtt=MQTT(connected=True, errors=0, last_error=None, on_puback=None),
         outbox=Outbox(ram_records=3, flash_records=0, spilled=0, dropped=0), diag_topic="openpole/v1/n1/diag",
         sensors=[O(name="bme280", state=0, errors=0, last_error=None, last={"temperature": 21.5})])
paces = []
def pace(did=0):
    paces.append(did)
    node.tick_max_ms += 1  # what the ticks between the pieces change
    node.noise.lost += 1
node.pace = pace
diag.publish(node)
topic, length, body = sent[0]
print(json.dumps({"paces": len(paces), "kinds": sorted(set(paces)), "length": length, "got": len(body),
                  "report": json.loads(body)}))
"""


def test_a_diag_report_goes_out_a_piece_per_tick_the_bytes_sent_those_counted(mp):
    got = mp.json(DIAG_PIECES)
    # Counted, then written, some 160 bytes of it per loop tick (diag._TICK_BYTES), the audio read
    # between: never the whole report in one tick. Over the two passes (counted, written) at least a
    # tick per 160 bytes of the report: a field bigger than that (the app's update record) is one piece.
    assert got["paces"] >= got["length"] // 160 and got["paces"] >= 4, got
    assert got["kinds"] == [256]  # commands.KINDS: "diag"
    assert got["length"] == got["got"]  # the ticks between changed nothing the report says
    report = got["report"]
    assert report["tick_max_ms"] == 3 and report["audio_lost_blocks"] == 0  # as at the snapshot
    assert report["config"]["broker"]["password"] == "***" and report["sensors"]["bme280"]["state"] == "ok"


def test_each_tick_kind_s_longest_is_no_longer_than_the_longest_tick(app, tmp_path, mosquitto, world):
    """The node's own tick accounting (the bench's worst tick and what it did), on the x64 VM whose
    ticks do not fit 32 bits: every kind's longest tick is at most the longest of all, which is one of them or of none."""
    out = run_node(app, tmp_path / "node", mosquitto, cycles=30, world=world, sensors=("bme280", "noise"),
                   diag_interval_s=1)
    m = re.search(r"tick_us=(\d+) tick_what=(\S+) tick_kinds=(\S+)", out)
    worst, what = int(m.group(1)), m.group(2).split("+")
    kinds = {k: int(v) for k, v in (kv.split(":") for kv in m.group(3).split(","))}
    assert all(v <= worst for v in kinds.values()), (worst, kinds)
    # The longest may be a tick of none of the kinds ("-": the audio read and the checks alone, a
    # busy machine's pause in it); else it is its kinds' longest.
    assert what == ["-"] or all(kinds[k] == worst for k in what), (worst, what, kinds)
    assert all(kinds[k] > 0 for k in ("sample", "message", "gc", "send", "diag", "connect")), kinds
    assert 0 < worst < 1000000  # microseconds: a tick of a second would be a wrong clock, not a slow one
