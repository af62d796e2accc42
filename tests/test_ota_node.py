"""App updates over the air, the node's side (docs/ota.md "On the node"): the real firmware under
MicroPython on a LittleFS partition in a file, real Mosquitto, a test publisher speaking the
agent's side of the contract through openpole.wire.ota."""

import json

import pytest
from helpers import wait
from ota_node import KEY, Board, Bundle, Publisher, app_with

from openpole.wire import ota

NODE = "ota-1"


@pytest.fixture
def rig(app, tmp_path, mosquitto, world):
    made = []

    def make(files=None, **kw):
        board = Board(tmp_path / f"board{len(made)}", app, mosquitto, world, node_id=NODE, files=files, **kw)
        pub = Publisher(mosquitto, NODE)
        made.append((board, pub))
        return board, pub

    yield make
    for board, pub in made:
        board.stop()
        print(board.output()[-4000:])  # shown when the test fails
        pub.close()


def new_app(app, tmp_path, **kw):
    return app_with(app, tmp_path / "newapp", **kw)


def live_version(files):
    node = files["node.mpy"]
    return "0.3.0" if b"0.3.0" in node else "0.2.0" if b"0.2.0" in node else "?"


def test_an_app_update_stages_swaps_and_confirms(app, tmp_path, rig):
    board, pub = rig()
    bundle = Bundle(new_app(app, tmp_path))
    pub.bundle, pub.job = bundle, 11
    board.boot()
    pub.wait_online()
    pub.send(bundle.ticket(NODE, 11, 1))
    r = pub.wait_state("confirmed", job=11, timeout=120)
    assert r["app"] == "0.3.0" and r["prev"] == "0.2.0"
    states = [s for j, s in pub.states() if j == 11]
    assert states[0] == "transferring" and "staged" in states and "trial" in states
    board.stop()
    files = board.files()
    assert live_version(files) == "0.3.0"
    assert "ota/old/node.mpy" in files and b"0.2.0" in files["ota/old/node.mpy"]
    assert "ota/journal" not in files
    assert json.loads(files["ota/last"])["state"] == "confirmed"


def refused(pub, job):
    r = pub.wait_state("refused", job=job, timeout=30)
    assert "transferring" not in [s for j, s in pub.states() if j == job] or r
    return r["reason"]


def test_bad_tickets_and_manifests_are_refused_before_anything_changes(app, tmp_path, rig):
    board, pub = rig()
    files = new_app(app, tmp_path)
    bundle = Bundle(files)
    pub.bundle = bundle
    board.boot()
    pub.wait_online()
    # The ticket's own checks, in the contract's order.
    pub.job = 1
    pub.send(bundle.ticket(NODE, 1, 5, key=bytes(32)))
    assert refused(pub, 1).startswith("bad_mac:")
    pub.send(b"\x01\xd1\x84garbage")
    pub.send(bundle.ticket("ota-2", 2, 5))
    assert refused(pub, 2).startswith("wrong_node:")
    pub.send(bundle.ticket(NODE, 3, 5, kind="firmware"))
    assert refused(pub, 3) == ota.NO_OTA_PARTITIONS
    pub.send(bundle.ticket(NODE, 4, 6, mp_range=("1.20", "1.22")))
    assert refused(pub, 4).startswith("micropython: this node runs 1.")
    # The manifest's: fetched, then checked against the ticket and the node.
    pub.job = 5
    pub.send(bundle.ticket(NODE, 5, 7, manifest=bundle.manifest.replace(b"kind app", b"kind APP")))
    assert refused(pub, 5) == "manifest_sha256: manifest.txt does not match the ticket"
    other = Bundle(files, mpy=1234)
    pub.bundle, pub.job = other, 6
    pub.send(other.ticket(NODE, 6, 8))
    assert refused(pub, 6).startswith("mpy: the bundle's .mpy files need 1234")
    other = Bundle(files, board="olimex-esp32-poe")
    pub.bundle, pub.job = other, 7
    pub.send(other.ticket(NODE, 7, 9))
    assert refused(pub, 7) == "board: the bundle is for olimex-esp32-poe, this node is esp32-devkitc"
    big = Bundle(dict(files, **{"lib/big.mpy": bytes(1_800_000)}))
    pub.bundle, pub.job = big, 8
    pub.send(big.ticket(NODE, 8, 10))
    assert refused(pub, 8).startswith("no_space: the job needs ")
    # A replay of an accepted sequence number.
    pub.job = 9
    pub.send(bundle.ticket(NODE, 9, 10))
    assert refused(pub, 9) == "old_sequence: 10 is not above 10"
    assert not [r for r in pub.requests if r[1] > 0], "no file of a refused job was asked for"
    board.stop()
    live = board.files()
    assert live_version(live) == "0.2.0"
    assert not [p for p in live if p.startswith("ota/new/")] and "ota/journal" not in live
    assert live["ota/seq"] == b"10"


def serve_until(pub, board, state="confirmed", job=1, timeout=120):
    return pub.wait_state(state, job=job, timeout=timeout)


