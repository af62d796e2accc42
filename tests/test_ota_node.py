"""App updates over the air, the node's side (docs/ota.md "On the node"): the real firmware under
MicroPython on a LittleFS partition in a file, real Mosquitto, a test publisher speaking the
agent's side of the contract through openpole.wire.ota."""

import json

import pytest
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
        print(board.output()[-4000:])
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
