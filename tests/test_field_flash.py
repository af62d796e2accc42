"""Flash images and the flasher, up to the serial boundary: the filesystem image mounted with
littlefs-python and booted by the Unix port (VfsLfs2 on a block device in RAM), merged images
with a firmware made by esptool itself, and esptool's own errors against ptys that are not an ESP."""

import csv
import json
import os
import stat
import subprocess
import sys

import pytest
from helpers import Collector

from openpole.errors import UserError
from openpole.field import flash as fflash
from openpole.field import image


def openpole(*args, timeout=120, **kw):
    return subprocess.run([sys.executable, "-m", "openpole", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, **kw)


def esp_image(path, chip):
    """A valid ESP app image for `chip`, written by esptool's own image writer."""
    from esptool.bin_image import ELFSection
    from esptool.targets import CHIP_DEFS

    img = CHIP_DEFS[chip].BOOTLOADER_IMAGE()
    img.entrypoint = 0x40080000
    img.segments = [ELFSection(b".iram0.text", 0x40080000, os.urandom(4096), 0)]
    img.save(str(path))
    return path


@pytest.fixture
def firmware(tmp_path):
    return esp_image(tmp_path / "ESP32_GENERIC.bin", "esp32")


def test_image_build_makes_a_verified_merged_image_and_records_the_node(tmp_path, firmware):
    (tmp_path / "node.toml").write_text('interval_s = 30\n[wifi]\nssid = "pole-17"\npassword = "wifi-secret"\n'
                                        '[broker]\nhost = "192.168.4.1"\n[sensors.bme280]\n[sensors.pms5003]\n')
    site = tmp_path / "site"
    out = tmp_path / "n1.bin"
    r = openpole("image", "build", "--board", "esp32-devkitc", "--node-id", "n1", "--firmware", firmware,
                 "--config", tmp_path / "node.toml", "--site", site, "--out", out)
    assert r.returncode == 0, r.stderr
    assert "mounted and checked" in r.stdout and "wifi-secret" not in r.stdout
    data = out.read_bytes()
    board, chip = image.board_info("esp32-devkitc")
    assert len(data) == board["fs_offset"] + board["fs_size"]
    fw = firmware.read_bytes()
    assert data[0x1000: 0x1000 + len(fw)] == fw and data[:0x1000] == b"\xff" * 0x1000
    files = image.read_fs(data[board["fs_offset"]:])
    cfg = json.loads(files["config.json"])
    secrets = json.loads((site / "secrets" / "n1.json").read_text())
    assert cfg["node_id"] == "n1" and cfg["wifi"]["password"] == "wifi-secret" and cfg["interval_s"] == 30
    assert cfg["broker"]["user"] == "n1" and cfg["broker"]["password"] == secrets["broker_password"]
    assert cfg["key"] == secrets["key"] and len(bytes.fromhex(cfg["key"])) == 32
    assert "main.py" in files and "app.mpy" in files and "lib/noise.mpy" in files
    assert not any(p.startswith(("hw/sim", "hw/fake")) for p in files), "simulator code in a board image"
    assert files["lib/noise.mpy"][2] >> 2 == 10  # the .mpy header's arch: MP_NATIVE_ARCH_XTENSAWIN (viper code)
    assert stat.S_IMODE(os.stat(site / "secrets" / "n1.json").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(site / "secrets").st_mode) == 0o700
    rows = list(csv.DictReader(open(site / "inventory.csv")))
    assert rows[-1]["node_id"] == "n1" and rows[-1]["board"] == "esp32-devkitc" and rows[-1]["how"] == "image"
    assert rows[-1]["app"].startswith(image.app_version() + "+") and rows[-1]["firmware"] == "ESP32_GENERIC.bin"
    assert secrets["broker_password"] not in (site / "inventory.csv").read_text()

    # Rebuilt under the same id: the same credentials (the pole keeps trusting the node).
    assert openpole("image", "build", "--board", "esp32-devkitc", "--node-id", "n1", "--site", site,
                    "--out", tmp_path / "again.bin").returncode == 0
    again = json.loads(image.read_fs((tmp_path / "again.bin").read_bytes())["config.json"])
    assert again["key"] == cfg["key"]


def test_an_image_boots_under_micropython_from_littlefs(tmp_path, mosquitto, firmware):
    """The image's filesystem, mounted by the Unix port's VfsLfs2, runs the node: it publishes."""
    (tmp_path / "node.toml").write_text(f'interval_s = 0.5\n[broker]\nhost = "{mosquitto.host}"\nport = {mosquitto.port}\n'
                                        '[sensors.bme280]\n[sensors.noise]\n')
    out = tmp_path / "sim.bin"
    r = openpole("image", "build", "--board", "esp32-devkitc", "--node-id", "img-1", "--firmware", firmware,
                 "--config", tmp_path / "node.toml", "--site", tmp_path / "site", "--out", out, "--sim")
    assert r.returncode == 0, r.stderr
    sub = Collector(mosquitto, "openpole/v1/img-1/#")
    node = subprocess.Popen([sys.executable, "-m", "openpole", "sim", "node", "--image", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        msgs = sub.wait_for(lambda m: sum(t.endswith("/data") for t, _, _ in m) >= 3, timeout=40)
    finally:
        node.terminate()
        log = node.communicate(timeout=10)[0]
        sub.close()
    assert sum(t.endswith("/data") for t, _, _ in msgs) >= 3, log[-2000:]
    diag = next(json.loads(p) for t, p, _ in msgs if t.endswith("/diag"))
    assert diag["node"] == "img-1" and diag["boot"] >= 1 and diag["config"]["broker"]["password"] == "***"


def test_firmware_checks_come_before_any_serial_work(tmp_path, firmware):
    site = tmp_path / "site"
    base = ["flash", "--port", "/dev/null", "--board", "esp32-devkitc", "--node-id", "n1", "--site", site]
    r = openpole(*base, "--firmware", tmp_path / "missing.bin")
    assert r.returncode == 2 and "no such file: download the board's MicroPython .bin" in r.stderr
    (tmp_path / "fw.uf2").write_bytes(b"UF2\n" + os.urandom(1000))
    r = openpole(*base, "--firmware", tmp_path / "fw.uf2")
    assert r.returncode == 2 and "not an ESP firmware image" in r.stderr
    r = openpole(*base, "--firmware", esp_image(tmp_path / "s3.bin", "esp32s3"))
    assert r.returncode == 2 and "built for the ESP32-S3, this board is an ESP32" in r.stderr
    trunc = tmp_path / "trunc.bin"
    trunc.write_bytes(firmware.read_bytes()[:30])
    r = openpole(*base, "--firmware", trunc)
    assert r.returncode == 2 and "not a firmware image for the ESP32" in r.stderr and "Traceback" not in r.stderr
    r = openpole(*base[:4], "esp32-nope", *base[5:], "--firmware", firmware)
    assert r.returncode == 2 and "unknown board (known: esp32-devkitc" in r.stderr
    assert not site.exists(), "nothing recorded for a flash that never started"


def test_esptool_meets_a_port_that_is_not_an_esp(tmp_path, firmware):
    """esptool's own connection attempt against a silent pty, and against a running MicroPython
    node's console (which answers, but not in the ROM loader's protocol)."""
    master, slave = os.openpty()
    try:
        port = os.ttyname(slave)
        r = openpole("flash", "--port", port, "--board", "esp32-devkitc", "--node-id", "n1", "--firmware", firmware,
                     "--site", tmp_path / "site")
        assert r.returncode == 2, r.stdout
        assert r.stderr.strip() == (f"openpole: {port}: no ESP chip answering: hold the node's BOOT button, press EN "
                                    f"(reset), release BOOT, and run again; or check the cable carries data")
        assert not (tmp_path / "site" / "inventory.csv").exists()
        # After a flash, a node that never answers on its console gets a verdict, not a hang.
        verdict, ok = fflash.verify_console(port, "n1", timeout=2)
        assert not ok and verdict.startswith("flashed, but the node's console is not answering")
    finally:
        os.close(master)
        os.close(slave)


def test_esptool_against_a_micropython_console(tmp_path, firmware, mosquitto):
    node = subprocess.Popen([sys.executable, "-m", "openpole", "sim", "node", "--serial-pty", "--broker",
                             f"{mosquitto.host}:{mosquitto.port}", "--node-id", "live-1", "--state", str(tmp_path / "n")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        port = node.stdout.readline().strip()
        r = openpole("flash", "--port", port, "--board", "esp32-devkitc", "--node-id", "n1", "--firmware", firmware,
                     "--site", tmp_path / "site")
        assert r.returncode == 2 and "no ESP chip answering" in r.stderr, r.stderr
        # The node shrugged off the flasher's sync bytes: its console still answers.
        r = openpole("diag", "--port", port, "--json")
        assert r.returncode == 0 and json.loads(r.stdout)["node"] == "live-1", r.stderr
    finally:
        node.terminate()
        node.wait(timeout=10)


@pytest.mark.parametrize("chip_name, flash, error", [
    ("ESP32", "4MB", None),
    ("ESP32-S3", "4MB", "wrong chip for board esp32-devkitc: the node has an ESP32-S3, the board is an ESP32"),
    ("ESP32", "8MB", "flash size mismatch: the node has 8MB of flash, board esp32-devkitc has 4 MB"),
    ("ESP32", None, "the flash chip did not report its size"),
])
def test_the_connected_chip_is_checked_against_the_board(chip_name, flash, error):
    board, chip = image.board_info("esp32-devkitc")
    if error is None:
        fflash.check_device(board, chip, chip_name, flash)
    else:
        with pytest.raises(UserError, match=error):
            fflash.check_device(board, chip, chip_name, flash)


def test_a_damaged_filesystem_image_is_refused_not_mounted_blindly():
    board, chip = image.board_info("esp32-devkitc")
    cfg = image.node_config("n1", "esp32-devkitc")
    fs = bytearray(image.build_fs(board, {"main.py": b"import app\n"}, cfg))
    assert image.verify_fs(bytes(fs), {"main.py": b"import app\n"}, cfg) == 2
    fs[: 2 * image.BLOCK] = b"\x00" * (2 * image.BLOCK)  # both superblock copies gone
    with pytest.raises(UserError, match="does not mount"):
        image.read_fs(bytes(fs))
    with pytest.raises(UserError, match="node config: node_id"):
        image.node_config("Bad Id!", "esp32-devkitc")
