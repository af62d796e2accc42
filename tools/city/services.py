"""Throwaway city services on loopback, for `openpole sim demo --city`, the tests and the benches:
a PostgreSQL server (Debian's postgresql: its own data directory and port, trust authentication;
as root it runs as the postgres system user, since PostgreSQL refuses root) and nats-server
processes with JetStream (Debian's nats-server), clustered when more than one."""

import glob
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

from ..errors import UserError
from ..sim.broker import free_port


def pg_bin():
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        raise UserError("PostgreSQL is not installed: apt-get install -y postgresql (make test installs it as root)")
    return os.path.dirname(found[-1])


class PgServer:
    def __init__(self):
        # Its own directory under /tmp: pytest's are root's alone, and postgres must reach this one.
        self.root = root = Path(tempfile.mkdtemp(prefix="openpole-pg-"))
        self.port = free_port()
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self.as_user:
            shutil.chown(root, "postgres")
        b = pg_bin()
        self._run([f"{b}/initdb", "-D", str(root / "data"), "-A", "trust", "-U", "openpole", "-E", "UTF8"])
        self._ctl("start")

    def _ctl(self, action, *extra):
        root = self.root
        self._run([f"{pg_bin()}/pg_ctl", "-D", str(root / "data"), "-l", str(root / "log"), "-w", *extra, "-o",
                   f"-p {self.port} -k {root} -c listen_addresses=127.0.0.1", action])

    def restart(self):
        """A fast restart: every client's connection is cut, as in a failover or an upgrade."""
        self._ctl("restart", "-m", "fast")

    @property
    def dsn(self):
        return f"postgresql://openpole@127.0.0.1:{self.port}/postgres"

    def _run(self, cmd):
        r = subprocess.run(self.as_user + cmd, capture_output=True, text=True, timeout=120)
        if r.returncode:
            tail = (r.stdout + r.stderr).strip().splitlines()[-1:] or ["no output"]
            raise UserError(f"PostgreSQL: {os.path.basename(cmd[0])} failed: {tail[0]}")

    def stop(self):
        self._run([f"{pg_bin()}/pg_ctl", "-D", str(self.root / "data"), "-m", "fast", "-w", "stop"])
        shutil.rmtree(self.root, ignore_errors=True)


def nats_server():
    path = shutil.which("nats-server") or ("/usr/sbin/nats-server" if os.path.exists("/usr/sbin/nats-server") else None)
    if not path:
        raise UserError("nats-server is not installed: apt-get install -y nats-server (make test installs it as root)")
    return path


class NatsCluster:
    """n servers (one is a lone server), each with file storage under root; ready when every one
    answers /healthz (JetStream's meta group has a leader)."""

    def __init__(self, root, n=3, auth="", max_store="1T"):
        self.root = root
        self.auth = auth  # e.g. 'authorization { user: u, password: p }\n'
        # JetStream's own default, 75 % of the disk free at start, refuses city init's 50 GiB stream on
        # a machine with less than 67 GiB free; these servers' streams hold megabytes.
        self.max_store = max_store
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
                        f'jetstream {{\n  store_dir: "{d / "js"}"\n  max_file_store: {self.max_store}\n}}\n{cluster}{self.auth}')
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
            if dead:
                raise UserError(f"nats-server n{dead[0]} exited: {self.procs[dead[0]].stderr.read()[-1500:]}")
            if time.monotonic() > deadline:
                raise UserError(f"the NATS servers did not become healthy within {timeout:g} s")
            time.sleep(0.2)

    def stop(self):
        for p in self.procs:
            if p and p.poll() is None:
                p.terminate()
                p.wait(timeout=20)
