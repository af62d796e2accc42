"""openpole conformance: our firmware conforms, and every kind of mutation of a valid capture is
caught by the check it breaks (and only that one)."""

import subprocess
import sys

import cbor2
import pytest

import cose
import message
from openpole import conformance
from openpole.sim import node as simnode

NODE = "box-1"
KEY = bytes(range(16))
T0 = 1_700_000_000 * 10**9


def msg(seq, boot=1, values=None, age=0, extra=None):
    m = {0: 1, 1: NODE, 2: boot, 3: seq, 4: [[age, values or {1: 20.5, 2: 40.0, 3: 1010.0}]], 5: {"bme280": [0, 0]}}
    m.update(extra or {})
    return cbor2.dumps(m)


def capture(payloads=None, every_s=1.0, status=b"online"):
    payloads = payloads or [msg(s) for s in range(10)]
    recs = [(T0, f"openpole/v1/{NODE}/status", status, True)] if status is not None else []
    recs += [(T0 + int(i * every_s * 1e9), f"openpole/v1/{NODE}/data", p, False) for i, p in enumerate(payloads)]
    return recs


def test_a_valid_capture_conforms():
    r = conformance.check(capture(), NODE, interval_s=1.0)
    assert r.passed and r.results["cadence"] and r.results["sequence"], r.text()


def with_one(bad, at=5):
    payloads = [msg(s) for s in range(10)]
    payloads[at] = bad
    return capture(payloads)


MUTATIONS = {
    # What breaks the schema breaks it for both judges: openpole's decoder and zcbor on the CDDL.
    "truncated CBOR": (lambda: with_one(msg(5)[:-3]), ("schema", "cddl")),
    "a value of the wrong type": (lambda: with_one(msg(5, values={1: "20.5"})), ("schema", "cddl")),
    "an unknown field": (lambda: with_one(msg(5, extra={9: 1})), ("schema", "cddl")),
    "a sensor state the CDDL does not have": (lambda: with_one(msg(5, extra={5: {"bme280": [7, 0]}})), ("schema", "cddl")),
    "a sensor name longer than 16": (lambda: with_one(msg(5, extra={5: {"b" * 17: [0, 0]}})), ("schema", "cddl")),
    "a quantity key past 65535": (lambda: with_one(msg(5, values={70000: 1.0})), ("cddl", "ranges")),
    "an unknown quantity key": (lambda: with_one(msg(5, values={99: 1.0})), "ranges"),
    "a value outside the registry range": (lambda: with_one(msg(5, values={1: 120.0})), "ranges"),
    "NaN": (lambda: with_one(msg(5, values={1: float("nan")})), "ranges"),
    "seq going back": (lambda: with_one(msg(2)), "sequence"),
    "boot going back": (lambda: capture([msg(s, boot=2) for s in range(5)] + [msg(s, boot=1) for s in range(5, 10)]), "sequence"),
    "an impossible age": (lambda: with_one(msg(5, age=30 * 86400 * 1000)), "ages"),
    "a cadence unlike the declared one": (lambda: capture(every_s=2.5), "cadence"),
    "no status topic": (lambda: capture(status=None), "status"),
    "a status that is not online/offline": (lambda: capture(status=b"up"), "status"),
}


@pytest.mark.parametrize("name", MUTATIONS)
def test_each_mutation_is_caught_by_its_check(name):
    records, expected = MUTATIONS[name]
    expected = expected if isinstance(expected, tuple) else (expected,)
    r = conformance.check(records(), NODE, interval_s=1.0)
    assert not r.passed
    failed = [c for c, v in r.results.items() if v is False]
    assert failed == list(expected), (name, r.text())
    assert all(r.first[c]["why"] for c in expected)


def test_the_mac_is_checked_when_a_key_is_declared():
    signed = [cose.sign(msg(s), KEY) for s in range(10)]
    assert conformance.check(capture(signed), NODE, 1.0, KEY).passed
    tampered = list(signed)
    tampered[3] = cose.sign(msg(3), b"\x00" * 16)
    r = conformance.check(capture(tampered), NODE, 1.0, KEY)
    assert [c for c, v in r.results.items() if v is False] == ["mac"]
    r = conformance.check(capture(), NODE, 1.0, KEY)  # unsigned while a key is declared
    assert r.results["mac"] is False


def test_the_report_shows_the_offending_message_in_diagnostic_notation():
    r = conformance.check(with_one(msg(5, values={1: 120.0})), NODE, 1.0)
    assert r.first["ranges"]["message"].startswith('{0: 1, 1: "box-1", 2: 1, 3: 5, 4: [[0, {1: 120.0')
    assert conformance.diagnostic(cbor2.CBORTag(17, [b"\xa1", float("inf"), None, True])) == "17([h'a1', Infinity, null, true])"


def test_our_firmware_conforms_live(app, mosquitto, world, tmp_path):
    checker = subprocess.Popen([sys.executable, "-m", "openpole", "conformance", "--broker", f"{mosquitto.host}:{mosquitto.port}",
                                "--node-id", "sim-c", "--duration", "8", "--interval", "0.5"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert checker.stdout.readline().startswith("listening to openpole/v1/sim-c/#")  # subscribed: the node may start
    state = tmp_path / "node"
    simnode.write_config(state, simnode.node_config("sim-c", mosquitto.host, mosquitto.port, interval_s=0.5, cycles=10,
                                                    world=f"{world.host}:{world.port}"))
    node = simnode.start(state, app, heap="128k", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert node.wait(timeout=60) == 0
    out, _ = checker.communicate(timeout=60)
    assert checker.returncode == 0, out
    assert "CONFORMS" in out and "PASS  cddl" in out  # zcbor took every message the firmware sent


def test_capture_then_check_from_the_file(tmp_path):
    path = tmp_path / "box.capture"
    conformance.save(capture(), path)
    r = subprocess.run([sys.executable, "-m", "openpole", "conformance", "--capture", str(path), "--node-id", NODE,
                        "--interval", "1", "--json"], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert '"pass": true' in r.stdout
    path.write_text("garbage\n")
    r = subprocess.run([sys.executable, "-m", "openpole", "conformance", "--capture", str(path), "--node-id", NODE],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "not a capture line" in r.stderr
