"""`openpole sim demo --city`: the demo pole's upstream is a city's store, as docs/city.md sets one
up, all on loopback: a 1-server NATS JetStream, `openpole city init`, the pole at a made-up position
in Seoul through `openpole city poles import`, one `openpole city load`, `openpole city serve` (the
SensorThings API) and `openpole city feed` to a Mosquitto that anonymous clients may only read."""

import secrets
import subprocess
import sys
import time
from pathlib import Path

from ..errors import UserError
from .broker import Broker, free_port, mosquitto_path, wait_port

# Made-up positions in Seoul (around City Hall), one per demo pole.
SEOUL = [(37.5663, 126.9779, "Sejong-daero 110 (made up)", "openpole demo pole at a made-up position")]
OPENPOLE = [sys.executable, "-m", "openpole"]


class CityStore:
    """The demo table's view of the city's PostgreSQL: latest(), per_node(), stats()."""

    def __init__(self, dsn):
        self.dsn = dsn

    def latest(self):
        from ..city.query import latest

        return latest(self.dsn)

    def per_node(self):
        from ..city.db import connect

        with connect(self.dsn) as conn:
            return dict(conn.execute(
                "SELECT t.node, count(*) FROM samples s JOIN things t ON t.id = s.thing_id, "
                "unnest(coalesce(s.vals::float8[], s.vals8)) v WHERE v IS NOT NULL GROUP BY t.node").fetchall())

    def stats(self):
        from ..city.load import stats

        return stats(self.dsn)


class CityDemo:
    def __init__(self, state, pole_id):
        from ..city.services import NatsCluster, PgServer

        self.state = Path(state)
        self.procs, self.nats, self.pg, self.feed_broker = [], None, None, None
        self.key = secrets.token_bytes(32)  # the pole signs its batches; the loader takes only its
        try:
            self.nats = NatsCluster(self.state / "nats", 1)
            self.pg = PgServer()
            self._init(pole_id)
            self.store = CityStore(self.pg.dsn)
        except BaseException:
            self.stop()
            raise

    def _openpole(self, *args):
        r = subprocess.run(OPENPOLE + [str(a) for a in args], capture_output=True, text=True, timeout=120)
        if r.returncode:
            last = (r.stderr or r.stdout).strip().splitlines()[-1].removeprefix("openpole: ")
            raise UserError(f"the demo's city: openpole {' '.join(map(str, args[:2]))}: {last}")
        return r.stdout

    def _start(self, *args, stdout=subprocess.DEVNULL):
        """A city process; its stderr (logs, errors) into STATE/ACTION.log, read when it fails."""
        log = open(self.state / f"{args[1]}.log", "w")
        p = subprocess.Popen(OPENPOLE + [str(a) for a in args], stdout=stdout, stderr=log, text=True)
        log.close()
        self.procs.append(p)
        return p

    def _log(self, name):
        lines = (self.state / f"{name}.log").read_text(errors="replace").strip().splitlines()
        return lines[-1] if lines else "no output"

    def _init(self, pole_id):
        nats, dsn = self.nats.url, self.pg.dsn
        self._openpole("city", "init", "--nats", nats, "--db", dsn, "--replicas", 1, "--max-gb", 1)
        poles = self.state / "poles.csv"
        lat, lon, address, description = SEOUL[0]
        poles.write_text(f"pole,lat,lon,address,description\n{pole_id},{lat},{lon},{address},{description}\n")
        self._openpole("city", "poles", "import", "--db", dsn, poles)
        keys = self.state / "poles.toml"
        keys.write_text(f'{pole_id} = "{self.key.hex()}"\n')
        self._start("city", "load", "--nats", nats, "--db", dsn, "--keys", keys, "--quiet", "--aggregate-every", 5,
                    "--name", "demo-loader")
        reader = dsn.replace("postgresql://openpole@", "postgresql://openpole_reader@")
        port = free_port()
        self.url = f"http://127.0.0.1:{port}/v1.1"
        serve = self._start("city", "serve", "--db", reader, "--listen", f"127.0.0.1:{port}")
        if not wait_port("127.0.0.1", port, 30, serve):
            raise UserError(f"city serve did not start: {self._log('serve')}")
        # The public broker: anyone reads v1.1/#, only the feed writes it (docs/sensorthings.md).
        from ..field.pole import password_line

        password = secrets.token_urlsafe(12)
        (self.state / "feed.passwd").write_text(password_line("openpole-feed", password) + "\n")
        (self.state / "feed.acl").write_text("topic read v1.1/#\n\nuser openpole-feed\ntopic readwrite v1.1/#\n")
        (self.state / "feed.pw").write_text(password + "\n")
        (self.state / "feed.pw").chmod(0o600)
        if mosquitto_path() is None:
            raise UserError("the demo's city needs Mosquitto for its live feed: apt-get install -y mosquitto")
        self.feed_broker = Broker(self.state / "feed-broker", kind="mosquitto",
                                  extra_conf=f"password_file {self.state}/feed.passwd\nacl_file {self.state}/feed.acl\n")
        self.feed_broker.start()
        self.feed = f"mqtt://127.0.0.1:{self.feed_broker.port}"
        feed = self._start("city", "feed", "--db", reader, "--mqtt", f"127.0.0.1:{self.feed_broker.port}",
                           "--mqtt-user", "openpole-feed", "--mqtt-password-file", self.state / "feed.pw",
                           "--public-url", self.url[:-len("/v1.1")], stdout=subprocess.PIPE)
        if "publishing" not in feed.stdout.readline():
            raise UserError(f"city feed did not start: {self._log('feed')}")

    @property
    def nats_url(self):
        return self.nats.url

    def settle(self, want, timeout_s=30.0):
        """Wait until the store holds `want` readings (what the nodes published) or timeout_s passes."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if sum(self.store.per_node().values()) >= want:
                return
            time.sleep(0.3)

    def stop(self):
        for p in reversed(self.procs):
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        if self.feed_broker:
            self.feed_broker.stop()
        if self.pg:
            self.pg.stop()
        if self.nats:
            self.nats.stop()
