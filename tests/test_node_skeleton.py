"""The walking skeleton's first link: the firmware under MicroPython (heap capped at 64k, compiled
with mpy-cross) samples the simulated BME280 and publishes node messages v1 at QoS 1 to Mosquitto."""

import subprocess

from helpers import Collector

from openpole.edge_agent import decode
from openpole.sim import node as simnode


def run_node(app, state, broker, cycles, heap="64k", **cfg_kw):
    simnode.write_config(state, simnode.node_config("sk-1", broker.host, broker.port, interval_s=0.2, cycles=cycles, **cfg_kw))
    p = simnode.start(state, app, heap=heap, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out, _ = p.communicate(timeout=60)
    assert p.returncode == 0, out
    return out


def test_node_publishes_valid_v1_messages_in_order(app, tmp_path, mosquitto):
    sub = Collector(mosquitto)
    out = run_node(app, tmp_path / "node", mosquitto, cycles=5)
    msgs = sub.wait_for(lambda m: sum(t.endswith("/data") for t, _, _ in m) >= 5)
    sub.close()
    data = [decode.decode(p) for t, p, _ in msgs if t == "openpole/v1/sk-1/data"]
    assert [m.seq for m in data] == [0, 1, 2, 3, 4]
    assert {m.boot for m in data} == {1}
    for m in data:
        names = {r.name: r for r in m.readings}
        assert set(names) == {"temperature", "humidity", "pressure"}
        assert all(r.flags == 0 for r in m.readings)  # plausible, in range
        assert 0 <= names["temperature"].age_ms < 5000
        assert m.status == {"bme280": [0, 0]}
    assert ("openpole/v1/sk-1/status", b"online") in [(t, p) for t, p, _ in msgs]
    assert "done cycles=5 published=5 dropped=0" in out
    assert len(msgs[1][1]) < 80, "a BME280 message should stay small"


def test_boot_counter_persists_on_the_node_filesystem(app, tmp_path, mosquitto):
    state = tmp_path / "node"
    sub = Collector(mosquitto)
    run_node(app, state, mosquitto, cycles=1)
    run_node(app, state, mosquitto, cycles=1)
    msgs = sub.wait_for(lambda m: sum(t.endswith("/data") for t, _, _ in m) >= 2)
    sub.close()
    boots = [decode.decode(p).boot for t, p, _ in msgs if t.endswith("/data")]
    assert boots == [1, 2]
    assert (state / "boot_count").read_text() == "2"


def test_signed_messages_verify_at_the_agent_and_a_wrong_key_is_refused(app, tmp_path, mosquitto):
    key = "00112233445566778899aabbccddeeff"
    sub = Collector(mosquitto)
    run_node(app, tmp_path / "node", mosquitto, cycles=2, key=key)
    msgs = sub.wait_for(lambda m: sum(t.endswith("/data") for t, _, _ in m) >= 2)
    sub.close()
    payloads = [p for t, p, _ in msgs if t.endswith("/data")]
    assert [decode.decode(p, {"sk-1": bytes.fromhex(key)}).seq for p in payloads] == [0, 1]
    for keys, reason in (({"sk-1": b"\x00" * 16}, "bad_mac"), ({}, "unknown_node")):
        try:
            decode.decode(payloads[0], keys)
        except decode.Rejected as e:
            assert e.reason == reason
        else:
            raise AssertionError("a message with a wrong or unknown key was accepted")


def test_node_without_a_broker_keeps_its_messages_and_never_hangs(app, tmp_path):
    from openpole.sim.broker import free_port

    class Nowhere:
        host, port = "127.0.0.1", free_port()

    out = run_node(app, tmp_path / "node", Nowhere, cycles=4)
    assert "done cycles=4 published=0 dropped=0" in out


def test_secrets_never_reach_the_console(app, tmp_path, mosquitto):
    state = tmp_path / "node"
    cfg = simnode.node_config("sk-1", mosquitto.host, mosquitto.port, interval_s=0.2, cycles=2, key="c0ffee" * 5 + "00")
    cfg["wifi"] = {"ssid": "street", "password": "wifi-pass-123"}
    cfg["broker"]["password"] = "mqtt-pass-456"  # mosquitto here allows anonymous and ignores it
    cfg["broker"]["user"] = "sk-1"
    simnode.write_config(state, cfg)
    p = simnode.start(state, app, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out, _ = p.communicate(timeout=60)
    assert "done cycles=2" in out
    for secret in ("wifi-pass-123", "mqtt-pass-456", "c0ffee"):
        assert secret not in out


def test_corrupt_config_is_reported_in_one_line(app, tmp_path):
    state = tmp_path / "node"
    state.mkdir()
    (state / "config.json").write_text('{"node_id": "sk-1", "broker": ')
    p = simnode.start(state, app, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out, _ = p.communicate(timeout=30)
    assert p.returncode == 1
    assert out.strip().startswith("config: cannot use config.json") and len(out.strip().splitlines()) == 1


def test_redacted_config_hides_every_secret(mp):
    out = mp.json(
        "import json, config\n"
        "c = config.validate({'node_id': 'n1', 'key': 'abcd', 'wifi': {'ssid': 's', 'password': 'pw'},"
        " 'broker': {'host': 'h', 'port': 1, 'password': 'pw2'}})\n"
        "print(json.dumps(config.redacted(c)))\n"
    )
    assert out["key"] == "***" and out["wifi"] == {"ssid": "s", "password": "***"}
    assert out["broker"]["password"] == "***" and out["broker"]["host"] == "h"
