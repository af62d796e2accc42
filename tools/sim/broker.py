"""Start a throwaway MQTT broker on a free loopback port: Mosquitto (what a pole runs) when it is
installed, else the pure-Python amqtt so a machine without root still runs the demo."""

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from ..errors import UserError


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mosquitto_path():
    return shutil.which("mosquitto") or next((p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if Path(p).exists()), None)


def wait_port(host, port, timeout_s, proc=None):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return True
        except OSError:
            time.sleep(0.05)
    return False


class Broker:
    """A broker process: .host, .port, .kind ('mosquitto' or 'amqtt'), stop()."""

    def __init__(self, workdir, port=None, kind=None, extra_conf="", persistent=False, autosave_s=1):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self.kind = kind or ("mosquitto" if mosquitto_path() else "amqtt")
        self.extra_conf = extra_conf
        self.persistent = persistent  # keep sessions and subscriptions across a restart, as a pole should
        self.autosave_s = autosave_s  # Mosquitto's default is 1800: what it holds between saves dies with it
        self.proc = None
        self.log = self.workdir / f"{self.kind}.log"

    def _mosquitto_cmd(self):
        exe = mosquitto_path()
        if exe is None:
            raise UserError("mosquitto is not installed: apt-get install -y mosquitto")
        conf = self.workdir / "mosquitto.conf"
        persistence = (f"persistence true\npersistence_location {self.workdir}/\nautosave_interval {self.autosave_s}\n"
                       if self.persistent else "persistence false\n")
        # Started as root, mosquitto drops to its own user and could not write to our directory.
        user = "user root\n" if os.geteuid() == 0 else ""
        conf.write_text(
            f"listener {self.port} {self.host}\n"
            "allow_anonymous true\n"
            f"{persistence}{user}"
            "set_tcp_nodelay true\n"  # QoS 1 round trips: 0.1 ms with it, 44-88 ms without
            "max_queued_messages 100000\n"
            # The agent acknowledges after a group commit: let the broker keep that many in flight.
            "max_inflight_messages 4096\n"
            f"{self.extra_conf}"
        )
        return [exe, "-c", str(conf)]

    def _amqtt_cmd(self):
        conf = self.workdir / "amqtt.yaml"
        conf.write_text(
            "listeners:\n  default:\n    type: tcp\n"
            f"    bind: {self.host}:{self.port}\n"
            "plugins:\n  amqtt.plugins.authentication.AnonymousAuthPlugin:\n    allow_anonymous: true\n"
        )
        exe = Path(sys.executable).parent / "amqtt"
        if not exe.exists():
            raise UserError("no MQTT broker: install mosquitto (apt-get install -y mosquitto) or run `make install`")
        return [str(exe), "-c", str(conf)]

    def start(self, timeout_s=10.0):
        cmd = self._mosquitto_cmd() if self.kind == "mosquitto" else self._amqtt_cmd()
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        if not wait_port(self.host, self.port, timeout_s, self.proc):
            self.stop()
            tail = self.log.read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
            raise UserError(f"{self.kind} did not start on {self.host}:{self.port}: {tail[0]}")
        return self

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def kill(self):
        """SIGKILL, as a power cut: nothing is saved on the way out."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
