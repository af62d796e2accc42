"""`openpole flash`: a blank ESP32 to a working, registered node, with one command.

esptool's Python API (v5): detect the chip, check it against the board definition (chip, flash
size), read the MAC, write the MicroPython firmware and the node's filesystem image in one pass,
reset. Then wait for the node's console, run `diag`, print a verdict and append the inventory row.
"""

import threading
from dataclasses import dataclass

from ..errors import UserError
from .. import diagnosis as report
from . import image, ports
from .console import wait_for_diag


class _Log:
    """esptool's logger, quiet, with its progress sent to the calling thread's callback (one
    esptool per port, each in its own thread). Made a TemplateLogger subclass at first use."""

    local = threading.local()

    def print(self, *args, **kwargs):
        pass

    def note(self, message):
        pass

    def warning(self, message):
        pass

    def error(self, message):
        pass

    def stage(self, finish=False):
        pass

    def progress_bar(self, cur_iter, total_iters, prefix="", suffix="", bar_length=30):
        cb = getattr(self.local, "progress", None)
        if cb:
            cb(cur_iter, total_iters)

    def set_verbosity(self, verbosity):
        pass


_installed = False
_install_lock = threading.Lock()


def _quiet_esptool():
    global _installed
    with _install_lock:  # a flashing station's threads all arrive here at once
        if not _installed:
            from esptool.logger import TemplateLogger, log

            logger = type("OpenpoleEsptoolLog", (_Log, TemplateLogger), {})()
            log.set_logger(logger)
            _installed = True
    return _Log.local


def flash_size_mb(text):
    """esptool's flash size text ('4MB', '16MB', '512KB') -> MB, or None."""
    if not text:
        return None
    t = text.strip().upper()
    if t.endswith("MB"):
        return int(t[:-2])
    if t.endswith("KB"):
        return int(t[:-2]) / 1024
    return None


def check_device(board, chip, chip_name, flash_text):
    """The connected chip (esptool's CHIP_NAME) and flash size (esptool's text) against the board
    definition: one error a technician can act on."""
    if chip_name != chip["esptool_name"]:
        raise UserError(f"wrong chip for board {board['id']}: the node has an {chip_name}, the board is an "
                        f"{chip['esptool_name']}: pick the right --board (docs/specs lists the boards)")
    mb = flash_size_mb(flash_text)
    if mb is None:
        raise UserError("the flash chip did not report its size: check the module is genuine and its "
                        "power is steady, then retry")
    if mb != board["flash_mb"]:
        raise UserError(f"flash size mismatch: the node has {flash_text} of flash, board {board['id']} has "
                        f"{board['flash_mb']} MB: pick the right --board, or this is a different module")


@dataclass
class FlashResult:
    port: str
    node_id: str
    mac: str = ""
    chip: str = ""
    verdict: str = ""
    ok: bool = False


def _connect(port, baud, attempts):
    from esptool.cmds import detect_chip

    # A pty (QEMU, a simulator) has no DTR/RTS to pulse the chip into its bootloader.
    mode = "no-reset" if ports.is_pty(port) else "default-reset"
    try:
        return detect_chip(port, baud, connect_mode=mode, connect_attempts=attempts)
    except Exception as e:  # esptool's FatalError, pyserial's SerialException
        text = str(e)
        if "Failed to connect" in text or "No serial data" in text or "Invalid head of packet" in text:
            raise UserError(f"{port}: no ESP chip answering: hold the node's BOOT button, press EN (reset), "
                            f"release BOOT, and run again; or check the cable carries data") from None
        raise ports.explain(port, e) from None


def flash(port, board_id, node_id, firmware_path, site, base_config=None, baud=460800, progress=None,
          attempts=3, console_timeout=30.0, new_secrets=False, sim=False):
    """Flash one node; returns a FlashResult (raises UserError with the reason when it fails).
    sim: the port is a virtual board (`openpole sim board`), which runs the simulator's app."""
    local = _quiet_esptool()
    local.progress = progress
    board, chip = image.board_info(board_id)
    chip_id = board["chip"]
    firmware = image.check_firmware(firmware_path, chip_id)
    ports.check_free(port)
    res = FlashResult(port, node_id)
    esp = _connect(port, baud, attempts)
    try:
        from esptool.cmds import attach_flash, detect_flash_size, reset_chip, run_stub, write_flash

        if esp.CHIP_NAME != chip["esptool_name"]:
            check_device(board, chip, esp.CHIP_NAME, None)  # the wrong chip: before anything is uploaded
        res.chip = esp.get_chip_description()
        mac = esp.read_mac()
        res.mac = ":".join(f"{b:02x}" for b in mac)
        res.node_id = node_id = node_id.replace("{mac}", "".join(f"{b:02x}" for b in mac[-3:]))
        esp = run_stub(esp)  # esptool's flasher stub: faster writes, flash size detection
        attach_flash(esp)
        check_device(board, chip, esp.CHIP_NAME, detect_flash_size(esp))
        files, app_build = image.app_for(chip, sim=sim)
        secrets = site.node_secrets(node_id, renew=new_secrets)
        cfg = image.node_config(node_id, board_id, base_config, secrets)
        files = image.with_site_files(files, cfg, site)
        fs = image.build_fs(board, files, cfg)
        image.verify_fs(fs, files, cfg)
        write_flash(esp, [(image.firmware_offset(chip_id), firmware), (board["fs_offset"], fs)])
        reset_chip(esp, "hard-reset")
    except UserError:
        raise
    except Exception as e:
        raise UserError(f"{port}: flashing failed: {str(e).splitlines()[0] if str(e) else type(e).__name__}: "
                        f"check the cable and power, then run again") from None
    finally:
        esp._port.close()
    site.record(node_id=node_id, mac=res.mac, board=board_id, chip=res.chip, firmware=firmware_path.name,
                app=app_build, how="flash")
    res.verdict, res.ok = verify_console(port, node_id, console_timeout)
    return res


def verify_console(port, node_id, timeout=30.0):
    """After flashing: the node boots, its console answers, its diag names it. (verdict, ok)."""
    try:
        d = wait_for_diag(port, timeout)
    except UserError as e:
        return f"flashed, but the node's console is not answering: {e}", False
    if d.get("node") != node_id:
        return f"flashed, but the node calls itself {d.get('node')!r}, not {node_id!r}: its config did not load", False
    return report.verdict(d), True
