"""The technician's whole flow on virtual boards (`openpole sim board`: esptool's ROM protocol on an
RFC 2217 endpoint, a flash file, the node it boots): `openpole flash` end to end on a flashing
station of two boards, then the console tools, a power cycle, and each fault a technician meets
ending in its one-line message."""

import csv
import json
import subprocess
import sys
import time

import pytest
from helpers import Collector

from openpole.sim.board import stand_in_firmware


def openpole(*args, timeout=180):
    return subprocess.run([sys.executable, "-m", "openpole", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


class VirtualBoard:
    def __init__(self, flash, *options):
        self.flash = flash
        self.proc = subprocess.Popen([sys.executable, "-m", "openpole", "sim", "board", "--flash", str(flash), *options],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.url = self.proc.stdout.readline().strip()
        assert self.url.startswith("rfc2217://127.0.0.1:"), self.url + self.proc.stdout.read()

    def close(self):
        if self.proc.poll() is None:
            self.proc.terminate()
        self.proc.wait(timeout=20)


@pytest.fixture
def boards(tmp_path):
    made = []

    def board(name="b1", *options):
        made.append(VirtualBoard(tmp_path / f"{name}.bin", *options))
        return made[-1]

    yield board
    for b in made:
        b.close()


@pytest.fixture
def kit(tmp_path, mosquitto):
    """What a technician carries: the firmware, the site's node settings, the site directory."""
    fw = stand_in_firmware(tmp_path / "ESP32_GENERIC.bin")
    cfg = tmp_path / "node.toml"
    cfg.write_text(f'interval_s = 0.5\n[broker]\nhost = "{mosquitto.host}"\nport = {mosquitto.port}\n'
                   '[sensors.bme280]\n[sensors.noise]\n')
    return ["--board", "esp32-devkitc", "--firmware", fw, "--config", cfg, "--site", tmp_path / "site", "--sim"]


def test_a_flashing_station_of_virtual_boards_end_to_end(boards, kit, mosquitto, tmp_path):
    b1, b2 = boards("b1"), boards("b2")
    r = openpole("diag", "--port", b1.url)  # a new board: its flash is erased
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr

    sub = Collector(mosquitto, "openpole/v1/+/data")
    r = openpole("flash", "--port", b1.url, "--port", b2.url, "--node-id", "st-{n}", *kit)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "flash: 2 of 2 ok" in r.stdout, r.stdout
    rows = list(csv.DictReader(open(tmp_path / "site" / "inventory.csv")))
    assert {row["node_id"] for row in rows} == {"st-1", "st-2"} and all(row["how"] == "flash" for row in rows)
    assert all(row["chip"] == "ESP32-D0WD-V3 (revision v3.0)" and row["mac"].startswith("24:0a:c4:") for row in rows)
    assert len({row["mac"] for row in rows}) == 2 and all((tmp_path / "site" / "secrets" / f"st-{n}.json").exists()
                                                          for n in (1, 2))
    msgs = sub.wait_for(lambda m: {t for t, _, _ in m} >= {"openpole/v1/st-1/data", "openpole/v1/st-2/data"}, timeout=60)
    assert {t for t, _, _ in msgs} >= {"openpole/v1/st-1/data", "openpole/v1/st-2/data"}
    sub.close()

    # The console tools over the same endpoint, while the node samples.
    d = json.loads(openpole("diag", "--port", b1.url, "--json").stdout)
    assert d["node"] == "st-1" and d["sensors"]["bme280"]["state"] == "ok"
    assert openpole("config", "get", "interval_s", "--port", b1.url).stdout.strip() == "0.5"
    r = openpole("log", "--port", b1.url)
    assert r.returncode == 0 and "openpole node st-1" in r.stdout, r.stdout + r.stderr
    r = openpole("monitor", "--port", b1.url, "--count", "2")
    assert r.returncode == 0 and "temperature" in r.stdout, r.stdout + r.stderr
    r = openpole("selftest", "--port", b1.url)
    assert r.returncode == 0 and "selftest: PASS" in r.stdout, r.stdout + r.stderr
    r = openpole("deploy", "--port", b1.url, "--sim")
    assert r.returncode == 0 and "0 file(s) sent" in r.stdout and "restarted: node st-1" in r.stdout, r.stdout + r.stderr

    # A power cycle: the flash keeps the node, which boots again with the next boot id.
    b1.close()
    again = VirtualBoard(b1.flash)
    try:
        d2 = json.loads(openpole("diag", "--port", again.url, "--json").stdout)
        assert d2["node"] == "st-1" and d2["boot"] > d["boot"]
    finally:
        again.close()


@pytest.mark.parametrize("options, message", [
    (("--no-auto-reset",), "hold the node's BOOT button"),
    (("--chip", "esp32s3"), "wrong chip for board esp32-devkitc: the node has an ESP32-S3"),
    (("--flash-mb", "2"), "flash size mismatch: the node has 2MB of flash"),
    (("--fail-write-at", "0x210000"), "flashing failed: Failed to write compressed data to flash"),
], ids=["not-in-bootloader", "wrong-chip", "small-flash", "write-fails"])
def test_each_flashing_fault_ends_in_its_one_line_message(boards, kit, tmp_path, options, message):
    b = boards("f", *options)
    r = openpole("flash", "--port", b.url, "--node-id", "f-1", *kit)
    assert r.returncode != 0 and message in r.stderr + r.stdout, r.stdout + r.stderr
    assert "Traceback" not in r.stderr
    written = (tmp_path / "site" / "inventory.csv").exists() and "f-1" in (tmp_path / "site" / "inventory.csv").read_text()
    assert not written, "a node that was not flashed must not be in the inventory"


def test_a_node_that_never_answers_and_a_board_with_no_filesystem(boards, kit, tmp_path):
    mute = boards("m", "--mute")
    t0 = time.monotonic()
    r = openpole("flash", "--port", mute.url, "--node-id", "m-1", *kit)
    assert r.returncode == 1 and "flashed, but the node's console is not answering" in r.stdout + r.stderr, r.stdout
    assert time.monotonic() - t0 < 120
    # The firmware alone: MicroPython formats the empty partition and waits at its REPL.
    blank = boards("e")
    r = subprocess.run([sys.executable, "-m", "esptool", "--port", blank.url, "write-flash", "0x1000", kit[3]],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    r = openpole("diag", "--port", blank.url)
    assert r.returncode == 2 and "the node is at the MicroPython REPL, its app is not running" in r.stderr, r.stderr
