"""Real nats-server processes with JetStream, clustered on loopback ports, for the city tests."""

import shutil
import signal
import subprocess
import time
import urllib.request

from openpole.sim.broker import free_port


def nats_server():
    path = shutil.which("nats-server") or ("/usr/sbin/nats-server" if shutil.os.path.exists("/usr/sbin/nats-server") else None)
    assert path, "nats-server is not installed: apt-get install -y nats-server (make test installs it as root)"
    return path


class NatsCluster:
    """n servers (one is a lone server), each with file storage under root; ready when every one
    answers /healthz (JetStream's meta group has a leader)."""

    def __init__(self, root, n=3, auth=""):
        self.root = root
        self.auth = auth  # e.g. 'authorization { user: u, password: p }\n'
        self.ports = [free_port() for _ in range(n)]
        self.routes = [free_port() for _ in range(n)]
        self.http = [free_port() for _ in range(n)]
        self.procs = [None] * n
        for i in range(n):
            self.start(i)
        self.wait_ready()

    @property
    def url(self):
        return ",".join(f"nats://127.0.0.1:{p}" for p in self.ports)

    def _conf(self, i):
        d = self.root / f"n{i}"
        d.mkdir(parents=True, exist_ok=True)
        cluster = ""
        if len(self.ports) > 1:
            routes = ", ".join(f"nats-route://127.0.0.1:{p}" for j, p in enumerate(self.routes) if j != i)
            cluster = f"cluster {{\n  name: openpole-test\n  listen: 127.0.0.1:{self.routes[i]}\n  routes: [{routes}]\n}}\n"
        conf = d / "nats.conf"
        conf.write_text(f'server_name: n{i}\nlisten: 127.0.0.1:{self.ports[i]}\nhttp: 127.0.0.1:{self.http[i]}\n'
                        f'jetstream {{\n  store_dir: "{d / "js"}"\n}}\n{cluster}{self.auth}')
        return conf

    def start(self, i):
        self.procs[i] = subprocess.Popen([nats_server(), "-c", str(self._conf(i))], stdout=subprocess.DEVNULL,
                                         stderr=subprocess.PIPE, text=True)

    def kill(self, i):
        self.procs[i].send_signal(signal.SIGKILL)
        self.procs[i].wait()

    def healthy(self, i):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http[i]}/healthz", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def wait_ready(self, timeout=60):
        deadline = time.monotonic() + timeout
        while not all(self.healthy(i) for i, p in enumerate(self.procs) if p and p.poll() is None):
            dead = [i for i, p in enumerate(self.procs) if p and p.poll() is not None]
            assert not dead, f"nats-server n{dead[0]} exited: {self.procs[dead[0]].stderr.read()[-1500:]}"
            assert time.monotonic() < deadline, "the NATS cluster did not become healthy"
            time.sleep(0.2)

    def stop(self):
        for p in self.procs:
            if p and p.poll() is None:
                p.terminate()
                p.wait(timeout=20)
