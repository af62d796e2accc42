"""A node's filesystem image (LittleFS, as MicroPython's ESP32 port mounts it) and the merged
flash image (MicroPython firmware + filesystem) that `openpole flash` writes and `openpole image
build` saves for flashing stations and web flashers.

The filesystem holds the app compiled with mpy-cross for the board's architecture, main.py (the
one source file: MicroPython boots main.py), and config.json with the node's credentials.
"""

import importlib.util
import json
from pathlib import Path

from littlefs import LittleFS, UserContext

from .. import paths
from ..errors import UserError

BLOCK = 4096  # an ESP32 flash sector; MicroPython's block device uses it as the LittleFS block
# MicroPython's VfsLfs2 defaults (readsize, progsize, lookahead): the same cache geometry, so files
# written here read back on the node. Disk version 2.0: every MicroPython with LittleFS v2 mounts it.
LFS = dict(read_size=32, prog_size=32, lookahead_size=32, name_max=255, disk_version=0x00020000)


def specs():
    """The repository's specs, loaded once per process (the registry's cache)."""
    from ..spec.registry import REGISTRY

    try:
        return REGISTRY.specs
    except RuntimeError as e:
        raise UserError(str(e)) from None


def board_info(board_id, s=None):
    """(board table, chip table) for a board id, or one clear error listing the known boards."""
    s = s or specs()
    board = s.boards.get(board_id)
    if board is None:
        raise UserError(f"--board {board_id}: unknown board (known: {', '.join(sorted(s.boards))})")
    return board, s.chips[board["chip"]]


def _node_config_module():
    # The node's own validator (firmware/config.py), run here so a bad config never reaches a node.
    spec = importlib.util.spec_from_file_location("openpole_node_config", paths.FIRMWARE / "config.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def node_config(node_id, board_id, base=None, secrets=None):
    """config.json for one node: the site's settings (`base`, from --config), its id and board, and
    its credentials (broker user and password, key). Validated by the node's own rules."""
    cfg = json.loads(json.dumps(base or {}))
    cfg["node_id"] = node_id
    cfg["board"] = board_id
    if secrets:
        b = cfg.setdefault("broker", {})
        b.setdefault("host", "192.168.4.1")
        b["user"] = secrets["broker_user"]
        b["password"] = secrets["broker_password"]
        cfg["key"] = secrets["key"]
    mod = _node_config_module()
    try:
        return mod.validate(cfg, boards=specs().boards)
    except mod.ConfigError as e:
        raise UserError(f"node config: {e}") from None


def with_site_files(files, config, site):
    """The app's files plus what the node's config needs from the site: the CA certificate
    (ca.der) when it talks TLS to its broker."""
    if (config.get("broker") or {}).get("tls"):
        from .tls import NODE_CA_FILE

        return dict(files, **{NODE_CA_FILE: site.node_ca()})
    return files


def build_fs(board, files, config):
    """The filesystem image (bytes, the board's whole fs partition) holding `files` and config.json."""
    count = board["fs_size"] // BLOCK
    fs = LittleFS(block_size=BLOCK, block_count=count, **LFS)
    for path, data in sorted(files.items()):
        parent = str(Path(path).parent)
        if parent != ".":
            fs.makedirs(parent, exist_ok=True)
        with fs.open(path, "wb") as f:
            f.write(data)
    with fs.open("config.json", "w") as f:
        f.write(json.dumps(config))
    return bytes(fs.context.buffer)


def read_fs(image, block_count=None):
    """Mount a filesystem image with littlefs-python: {path: bytes} of every file."""
    count = block_count or len(image) // BLOCK
    ctx = UserContext(buffer=bytearray(image))
    # mount=False, then mount(): with mount=True littlefs-python formats an image it cannot mount.
    fs = LittleFS(context=ctx, block_size=BLOCK, block_count=count, mount=False, **LFS)
    try:
        fs.mount()
    except Exception as e:  # littlefs reports a bad image as LittleFSError
        raise UserError(f"the filesystem image does not mount: {e}") from None
    out = {}
    for root, _dirs, names in fs.walk("/"):
        for name in names:
            p = f"{root.rstrip('/')}/{name}".lstrip("/")
            with fs.open(p, "rb") as f:
                out[p] = f.read()
    return out


def verify_fs(image, files, config):
    """Mount the image and check every file reads back as written."""
    got = read_fs(image)
    want = dict(files, **{"config.json": json.dumps(config).encode()})
    bad = sorted(p for p in want if got.get(p) != want[p])
    if bad:
        raise UserError(f"the filesystem image does not read back: {bad[0]} differs ({len(bad)} file(s))")
    return len(got)


def check_firmware(path, chip_id):
    """The MicroPython firmware file: there, an ESP image, built for this chip. Returns its bytes."""
    from esptool.bin_image import LoadFirmwareImage

    p = Path(path)
    if not p.is_file():
        raise UserError(f"--firmware {path}: no such file: download the board's MicroPython .bin "
                        f"from micropython.org/download")
    data = p.read_bytes()
    if not data or data[0] != 0xE9:
        raise UserError(f"--firmware {path}: not an ESP firmware image (no 0xE9 header): "
                        f"use the .bin from micropython.org/download, not a .uf2, .elf or .zip")
    from esptool.targets import CHIP_DEFS

    # The extended header's chip id (bytes 12-13): a firmware for another chip will not boot.
    want = CHIP_DEFS[chip_id].IMAGE_CHIP_ID
    got = int.from_bytes(data[12:14], "little") if len(data) >= 24 else None
    if got is not None and got != want:
        other = next((c.CHIP_NAME for c in CHIP_DEFS.values() if getattr(c, "IMAGE_CHIP_ID", None) == got), f"chip id {got}")
        raise UserError(f"--firmware {path}: built for the {other}, this board is an {CHIP_DEFS[chip_id].CHIP_NAME}: "
                        f"download the .bin for the board's chip")
    try:
        LoadFirmwareImage(chip_id, data)
    except Exception as e:  # esptool's FatalError, or a struct error on a truncated file
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"--firmware {path}: not a firmware image for the {chip_id.upper()}: {msg}") from None
    return data


def firmware_offset(chip_id):
    from esptool.targets import CHIP_DEFS

    return CHIP_DEFS[chip_id].BOOTLOADER_FLASH_OFFSET


def merge(board, chip_id, firmware, fs_image):
    """One binary from flash address 0: firmware at the chip's bootloader offset, then the fs."""
    off = firmware_offset(chip_id)
    if off + len(firmware) > board["fs_offset"]:
        raise UserError(f"the firmware ({len(firmware)} bytes from 0x{off:x}) runs into the filesystem at "
                        f"0x{board['fs_offset']:x}: is it the .bin for {board['micropython_board']}?")
    out = bytearray(b"\xff" * (board["fs_offset"] + len(fs_image)))
    out[off: off + len(firmware)] = firmware
    out[board["fs_offset"]:] = fs_image
    return bytes(out)


def app_for(chip, sim=False):
    """The app files for a chip's architecture, as they go on the node's filesystem. sim: for the
    simulator (`sim node --image`, a virtual board): the Unix port's architecture, simulated hardware."""
    from . import appbuild

    app = appbuild.build_app(arch="x64" if sim else chip["mpy_arch"], include_sim=sim)
    return appbuild.app_files(app), f"{app_version()}+{app.name}"


def app_version():
    """The firmware's VERSION (firmware/node.py): with the build hash, what the inventory records."""
    import re

    m = re.search(r'^VERSION = "([^"]+)"', (paths.FIRMWARE / "node.py").read_text(), re.M)
    return m.group(1) if m else "unknown"
