"""End-to-end acknowledgement: a node frees a message only when the pole's agent has it on disk.
Power cuts of the pole while real nodes publish: Mosquitto (with the stock 30-minute autosave) and
the agent SIGKILLed together, and every write of theirs not yet fsynced lost (their files sit on
tests/volatile_fs.py). Every reading a node took arrives exactly once. With the broker's PUBACK
alone, what Mosquitto held between saves would be lost with it."""

import os

import pytest
from powercut import soak
from volatile_fs import PowerCutFS, VolatileOps

NODES = ("pc-1", "pc-2")
CYCLES = 400  # at 0.2 s: 80 s of sampling, the cuts inside it
CUTS = 20


def test_the_layer_loses_unsynced_writes_and_keeps_synced_ones(tmp_path):
    ops = VolatileOps(tmp_path)
    for name in ("kept", "lost"):
        (tmp_path / name).write_bytes(b"old")
        ops.write("/" + name, b"new data, longer than the old" * 300, 0, None)
    ops.fsync("/kept", False, None)
    ops.truncate("/lost", 1)
    assert ops.read("/lost", 10, 0, None) == b"n"
    ops.cut()
    assert ops.read("/kept", 8, 0, None) == b"new data" and (tmp_path / "kept").stat().st_size == 29 * 300
    assert ops.read("/lost", 10, 0, None) == b"old" and ops.getattr("/lost")["st_size"] == 3
    assert ops.lost_bytes == 4096


@pytest.fixture
def powercut_fs(tmp_path):
    with PowerCutFS(tmp_path / "pole-disk") as fs:
        yield fs


def test_the_mounted_layer_loses_what_a_process_never_synced(powercut_fs):
    with open(powercut_fs.path / "synced", "wb") as f:
        f.write(b"kept")
        f.flush()
        os.fsync(f.fileno())
    (powercut_fs.path / "unsynced").write_bytes(b"x" * 10000)  # written and closed, never fsynced
    assert (powercut_fs.path / "unsynced").stat().st_size == 10000
    cuts, lost = powercut_fs.cut()
    assert (cuts, lost) == (1, 12288)
    assert (powercut_fs.path / "unsynced").read_bytes() == b""
    assert (powercut_fs.path / "synced").read_bytes() == b"kept"


def test_a_sites_secrets_and_inventory_survive_a_power_cut(powercut_fs):
    """The site's secrets are the only copy of its nodes' keys: once written, a power cut keeps them."""
    from openpole.field.site import Site

    site = Site(powercut_fs.path / "site")
    first = {n: site.node_secrets(n) for n in ("n1", "n2")}
    renewed = site.node_secrets("n1", renew=True)  # a file replaced, not only made
    agent = site.agent_secrets()
    for n, mac in (("n1", "24:0a:c4:00:00:01"), ("n2", "24:0a:c4:00:00:02")):
        site.record(node_id=n, mac=mac, board="esp32-devkitc", how="flash")
    cuts, lost = powercut_fs.cut()
    site = Site(powercut_fs.path / "site")
    assert site.node_secrets("n1") == renewed != first["n1"] and site.node_secrets("n2") == first["n2"]
    assert site.agent_secrets() == agent
    assert {n: r["mac"] for n, r in site.nodes().items()} == {"n1": "24:0a:c4:00:00:01", "n2": "24:0a:c4:00:00:02"}
    assert (cuts, lost) == (1, 0), "the site left writes unsynced"


def test_pole_power_cuts_lose_no_reading_and_store_none_twice(app, tmp_path, world):
    r = soak(app, world, tmp_path, nodes=len(NODES), cycles=CYCLES, cuts=CUTS)
    assert r["cuts"] == CUTS
    assert all(lost > 0 for lost in r["lost_each"]), "a cut found nothing unsynced: the layer is not in the way"
    assert r["unique"] == r["readings"], r  # every reading, once
    for out in r["node_outs"]:
        assert f"done cycles={CYCLES} published={CYCLES} delivered={CYCLES} queued=0 dropped=0" in out, out[-1500:]
