"""Serial ports as a technician meets them: several at once, busy, not permitted, not there.

Every failure becomes one line that says what to do; nothing here prints a traceback.
"""

import errno
import glob
import os
import stat

import serial

from ..errors import UserError

BAUD = 115200


def candidates():
    """USB serial devices present, as [(device, "VID:PID", description)], sorted: what a node's
    USB-UART bridge (CP2102, CH340, FTDI) or an ESP32-S3's own USB shows up as."""
    from serial.tools import list_ports

    return sorted((p.device, f"{p.vid:04x}:{p.pid:04x}", p.description or p.product or "")
                  for p in list_ports.comports() if p.vid is not None)


def expand(patterns):
    """--port values (repeated, or globs like /dev/ttyUSB*) -> a sorted list of distinct ports.
    None: the one USB serial device present, as esptool and mpremote take it."""
    if not patterns:
        found = candidates()
        if len(found) == 1:
            return [found[0][0]]
        if found:
            raise UserError(f"{len(found)} USB serial devices present ({', '.join(d for d, _, _ in found)}): "
                            f"say which with --port (`openpole ports` lists them)")
        raise UserError("no --port given and no USB serial device present: plug the node in, or give --port "
                        "(e.g. /dev/ttyUSB0, or rfc2217://HOST:PORT for `openpole sim board`)")
    out = []
    for pat in patterns or ():
        found = sorted(glob.glob(pat)) if glob.has_magic(pat) else [pat]
        if not found:
            raise UserError(f"--port {pat}: no port matches: plug the node in, then `ls /dev/ttyUSB* /dev/ttyACM*`")
        out += [p for p in found if p not in out]
    if not out:
        raise UserError("no --port given: e.g. --port /dev/ttyUSB0 (repeat it, or use a glob, for several nodes)")
    return out


def explain(port, exc):
    """A one-line UserError for a serial exception (pyserial's or an OSError)."""
    err = getattr(exc, "errno", None)
    text = str(exc)
    if err == errno.ENOENT or "No such file" in text:
        return UserError(f"{port}: no such port: is the node plugged in? (`ls /dev/ttyUSB* /dev/ttyACM*` lists ports)")
    if err == errno.EACCES or "Permission denied" in text:
        return UserError(f"{port}: permission denied: add yourself to the dialout group "
                         f"(sudo usermod -aG dialout $USER), then log out and back in")
    if err in (errno.EBUSY, errno.EAGAIN) or "exclusively lock" in text or "busy" in text.lower():
        return UserError(f"{port}: port busy: another program has it open (a serial monitor, "
                         f"another openpole command, ModemManager); close it and try again")
    return UserError(f"{port}: cannot open the port: {text.splitlines()[0] if text else type(exc).__name__}")


def is_pty(port):
    """A pseudo-terminal (Unix98 ptys are major 136-143): no modem lines to reset a chip with."""
    try:
        st = os.stat(port)
    except OSError:
        return False
    return stat.S_ISCHR(st.st_mode) and 136 <= os.major(st.st_rdev) <= 143


def open_port(port, timeout=1.0):
    """Open a node's serial port exclusively (two programs talking to one node garble both)."""
    if not os.path.exists(port) and "://" not in port:
        raise explain(port, FileNotFoundError(errno.ENOENT, "No such file", port))
    try:
        if "://" in port:  # rfc2217://, socket://: a remote or virtual board (`openpole sim board`)
            url = port
            if url.startswith("rfc2217://") and "timeout=" not in url:
                # pyserial gives the RFC 2217 negotiation 3 s: a board behind a busy link or host needs more
                url += ("&" if "?" in url else "?") + "timeout=10"
            return serial.serial_for_url(url, BAUD, timeout=timeout)
        return serial.Serial(port, BAUD, timeout=timeout, exclusive=True)
    except (serial.SerialException, OSError) as e:
        raise explain(port, e) from None


def check_free(port):
    """Raise the one-line error if `port` cannot be opened right now; else leave it closed."""
    open_port(port, timeout=0.1).close()
