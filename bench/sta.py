"""The SensorThings API's hot requests on a city-sized table, each printed with its time.

    .venv/bin/python bench/sta.py [--things 1000] [--samples-per-thing 2000] [--repeat 5]

A throwaway PostgreSQL cluster (tests/pgcluster.py) made by `openpole city init` (tests/sta_fixture.py),
filled with --things nodes of 5 quantities, --samples-per-thing samples each over two months; `openpole city serve` in front of it as the read-only role. Times are
the median of --repeat requests from one client on loopback, whole responses read and parsed.
"""

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import requests  # noqa: E402
import sta_fixture as fx  # noqa: E402
from pgcluster import PgServer  # noqa: E402

from openpole.sim.broker import free_port  # noqa: E402


def fill(dsn, things, per):
    import psycopg

    from openpole.city import maintain

    with psycopg.connect(dsn) as conn:
        with conn.cursor() as cur:
            maintain.make_partition(cur, fx.T0_MONTH.replace(month=10))
        base = conn.execute("SELECT coalesce(max(id), 0) FROM things").fetchone()[0]
        conn.execute("INSERT INTO things (pole, node, first_seen) SELECT 'p1', 'b' || g, "
                     "'2026-09-01' FROM generate_series(1, %s) g", (things,))
        conn.execute("INSERT INTO thing_poles (thing_id, pole, since) SELECT id, 'p1', first_seen FROM things "
                     "WHERE id > %s", (base,))
        conn.execute("INSERT INTO series (thing_id, key, unit, first_seen) SELECT t.id, k, q.unit, t.first_seen "
                     "FROM things t, unnest(ARRAY[1, 2, 3, 5, 16]) k JOIN quantities q ON q.key = k WHERE t.id > %s",
                     (base,))
        step = 61 * 86400 / per
        conn.execute(f"""INSERT INTO samples (id, thing_id, time, received, tq, vals, boot, seq)
            SELECT 10000000 + t.id::bigint * {per} + g, t.id, '2026-09-01'::timestamptz + g * interval '{step} s',
                   '2026-09-01'::timestamptz + g * interval '{step} s', 0,
                   ARRAY[20 + (g % 10), 50, 1000, NULL, g % 40, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
                         NULL, NULL, 55]::real[], 1, g
            FROM things t, generate_series(0, {per - 1}) g WHERE t.id > {base}""")
        conn.execute("ANALYZE")
        n = conn.execute("SELECT count(*) FROM samples").fetchone()[0]
        ds = conn.execute("SELECT id FROM series WHERE thing_id = %s AND key = 1", (base + things // 2,)).fetchone()[0]
    return n, base + things // 2, ds


def timed(url, params, repeat):
    times, doc = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        r = requests.get(url, params=params, timeout=120)
        doc = r.json()
        times.append(time.perf_counter() - t)
        assert r.status_code == 200, doc
    return statistics.median(times), doc


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--things", type=int, default=1000)
    ap.add_argument("--samples-per-thing", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=5)
    a = ap.parse_args()
    print(f"command: .venv/bin/python bench/sta.py --things {a.things} --samples-per-thing {a.samples_per_thing} "
          f"--repeat {a.repeat}")
    pg = PgServer()
    proc = None
    try:
        subprocess.run([sys.executable, "-m", "openpole", "city", "init", "--db", pg.dsn], check=True,
                       capture_output=True)
        fx.build(pg.dsn)
        t0 = time.perf_counter()
        n, thing, ds = fill(pg.dsn, a.things, a.samples_per_thing)
        print(f"samples: {n:,} ({n * 5:,} readings), {a.things * 5:,} Datastreams of readings; filled in "
              f"{time.perf_counter() - t0:.0f} s")
        port = free_port()
        proc = subprocess.Popen([sys.executable, "-m", "openpole", "city", "serve", "--db", fx.reader_dsn(pg.dsn),
                                 "--listen", f"127.0.0.1:{port}", "--rate", "0", "--timeout", "60"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        proc.stdout.readline()
        base = f"http://127.0.0.1:{port}/v1.1"
        cases = [
            ("latest reading of every Datastream of 100 Things (one request)", "/Things",
             {"$top": "100", "$skip": "3", "$expand": "Datastreams($filter=properties/aggregate eq 'none';"
                                                     "$expand=Observations($orderby=phenomenonTime desc;$top=1))"}),
            ("one Datastream, one day, oldest first", f"/Datastreams({ds})/Observations",
             {"$filter": "phenomenonTime ge 2026-10-01T00:00:00Z and phenomenonTime lt 2026-10-02T00:00:00Z",
              "$orderby": "phenomenonTime asc"}),
            ("one Datastream's newest 100 (istsos4-client's form)", "/Observations",
             {"$filter": f"Datastream/id eq {ds}", "$orderby": "phenomenonTime desc", "$top": "100"}),
            ("a Thing's Datastreams with their Sensor and ObservedProperty", f"/Things({thing})/Datastreams",
             {"$expand": "Sensor,ObservedProperty"}),
            ("one Observation by id", f"/Observations({(10_000_000 + thing * a.samples_per_thing + 7) * 256 + 1})", {}),
            ("count of all Observations (estimated past 100,000)", "/Observations", {"$top": "0", "$count": "true"}),
            ("10,000 readings as a dataArray", f"/Datastreams({ds})/Observations",
             {"$resultFormat": "dataArray", "$select": "phenomenonTime,result", "$top": "10000"}),
        ]
        for what, path, params in cases:
            t, doc = timed(base + path, params, a.repeat)
            extra = f" (@iot.count {doc['@iot.count']:,})" if "@iot.count" in doc else ""
            print(f"{t * 1000:8.1f} ms  {what}{extra}")
    finally:
        if proc:
            proc.terminate()
            proc.wait(10)
        pg.stop()


if __name__ == "__main__":
    main()
