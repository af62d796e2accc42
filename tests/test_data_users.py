"""docs/data-users.md's examples, run as they are written against a live city: the database loaded
through the real loader (tests/sta_fixture.py), `openpole city serve`, `openpole city feed` to a
Mosquitto that anonymous clients may only read, and a day published by `openpole city publish`.
Only the addresses change (the page's data.example.city becomes this test's loopback ports), so
the page cannot drift from what openpole serves."""

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sta_fixture as fx
from pgcluster import PgServer
from test_sta import serve

from openpole.sim.broker import Broker

PAGE = Path(__file__).resolve().parent.parent / "docs" / "data-users.md"


def blocks():
    return re.findall(r"```python\n(.*?)```", PAGE.read_text(), re.S)


@pytest.fixture(scope="module")
def city(tmp_path_factory):
    from openpole.field.pole import password_line

    root = tmp_path_factory.mktemp("city")
    pg = PgServer()
    procs, broker = [], None
    try:
        fx.build(pg.dsn)
        p, base = serve(fx.reader_dsn(pg.dsn), "--rate", "0")
        procs.append(p)
        (root / "passwd").write_text(password_line("openpole-feed", "feed-pw") + "\n")
        (root / "acl").write_text("topic read v1.1/#\n\nuser openpole-feed\ntopic readwrite v1.1/#\n")
        (root / "pw").write_text("feed-pw\n")
        broker = Broker(root / "mq", kind="mosquitto",
                        extra_conf=f"password_file {root}/passwd\nacl_file {root}/acl\n").start()
        feed = subprocess.Popen([sys.executable, "-m", "openpole", "city", "feed", "--db", fx.reader_dsn(pg.dsn),
                                 "--mqtt", f"127.0.0.1:{broker.port}", "--mqtt-user", "openpole-feed",
                                 "--mqtt-password-file", root / "pw", "--public-url", base[:-len("/v1.1")]],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        procs.append(feed)
        assert "publishing" in feed.stdout.readline(), feed.stderr.read()
        day = root / "2026-09-21"
        r = subprocess.run([sys.executable, "-m", "openpole", "city", "publish", "--day", "2026-09-21", "--out", day,
                            "--db", fx.reader_dsn(pg.dsn)], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        yield {"pg": pg, "base": base, "mqtt": broker.port, "day": day}
    finally:
        for p in procs:
            p.terminate()
            p.wait(10)
        if broker:
            broker.stop()
        pg.stop()


def localised(code, city):
    """The page's addresses and day -> this test's."""
    return (code.replace("https://data.example.city/sta", city["base"][:-len("/v1.1")])
            .replace('"data.example.city", 1883', f'"127.0.0.1", {city["mqtt"]}')
            .replace("2026-11-30/", f"{city['day']}/")
            .replace("2026-11-30T00:00:00Z", "2026-09-21T00:00:00Z").replace("2026-12-01T00:00:00Z", "2026-09-22T00:00:00Z"))


def run(code, city, timeout=120):
    r = subprocess.run([sys.executable, "-c", localised(code, city)], capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def test_the_page_has_the_examples_this_test_runs():
    found = blocks()
    assert len(found) == 5, [b.splitlines()[0] for b in found]
    assert "frost_sta_client" in found[0] and "requests" in found[1] and "paho" in found[2]
    assert "read_parquet" in found[3] and "duckdb" in found[4]


def test_frost_sta_client_reads_the_things_and_a_datastream(city):
    out = run(blocks()[0], city)
    assert "n1 p1 37.5665 126.978" in out and "n2 p2 37.57 126.99" in out, out
    # n1's pm2_5 readings: 0 .. 29, the flagged 1500 among them, oldest first
    values = [float(line.split()[-1]) for line in out.splitlines() if line.startswith("2026-09-21")]
    assert values == [1500.0 if i == 7 else float(i) for i in range(30)], out


def test_pandas_reads_a_day_of_temperatures_as_a_data_array(city):
    out = run(blocks()[1], city)
    # every temperature reading of the fixture falls in 14:00-15:00 UTC: n1's 30 (20 .. 27.25) and n2's 12 (1 .. 12)
    assert re.search(r"^14\s+18\.732143$", out, re.M), out


def test_paho_mqtt_prints_each_new_reading_of_the_live_feed(city):
    p = subprocess.Popen([sys.executable, "-u", "-c", localised(blocks()[2], city)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(2.0)  # subscribed
        fx.load(city["pg"].dsn, [("p2", "n2", 4, [(900, 0.5, {"temperature": 27.25})], time.time())])
        line = ""
        deadline = time.monotonic() + 15
        while "27.25" not in line and time.monotonic() < deadline:
            line = p.stdout.readline()
        assert line.startswith("v1.1/Observations ") and line.split()[-1] == "27.25", line
    finally:
        p.kill()
        p.wait(10)
        import psycopg

        with psycopg.connect(city["pg"].dsn) as conn:
            conn.execute("DELETE FROM samples WHERE seq = 900")


def test_pandas_reads_the_published_parquet_and_csv(city):
    out = run(blocks()[3], city)
    assert re.search(r"p1\s+n1\s+30\.0", out), out  # n1's 30 pm2_5 readings described
    assert "laeq" in out and "temperature" in out  # the hourly pivot's columns
    assert "timestamp" in out and "node_id" in out  # the AoT CSV's head


def test_duckdb_queries_the_published_parquet(city):
    out = run(blocks()[4], city)
    assert re.search(r"p1\s+n1\s+temperature\s+2026-09-21 14:00:00\S*\s+23\.625000\s+30", out), out
