"""City-scale figures, each printed with the command that made it.

    .venv/bin/python bench/city.py [--readings 200000] [--poles 100] [--repeat 3] [--latency-s 20] [--latency-rate 17000]

Real parts on loopback, as the tests run them: three nats-server processes clustered with JetStream
(the R3 stream `openpole city init` makes) and a throwaway PostgreSQL cluster (tests/pgcluster.py).
Batches are what a pole sends every 10 s: 10 node messages of 17 readings each (air, noise and
climate), signed (COSE_Mac0, HMAC-SHA256), from --poles poles.

1. publish: one pole's rate through the agent's NatsSink (one batch in flight, each waiting for the
   stream's publish ack, as the agent sends) against the cluster's bare rate, `nats bench js pub`
   style: the same batches published asynchronously with up to 4,000 in flight, into a second
   stream of the same settings;
2. load: readings per second into PostgreSQL for 1 loader and for 2 loaders (`openpole city load`
   processes, reading the same stream from its start, folding the hourly aggregates every second
   meanwhile), and 1 loader that leaves the aggregates alone, after which the bench folds them and
   times that, against the ceiling of a bare COPY of the same sample rows into the same table from
   Python (psycopg, the loader's own binary rows, in the loader's order), measured side by side in
   this run; then the bytes PostgreSQL holds per reading, the aggregates included;
3. latency: batches published at a steady rate while one loader runs; from the stream's acceptance
   of a batch (the pole's publish ack) to its COMMIT, p50 and p99 from the loader's own histogram
   (its /metrics, interpolated within buckets as Prometheus' histogram_quantile does).
"""

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from natscluster import NatsCluster  # noqa: E402
from pgcluster import PgServer  # noqa: E402

from openpole.city.load import BLOCK, SAMPLE_COLUMNS  # noqa: E402
from openpole.city.samples import Checker, RowEncoder  # noqa: E402
from openpole.city.stream import CONSUMER, STREAM, StreamSettings  # noqa: E402
from openpole.wire import batch, node_message, sign  # noqa: E402
from openpole.edge_agent.sinks import NatsSink  # noqa: E402
from openpole.sim.broker import free_port  # noqa: E402

OPENPOLE = [sys.executable, "-m", "openpole"]
KEY = bytes(range(32))
QUANTITIES = range(1, 18)  # temperature .. la10: 17 readings per node message
MESSAGES_PER_BATCH = 10


