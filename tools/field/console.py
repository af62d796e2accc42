"""Talk to a running node's serial console (firmware/lib/shell.py) without stopping its sampling.

The console prints `openpole> ` after each command's output; the node's own log lines may land
in between, so callers look for what they need (diag is the one line that starts with `{`).
"""

import json
import time

from ..errors import UserError
from . import ports

PROMPT = b"openpole> "
REPL = b">>> "
RAW_REPL = b"raw REPL; CTRL-B to exit"


class NodeConsole:
    def __init__(self, port, timeout=10.0):
        self.port = port
        self.timeout = timeout
        self.ser = ports.open_port(port, timeout=0.1)

    def close(self):
        self.ser.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _read_until(self, marker, timeout, stop=()):
        """Bytes up to and including `marker`; None at the timeout (or at any of `stop`)."""
        buf = bytearray()
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            chunk = self.ser.read(self.ser.in_waiting or 1)
            if chunk:
                buf += chunk
                if buf.endswith(marker):
                    return bytes(buf)
                for s in stop:
                    if s in buf:
                        self.last = bytes(buf)
                        return None
        self.last = bytes(buf)
        return None

    def attach(self, timeout=None):
        """Wake the console and wait for its prompt; one clear error when the app is not there."""
        timeout = self.timeout if timeout is None else timeout
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            self.ser.write(b"\r")
            got = self._read_until(PROMPT, min(2.0, max(0.1, end - time.monotonic())), stop=(REPL, RAW_REPL))
            if got is not None:
                break
            if RAW_REPL in self.last:
                self.ser.write(b"\r\x02")  # a deploy left it in the raw REPL: back to the friendly one
                continue
            if REPL in self.last:
                raise UserError(f"{self.port}: the node is at the MicroPython REPL, its app is not running: "
                                f"`openpole deploy --port {self.port}` installs it, or press the node's reset button")
        else:
            raise UserError(f"{self.port}: no answer from the node's console in {timeout:.0f} s: check the node is "
                            f"powered and this is its port (a node at 115200 baud)")
        # A prompt printed at boot may still be behind the one we asked for: drain it.
        time.sleep(0.2)
        self.ser.reset_input_buffer()
        return self

    def command(self, line, timeout=None):
        """Run one console command; its output (any log lines the node printed meanwhile included)."""
        self.ser.write(line.encode() + b"\r")
        got = self._read_until(PROMPT, self.timeout if timeout is None else timeout)
        if got is None:
            raise UserError(f"{self.port}: the node stopped answering during `{line.split()[0]}`: "
                            f"check its power and cable, then `openpole log --port {self.port}`")
        return got[: -len(PROMPT)].decode("utf-8", "replace").replace("\r\n", "\n")

    def diag(self):
        out = self.command("diag")
        for text in out.splitlines():
            if text.startswith("{"):
                try:
                    return json.loads(text)
                except ValueError:
                    break
        raise UserError(f"{self.port}: the node's diag answer was not readable: {out.strip()[:80]!r}")

    def monitor(self, duration=None, count=None, stop=None):
        """Yield (sensor, values) for each reading until the duration, the count or `stop` (an
        Event: Ctrl-C); the node's monitor is switched off on the way out."""
        self.ser.write(b"monitor\r")
        end = None if duration is None else time.monotonic() + duration
        n = 0
        buf = bytearray()
        try:
            while (end is None or time.monotonic() < end) and (count is None or n < count) and not (stop and stop.is_set()):
                chunk = self.ser.read(self.ser.in_waiting or 1)
                buf += chunk
                while b"\n" in buf:
                    raw, _, rest = buf.partition(b"\n")
                    buf = bytearray(rest)
                    text = raw.decode("utf-8", "replace").strip()
                    if text.startswith("reading "):
                        name, _, values = text[8:].partition(" ")
                        try:
                            yield name, json.loads(values)
                        except ValueError:
                            continue
                        n += 1
        finally:
            self.ser.write(b"\r")  # Enter stops the monitor
            self._read_until(PROMPT, 5.0)


def wait_for_diag(port, timeout=30.0):
    """The node's diag once its console answers (after a reset: a flash, a deploy); the last
    error when it has not answered within `timeout`."""
    end = time.monotonic() + timeout
    while True:
        try:
            with NodeConsole(port, timeout=min(10.0, timeout)) as c:
                return c.attach().diag()
        except UserError:
            if time.monotonic() > end:
                raise
            time.sleep(1.0)
