"""`openpole deploy`: update a node's app files over the raw REPL, then restart the app.

The raw REPL is driven through mpremote's SerialTransport (pinned in pyproject.toml); the file
protocol on top is ours: one round trip lists every app file's SHA-256 on the node, only changed
files travel (base64 in 3 KB chunks, written to a temporary name and renamed, so a file is never
half new), a second round trip checks what arrived. Stale compiled files, and sources that would
shadow a compiled module, are removed; the config, the queue and boot.py are never touched.
"""

import hashlib
import time
from base64 import b64encode
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from ..errors import UserError
from . import ports

CHUNK = 3072  # bytes per exec: 4 KB of base64, small enough for a busy node's heap

# Runs once on the node: free the stopped app's modules, define the helpers, list the files.
PREP = """import sys
for _k in list(sys.modules):
    del sys.modules[_k]
import gc, os, hashlib, binascii
gc.collect()
_a = binascii.a2b_base64
def _walk(d):
    for e in (os.ilistdir(d) if d else os.ilistdir()):
        p = d + "/" + e[0] if d else e[0]
        if e[1] == 0x4000:
            _walk(p)
        elif p.endswith(".py") or p.endswith(".mpy"):
            h = hashlib.sha256()
            b = bytearray(512)
            with open(p, "rb") as f:
                while True:
                    n = f.readinto(b)
                    if not n:
                        break
                    h.update(b if n == 512 else b[:n])
            print("H", p, binascii.hexlify(h.digest()).decode())
def _mkdirs(p):
    d = ""
    for part in p.split("/")[:-1]:
        d = d + "/" + part if d else part
        try:
            os.mkdir(d)
        except OSError:
            pass
"""


@dataclass
class Result:
    port: str
    sent: list = field(default_factory=list)
    skipped: int = 0
    removed: list = field(default_factory=list)
    bytes_sent: int = 0
    wire_bytes: int = 0  # what crossed the serial line for the files (base64 and commands)
    seconds: float = 0.0
    node: str | None = None


def _transport(port):
    # mpremote's Python API is not a stable interface: pinned in pyproject.toml.
    from mpremote.transport import TransportError
    from mpremote.transport_serial import SerialTransport

    ports.check_free(port)
    try:
        t = SerialTransport(port, baudrate=ports.BAUD)
    except TransportError:
        raise UserError(f"{port}: cannot open the port for the raw REPL") from None
    try:
        # Ctrl-C stops the app (the node keeps nothing half done: its queue is on flash or in RAM
        # to be sent after the restart), Ctrl-A enters the raw REPL. No soft reset: that would
        # start the app again.
        t.enter_raw_repl(soft_reset=False)
    except TransportError:
        t.close()
        raise UserError(f"{port}: the node did not enter the raw REPL: check this is a MicroPython node, "
                        f"then press its reset button and try again") from None
    return t


def _exec(t, port, code, timeout=30):
    from mpremote.transport import TransportError

    try:
        out, err = t.exec_raw(code, timeout=timeout)
    except TransportError as e:
        raise UserError(f"{port}: the node stopped answering during the update ({e}): run deploy again; "
                        f"unchanged files are skipped") from None
    if err:
        last = err.decode("utf-8", "replace").strip().splitlines()[-1:] or ["?"]
        raise UserError(f"{port}: the node refused an update step: {last[0]}")
    return out.decode("utf-8", "replace")


def _hashes(text):
    out = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == "H":
            out[parts[1]] = parts[2]
    return out


def plan(files, on_node):
    """(to send, to remove): files whose hash differs or is missing; compiled files the new app
    does not have, and sources that would shadow one of its compiled modules."""
    want = {p: hashlib.sha256(b).hexdigest() for p, b in files.items()}
    send = [p for p in files if on_node.get(p) != want[p]]
    mpy = {str(PurePosixPath(p).with_suffix("")) for p in files if p.endswith(".mpy")}
    remove = sorted(p for p in on_node if p not in files and (
        p.endswith(".mpy") or (p.endswith(".py") and str(PurePosixPath(p).with_suffix("")) in mpy)))
    return send, remove


def deploy(port, files, progress=None, restart=True):
    """Put `files` ({path: bytes}) on the node at `port`; returns a Result."""
    res = Result(port)
    t0 = time.monotonic()
    t = _transport(port)
    try:
        on_node = _hashes(_exec(t, port, PREP + "_walk('')\n", timeout=120))
        send, remove = plan(files, on_node)
        res.skipped = len(files) - len(send)
        res.removed = remove
        total = sum(len(files[p]) for p in send) or 1
        if progress:
            progress(0, total)
        for p in remove:
            _exec(t, port, f"os.remove({p!r})")
        for p in send:
            data = files[p]
            tmp = p + ".new"
            head = f"_mkdirs({p!r})\nf=open({tmp!r},'wb')\n"
            i = 0
            while True:
                chunk = data[i: i + CHUNK]
                i += len(chunk)
                code = head + (f"f.write(_a({b64encode(chunk)!r}))\n" if chunk else "")
                if i >= len(data):
                    code += f"f.close()\nos.rename({tmp!r},{p!r})\n"
                res.wire_bytes += len(code) + 8
                _exec(t, port, code)
                res.bytes_sent += len(chunk)
                if progress:
                    progress(res.bytes_sent, total)
                head = ""
                if i >= len(data):
                    break
            res.sent.append(p)
        if send:
            got = _hashes(_exec(t, port, "_walk('')\n", timeout=120))
            bad = [p for p in send if got.get(p) != hashlib.sha256(files[p]).hexdigest()]
            if bad:
                raise UserError(f"{port}: {len(bad)} file(s) arrived damaged ({bad[0]}, ...): run deploy again")
        if restart:
            t.exit_raw_repl()
            t.serial.write(b"\x04")  # Ctrl-D at the REPL: a soft reset, which runs main.py
    finally:
        t.close()
    res.seconds = time.monotonic() - t0
    return res