def make_batches(n_readings, poles):
    """Signed batches as poles send them: [(pole, batch_id, body, readings)]."""
    import cbor2

    per_batch = MESSAGES_PER_BATCH * len(QUANTITIES)
    out, seq, now = [], {}, time.time_ns()
    for i in range(max(1, n_readings // per_batch)):
        pole = f"pole{i % poles:04d}"
        blobs = []
        for j in range(MESSAGES_PER_BATCH):
            node = f"{pole}-n{j % 5}"
            s = seq[node] = seq.get(node, 0) + 1
            m = node_message.decode(cbor2.dumps({0: 1, 1: node, 2: 1, 3: s, 4: [[0, {k: 20.0 + (s + k) % 17 for k in QUANTITIES}]]}))
            blobs.append(batch.senml_records(pole, m, now)[1])
        bid = batch.new_batch_id()
        out.append((pole, bid, sign.sign(batch.encode(bid, pole, blobs, per_batch, now), pole, KEY), per_batch))
    return out


def openpole(*args):
    r = subprocess.run(OPENPOLE + list(map(str, args)), capture_output=True, text=True, timeout=600)
    if r.returncode:
        sys.exit(f"openpole {' '.join(map(str, args))}: {r.stderr.strip()}")
    return r.stdout


def publish_figures(url, batches):
    """(batches/s, readings/s) for one pole's NatsSink, then for async publishing with a window."""
    import nats

    pole = batches[0][0]
    one = [b for b in batches if b[0] == pole] or batches
    one = (one * (300 // len(one) + 1))[:300]
    sink = NatsSink(url, pole=pole)
    sink.send(batch.new_batch_id(), one[0][2])  # connected before the clock starts
    t = time.perf_counter()
    for _, _, body, _ in one[1:]:
        sink.send(batch.new_batch_id(), body)  # ids of their own: the stream keeps `batches` for the loaders
    sink_s = time.perf_counter() - t
    n_sink = len(one) - 1

    async def bare():
        nc = await nats.connect(url.split(","))
        js = nc.jetstream(timeout=30)
        cfg = StreamSettings(max_bytes=2 * 1024**3).config()
        cfg.name, cfg.subjects = "BENCH_BARE", ["bench.bare.>"]
        await js.add_stream(cfg)
        t = time.perf_counter()
        for _, bid, body, _ in batches:
            await js.publish_async(f"bench.bare.{batches[0][0]}", body, headers={"Nats-Msg-Id": bid.hex()})
        await js.publish_async_completed()
        elapsed = time.perf_counter() - t
        await js.delete_stream("BENCH_BARE")
        await nc.close()
        return elapsed

    bare_s = asyncio.run(bare())
    per = batches[0][3]
    return n_sink / sink_s, n_sink * per / sink_s, len(batches) / bare_s, len(batches) * per / bare_s


def rows_of(batches, group):
    """The binary COPY the loader writes into samples for these batches, in groups of `group`
    batches, each group's rows in the loader's order (samples_key's): [(COPY data, samples, readings)]."""
    checker, encoder, things, groups, next_id = Checker(), RowEncoder(), {}, [], BLOCK
    keys = {b[0]: KEY for b in batches}
    for g in range(0, len(batches), group):
        rows = []
        for _, _, body, _ in batches[g:g + group]:
            for pole, node, boot, seq, tq, received, samples, _, _ in checker.check(batch.decode_signed(body, keys), (0, 0),
                                                                                      1e12):
                thing = things.setdefault((pole, node), len(things) + 1)
                rows += [(thing, us, boot, seq, received, tq, vals, exact, flagged) for us, vals, exact, flagged, _ in samples]
        rows.sort(key=lambda r: r[:4])
        data = encoder.encode([(next_id + i, us, received, boot, seq, thing, tq, vals, exact, flagged)
                               for i, (thing, us, boot, seq, received, tq, vals, exact, flagged) in enumerate(rows)])
        groups.append((data, len(rows), sum(len(r[6]) for r in rows)))
        next_id += -(-len(rows) // BLOCK) * BLOCK
    return groups


def reset(dsn, url):
    """Empty the tables and drop the durable consumer: the next loaders read the stream from its start."""
    import nats
    import psycopg

    with psycopg.connect(dsn) as conn:
        conn.execute("TRUNCATE samples, aggregate_queue, hourly, daily, series, thing_poles, things, loaders, locations, "
                     "poles, rejected")

    async def drop():
        nc = await nats.connect(url.split(","))
        try:
            await nc.jetstream(timeout=10).delete_consumer(STREAM, CONSUMER)
        except Exception:
            pass
        await nc.close()

    asyncio.run(drop())


def copy_ceiling(dsn, groups):
    """readings/s for a binary COPY of the loader's rows into `samples` (as it encodes them), one
    transaction per loader-sized group."""
    import psycopg

    with psycopg.connect(dsn) as conn:
        t = time.perf_counter()
        for data, _, _ in groups:
            with conn.transaction(), conn.cursor() as cur:
                with cur.copy(f"COPY samples ({SAMPLE_COLUMNS}) FROM STDIN (FORMAT BINARY)") as copy:
                    copy.write(data)
        elapsed = time.perf_counter() - t
        conn.execute("TRUNCATE samples")
    return sum(n for _, _, n in groups) / elapsed


def loaded(conn):
    """Readings the loaders have loaded."""
    return int(conn.execute("SELECT coalesce(sum(loaded), 0) FROM loaders").fetchone()[0])


def fold_rate(dsn, total):
    """readings/s for folding every queued block into the aggregates (maintain.fold, as a loader's
    upkeep runs it), after a load that left them all queued."""
    import psycopg

    from openpole.city import maintain

    with psycopg.connect(dsn) as conn:
        t = time.perf_counter()
        while maintain.fold(conn):
            pass
        return total / (time.perf_counter() - t)


def sizes(dsn, url):
    """({what: bytes PostgreSQL holds}, {aggregate table: (bytes, rows)}, bytes the stream holds)."""
    import nats
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")  # settle the visibility map; sizes count heap and indexes
        part = ("SELECT coalesce(sum({f}(c.oid)), 0) FROM pg_class c WHERE c.relkind = 'r' AND c.relname {w}")
        db = {"samples' rows": conn.execute(part.format(f="pg_relation_size", w="LIKE 'samples%'")).fetchone()[0],
              "their indexes": conn.execute(part.format(f="pg_indexes_size", w="LIKE 'samples%'")).fetchone()[0]}
        per = {t: conn.execute(f"SELECT pg_total_relation_size('{t}'), (SELECT count(*) FROM {t})").fetchone()
               for t in ("hourly", "daily", "series", "things")}

    async def stream_bytes():
        nc = await nats.connect(url.split(","))
        info = await nc.jetstream(timeout=10).stream_info(STREAM)
        await nc.close()
        return info.state.bytes

    return {k: int(v) for k, v in db.items()}, per, asyncio.run(stream_bytes())


def cpu_busy():
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    f = [int(x) for x in open("/proc/stat").readline().split()[1:]]
    return sum(f) - f[3] - f[4], sum(f)


def load_rate(url, dsn, keys, n_loaders, total, group, aggregate_every_s):
    """(readings/s from the first commit to the last, the machine's CPU busy meanwhile), with n
    loader processes sharing the consumer (folding the aggregates every aggregate_every_s, 0: never)."""
    import psycopg

    procs = [subprocess.Popen(OPENPOLE + ["city", "load", "--nats", url, "--db", dsn, "--keys", str(keys), "--group",
                                          str(group), "--quiet", "--name", f"bench-{i}", "--aggregate-every",
                                          str(aggregate_every_s)], stdout=subprocess.DEVNULL)
             for i in range(n_loaders)]
    try:
        first = None
        deadline = time.monotonic() + 600
        with psycopg.connect(dsn, autocommit=True) as conn:
            while time.monotonic() < deadline:
                n = loaded(conn)
                if n and first is None:
                    first = (time.perf_counter(), n, cpu_busy())
                if n >= total:
                    busy, all_ = (a - b for a, b in zip(cpu_busy(), first[2]))
                    return (n - first[1]) / (time.perf_counter() - first[0]), busy / max(1, all_)
                time.sleep(0.05)
            sys.exit(f"{n_loaders} loader(s) loaded {loaded(conn)} of {total} readings in 600 s")
    finally:
        for p in procs:
            p.terminate()
            p.wait(timeout=30)


def quantile(buckets, q):
    """histogram_quantile: buckets [(le, cumulative)], linear within the bucket that holds q."""
    total = buckets[-1][1]
    if not total:
        return float("nan")
    rank, prev_le, prev_n = q * total, 0.0, 0
    for le, n in buckets:
        if n >= rank:
            if le == float("inf"):
                return prev_le
            return prev_le + (le - prev_le) * (rank - prev_n) / max(1, n - prev_n)
        prev_le, prev_n = le, n
    return prev_le


def latency(url, dsn, keys, batches, seconds, rate_readings, group):
    """Publish from several poles' sinks at a steady rate while one loader runs; its histogram."""
    import urllib.request

    port = free_port()
    proc = subprocess.Popen(OPENPOLE + ["city", "load", "--nats", url, "--db", dsn, "--keys", str(keys), "--group",
                                        str(group), "--quiet", "--metrics", f"127.0.0.1:{port}"],
                            stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # ready: its metrics answer (it has connected to both)
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        time.sleep(1)
        sinks = {}
        per = batches[0][3]
        interval = per / rate_readings
        t0 = time.perf_counter()
        sent = 0
        for pole, _, body, _ in batches:
            if time.perf_counter() - t0 > seconds:
                break
            sink = sinks.get(pole) or sinks.setdefault(pole, NatsSink(url, pole=pole))
            sink.send(batch.new_batch_id(), body)  # a new id: the stream takes it again; the index counts it
            sent += 1
            wait = t0 + sent * interval - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
        achieved = sent * per / (time.perf_counter() - t0)
        time.sleep(2)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            text = r.read().decode()
        buckets = []
        for line in text.splitlines():
            if line.startswith("openpole_city_load_latency_seconds_bucket"):
                le = line.split('le="')[1].split('"')[0]
                buckets.append((float("inf") if le == "+Inf" else float(le), int(line.split()[1])))
        return achieved, quantile(buckets, 0.5), quantile(buckets, 0.99), buckets[-1][1]
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--readings", type=int, default=200_000)
    ap.add_argument("--poles", type=int, default=100)
    ap.add_argument("--group", type=int, default=200, help="the loaders' --group")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each load figure; the median is printed")
    ap.add_argument("--latency-s", type=float, default=20.0)
    ap.add_argument("--latency-rate", type=float, default=17000.0,
                    help="readings/s published in the latency run (default: a city of 10,000 poles)")
    args = ap.parse_args()
    cmd = "python bench/city.py " + " ".join(sys.argv[1:])
    root = Path(tempfile.mkdtemp(prefix="openpole-city-bench-"))
    print(f"$ {cmd}")
    print(f"machine: {os.cpu_count()} cores; 3 nats-servers (R3, file storage) and PostgreSQL on loopback")
    batches = make_batches(args.readings, args.poles)
    total = sum(b[3] for b in batches)
    print(f"batches: {len(batches)} of {batches[0][3]} readings ({len(batches[0][2])} bytes signed), {args.poles} poles, "
          f"{total} readings")
    keys = root / "poles.toml"
    keys.write_text("".join(f'pole{i:04d} = "{KEY.hex()}"\n' for i in range(args.poles)))
    cluster = NatsCluster(root / "nats", 3)
    pg = PgServer()
    try:
        openpole("city", "init", "--nats", cluster.url, "--db", pg.dsn, "--max-gb", 2)  # two streams fit the disk
        sink_bps, sink_rps, bare_bps, bare_rps = publish_figures(cluster.url, batches)
        print(f"publish, one pole (NatsSink, one batch in flight): {sink_bps:.0f} batches/s = {sink_rps:.0f} readings/s")
        print(f"publish, bare (js publish_async, 4,000 in flight): {bare_bps:.0f} batches/s = {bare_rps:.0f} readings/s "
              f"-> one pole reaches {100 * sink_bps / bare_bps:.0f} %")
        # the stream: every batch once (the publish figure's 300 are duplicates or extra; start clean)
        reset(pg.dsn, cluster.url)
        asyncio.run(_purge(cluster.url))
        asyncio.run(_fill(cluster.url, batches))
        groups = rows_of(batches, args.group)
        # Each figure is the median of --repeat runs, taken in turn (ceiling, the loaders), so a slow
        # moment of the machine falls on all of them alike.
        variants = {"1 loader": (1, 1.0), "1 loader, no aggregates": (1, 0), "2 loaders": (2, 1.0)}
        runs = {"ceiling": [], "fold": [], **{v: [] for v in variants}}
        for _ in range(args.repeat):
            runs["ceiling"].append((copy_ceiling(pg.dsn, groups), None))
            for v, (n, every) in variants.items():
                reset(pg.dsn, cluster.url)
                runs[v].append(load_rate(cluster.url, pg.dsn, keys, n, total, args.group, every))
                if not every:  # every block still queued: the fold's own rate, then the bytes it all takes
                    runs["fold"].append((fold_rate(pg.dsn, total), None))
                    db_b, per, stream_b = sizes(pg.dsn, cluster.url)
        ceiling = statistics.median(r for r, _ in runs["ceiling"])
        samples = sum(n for _, n, _ in groups)
        print(f"ceiling, bare COPY of the same {samples} sample rows ({total / samples:.0f} readings each; psycopg, "
              f"{args.group} batches a transaction): {ceiling:.0f} readings/s (median of {args.repeat}; runs: "
              f"{', '.join(f'{r:.0f}' for r, _ in runs['ceiling'])})")
        for v, (n, every) in variants.items():
            rate, busy = sorted(runs[v])[len(runs[v]) // 2]
            spread = ", ".join(f"{100 * r / ceiling:.0f}" for r, _ in runs[v])
            how = f"--group {args.group} --aggregate-every {every:g}" + (", folding meanwhile" if every else "")
            print(f"load, {v} ({how}): {rate:.0f} readings/s = {100 * rate / ceiling:.0f} % of the ceiling (runs: "
                  f"{spread} %); the machine's CPU {100 * busy:.0f} % busy meanwhile")
        fold = statistics.median(r for r, _ in runs["fold"])
        print(f"fold into the hourly and daily aggregates, after the load: {fold:.0f} readings/s (median of "
              f"{args.repeat}; one loader's upkeep does it, on PostgreSQL's side)")
        parts = ", ".join(f"{k} {b / total:.1f}" for k, b in db_b.items())
        print(f"storage per reading (1 loader): PostgreSQL {sum(db_b.values()) / total:.1f} bytes ({parts}), the "
              f"stream {stream_b / total:.0f} bytes per replica")
        (hb, hn), (db_, dn) = per["hourly"], per["daily"]
        print(f"storage of the aggregates: {hb / hn:.0f} bytes a series and hour, {db_ / dn:.0f} a series and day "
              f"(= {hb / hn / 360 + db_ / dn / 8640:.2f} bytes a reading for a series read every 10 s); series "
              f"{per['series'][0] / per['series'][1]:.0f} and things {per['things'][0] / per['things'][1]:.0f} bytes "
              f"each")
        reset(pg.dsn, cluster.url)
        asyncio.run(_purge(cluster.url))
        achieved, p50, p99, n = latency(cluster.url, pg.dsn, keys, batches, args.latency_s, args.latency_rate,
                                        args.group)
        print(f"latency, publish ack to COMMIT at {achieved:.0f} readings/s, 1 loader: p50 {p50 * 1000:.0f} ms, "
              f"p99 {p99 * 1000:.0f} ms ({n} batches)")
    finally:
        cluster.stop()
        pg.stop()


async def _purge(url):
    import nats

    nc = await nats.connect(url.split(","))
    await nc.jetstream(timeout=30).purge_stream(STREAM)
    await nc.close()


async def _fill(url, batches):
    import nats

    nc = await nats.connect(url.split(","))
    js = nc.jetstream(timeout=30)
    for pole, bid, body, _ in batches:
        await js.publish_async(f"openpole.batches.{pole}", body, headers={"Nats-Msg-Id": bid.hex()})
    await js.publish_async_completed()
    await nc.close()


if __name__ == "__main__":
    main()
