"""A private PostgreSQL server for the city tests: Debian's postgresql, its own data directory and
port on loopback, trust authentication, started and stopped by the test. As root it runs as the
postgres system user (PostgreSQL refuses root)."""

import glob
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from openpole.sim.broker import free_port


def pg_bin():
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    assert found, "PostgreSQL is not installed: apt-get install -y postgresql (make test installs it as root)"
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
        assert r.returncode == 0, r.stdout + r.stderr

    def stop(self):
        self._run([f"{pg_bin()}/pg_ctl", "-D", str(self.root / "data"), "-m", "fast", "-w", "stop"])
        shutil.rmtree(self.root, ignore_errors=True)