@pytest.mark.parametrize("breakage, cause", [
    ("raise RuntimeError('broken at import')\n", "import: RuntimeError: broken at import"),
    ("import hw.sim\nhw.sim.board_reset()\n", "boot_loop"),
    ("Node.flush = lambda self: None\n", "no_confirm_in_6s"),
], ids=["import-error", "reset-loop", "never-connects"])
def test_a_bad_app_rolls_back_and_the_old_one_reports_why(app, tmp_path, rig, breakage, cause):
    board, pub = rig()
    bundle = Bundle(new_app(app, tmp_path, node_edit=lambda src: src + "\n" + breakage))
    pub.bundle, pub.job = bundle, 21
    board.boot()
    pub.wait_online()
    pub.send(bundle.ticket(NODE, 21, 1, trial_s=6))
    r = pub.wait_state("rolled_back", job=21, timeout=120)
    assert r["reason"] == cause and r["app"] == "0.2.0"
    assert "confirmed" not in [s for j, s in pub.states() if j == 21]
    board.wait_output("firmware 0.2.0 on sim", timeout=30)
    board.stop()
    live = board.files()
    assert live_version(live) == "0.2.0" and "ota/journal" not in live
    assert json.loads(live["ota/last"])["reason"] == cause


def test_a_watchdog_reset_on_trial_rolls_back(app, tmp_path, rig):
    board, pub = rig()
    bundle = Bundle(new_app(app, tmp_path, node_edit=lambda src: src + "\nNode.flush = lambda self: None\n"))
    pub.bundle, pub.job = bundle, 31
    board.boot()
    pub.wait_online()
    pub.send(bundle.ticket(NODE, 31, 1, trial_s=600))
    board.wait_output("firmware 0.3.0 on sim", timeout=90)
    board.cut()  # the new app hangs: the watchdog resets the chip (this machine has no watchdog)
    board.boot("watchdog")
    r = pub.wait_state("rolled_back", job=31, timeout=60)
    assert r["reason"] == "watchdog"


def code_files(files):
    return {p: d for p, d in files.items() if (p.endswith(".mpy") or p.endswith(".py")) and not p.startswith("ota/")
            and p not in ("main.py", "otaboot.mpy")}


def test_power_cuts_and_lost_links_during_the_transfer_resume_from_flash(app, tmp_path, rig):
    import time

    board, pub = rig()
    files = new_app(app, tmp_path)
    bundle = Bundle(files)
    pub.bundle, pub.job = bundle, 41
    board.boot()
    pub.wait_online()
    pub.send(bundle.ticket(NODE, 41, 1))
    resumed = []
    for i, at in enumerate((15, 60, 110)):  # requests served before the power goes
        while len(pub.requests) < at:
            time.sleep(0.02)
        board.cut()
        before = pub.requests[-1]
        pub.serving = i != 1  # the agent down (or the link) while the node boots again
        n = len(pub.requests)
        board.boot()
        while len(pub.requests) <= n:
            time.sleep(0.02)
        first = pub.requests[n]
        resumed.append((before, first))
        if not pub.serving:
            time.sleep(4)  # unanswered: asked again after 3 s
            assert pub.requests[-1][1:3] == first[1:3], "the same request again"
            pub.serving = True
    n = len(pub.requests)
    pub.send(bundle.ticket(NODE, 41, 2))  # the agent sends it again, a new sequence number: the job goes on
    pub.drop, pub.corrupt = 3, 3  # lost replies and bad CRCs: asked again, dropped and counted
    r = pub.wait_state("confirmed", job=41, timeout=180)
    assert r["app"] == "0.3.0"
    assert (0, 0) not in [(q[1], q[2]) for q in pub.requests[n:]], "a ticket sent again restarted the job"
    k = len(pub.reports)
    pub.send(bundle.ticket(NODE, 41, 3))  # and again after it is done: its outcome again
    assert wait(lambda: len(pub.reports) > k, 30) and pub.reports[k]["state"] == "confirmed"
    for before, first in resumed:
        # Resumed where the flash says: in the object of the cut (a piece not yet committed is
        # asked for again) or the next one (the cut came after its last piece), never from the start.
        assert first[1:3] <= (before[1] + 1, 0) and first[1] >= before[1] and first[1:3] != (0, 0), (before, first)
    board.stop()
    live = board.files()
    assert code_files(live) == files


def test_a_power_cut_at_any_point_of_the_swap_ends_in_the_old_app_or_the_new_one(app, tmp_path, rig):
    import shutil

    board, pub = rig()
    old = code_files(board.files())
    files = new_app(app, tmp_path)
    bundle = Bundle(files)
    pub.bundle, pub.job = bundle, 51
    board.auto_reset = False
    board.boot()
    pub.wait_online()
    pub.send(bundle.ticket(NODE, 51, 1))
    board.wait_output("committed: reset into 0.3.0", timeout=120)
    board.wait_output("[exit -10]", timeout=10)  # the reset: the journal written, nothing swapped yet
    committed = tmp_path / "committed.img"
    shutil.copyfile(board.flash, committed)
    assert code_files(board.files()) == old
    outcomes = []
    for cut in (1, 2, 4, 8, 13, 21, 34, 55, 89, 144):
        shutil.copyfile(committed, board.flash)
        board.out.clear()
        board.boot("hard", cut_at=cut)
        board.proc.wait(timeout=60)
        board.out.clear()
        board.boot()  # power on again: main.py's recovery finishes what the cut left
        board.wait_output("openpole node ota-1: firmware", timeout=60)
        board.cut()
        got = board.files()
        live = code_files(got)
        if live == files:
            assert got["ota/journal"].startswith(b"trial 51 "), cut
            assert all(old[p[8:]] == d for p, d in got.items() if p.startswith("ota/old/")), cut
            outcomes.append("new")
        else:
            assert live == old, f"cut before flash operation {cut}: neither the old app nor the new one"
            assert json.loads(got["ota/last"])["reason"].startswith("swap: "), cut
            outcomes.append("old")
    assert "new" in outcomes
