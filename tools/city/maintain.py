"""The city database's upkeep, which one loader at a time runs on a timer: the hourly and daily
aggregates, folded in from the samples of the id blocks in `aggregate_queue` (each block once,
never by rescanning the samples or the hours), and next month's partition, made before it is needed.

    fold(conn)                  # one transaction: up to FOLD_BLOCKS blocks into hourly and daily
    partition_ahead(cur, now)   # next month's partition, in this month's last week
    make_partition(cur, month)  # the month's partition of samples (loaders call it too)

Aggregates take the readings within the registry's range (those a pole flagged out of it are left
out, as the pole's own minute aggregates do); a decibel quantity's mean is its energy mean.
"""

import datetime

from .samples import month, next_month

FOLD_BLOCKS = 64  # id blocks (of up to 4,096 samples) a fold's transaction takes at most
FOLD_LOCK, PARTITION_LOCK = 7063, 7062  # advisory locks: one fold at a time; one loader makes a month
AHEAD = datetime.timedelta(days=7)  # next month's partition is made this long before it begins

# The queued blocks' readings, per series and UTC hour: each sample's values once as doubles (the
# digits PostgreSQL prints for a real, as the pole sent them), kept to the registry's range by key,
# summed per thing, key and hour, then given their series. Within the registry's range no power of
# ten of a decibel level overflows.
_HOURS = """
CREATE TEMP TABLE fold_hours ON COMMIT DROP AS
WITH q AS (
    SELECT array_agg(q.min ORDER BY g) AS lo, array_agg(q.max ORDER BY g) AS hi,
           array_agg(q.kind = 'level' ORDER BY g) AS level
    FROM generate_series(1, (SELECT max(key) FROM quantities)) AS g LEFT JOIN quantities q ON q.key = g
), r AS (
    SELECT s.thing_id, u.k, date_trunc('hour', s.time, 'UTC') AS hour, s.time, u.v, coalesce(q.level[u.k], false) AS level
    FROM q, unnest(%s::int8[]) AS b(block)
    JOIN samples s ON s.id >= b.block * 4096 AND s.id < b.block * 4096 + 4096
    CROSS JOIN LATERAL unnest(coalesce(s.vals::text::float8[], s.vals8)) WITH ORDINALITY AS u(v, k)
    WHERE u.v BETWEEN q.lo[u.k] AND q.hi[u.k] AND (s.flagged IS NULL OR u.k <> ALL (s.flagged))
), h AS (
    SELECT thing_id, k, hour, level, count(*)::int AS count,
           CASE WHEN level THEN 10 * log10(avg(power(10::float8, v / 10))) ELSE avg(v) END AS mean,
           min(v) AS min, max(v) AS max, min(time) AS first, max(time) AS last
    FROM r GROUP BY thing_id, k, hour, level
)
SELECT se.id AS series_id, h.hour, h.level, h.count, h.mean, h.min, h.max, h.first, h.last
FROM h JOIN series se ON se.thing_id = h.thing_id AND se.key = h.k
"""
_MERGE = """
INSERT INTO hourly AS o (series_id, hour, count, mean, min, max, first, last)
SELECT series_id, hour, count, mean, min, max, first, last FROM fold_hours WHERE {which} ORDER BY series_id, hour
ON CONFLICT (series_id, hour) DO UPDATE SET count = o.count + excluded.count, mean = {mean},
    min = least(o.min, excluded.min), max = greatest(o.max, excluded.max),
    first = least(o.first, excluded.first), last = greatest(o.last, excluded.last)
"""
_LINEAR = "(o.mean * o.count + excluded.mean * excluded.count) / (o.count + excluded.count)"
_ENERGY = ("10 * log10((o.count * power(10::float8, o.mean / 10) + excluded.count * power(10::float8, excluded.mean / 10)) "
           "/ (o.count + excluded.count))")
# The same sums into the days they fall in: merged as the hours are (the day's rows equal those its
# hours would give), not recomputed from its hours, which a fold touching every series would read
# 24 times over by evening.
_DAYS = """
INSERT INTO daily AS o (series_id, day, count, mean, min, max, first, last)
SELECT series_id, day, sum(count)::int,
       CASE WHEN level THEN 10 * log10(sum(count * power(10::float8, mean / 10)) / sum(count))
            ELSE sum(count * mean) / sum(count) END,
       min(min), max(max), min(first), max(last)
FROM (SELECT *, date_trunc('day', hour, 'UTC') AS day FROM fold_hours WHERE {which}) h
GROUP BY series_id, day, level ORDER BY series_id, day
ON CONFLICT (series_id, day) DO UPDATE SET count = o.count + excluded.count, mean = {mean},
    min = least(o.min, excluded.min), max = greatest(o.max, excluded.max),
    first = least(o.first, excluded.first), last = greatest(o.last, excluded.last)
"""


def fold(conn, max_blocks=FOLD_BLOCKS):
    """Fold the oldest queued id blocks into hourly and daily, in one transaction: the number of
    blocks folded (0: none waited), or None when another loader is folding."""
    with conn.transaction(), conn.cursor() as cur:
        if not cur.execute("SELECT pg_try_advisory_xact_lock(%s)", (FOLD_LOCK,)).fetchone()[0]:
            return None
        # Compiling the statements (JIT) costs more than running them; their sorts fit in memory.
        cur.execute("SET LOCAL jit = off")
        cur.execute("SET LOCAL work_mem = '64MB'")
        cur.execute("DELETE FROM aggregate_queue WHERE block IN (SELECT block FROM aggregate_queue ORDER BY block "
                    "LIMIT %s) RETURNING block", (max_blocks,))
        blocks = sorted(b for (b,) in cur.fetchall())
        if blocks:
            cur.execute(_HOURS, (blocks,))
            for which, mean in (("NOT level", _LINEAR), ("level", _ENERGY)):
                cur.execute(_MERGE.format(which=which, mean=mean))
                cur.execute(_DAYS.format(which=which, mean=mean))
            cur.execute("DROP TABLE fold_hours")
    return len(blocks)


def make_partition(cur, m):
    """The month's partition of samples, made before any row of it is written; rows that waited in
    the default partition for that month (a node's clock far ahead) move into it. True when made."""
    name = f"samples_{m:%Y_%m}"
    cur.execute("SELECT pg_advisory_xact_lock(%s)", (PARTITION_LOCK,))  # loaders making the same month: one does
    if cur.execute("SELECT to_regclass(%s) IS NOT NULL", (name,)).fetchone()[0]:
        return False
    a, b = m.isoformat(), next_month(m).isoformat()
    cur.execute(f"CREATE TEMP TABLE moved ON COMMIT DROP AS WITH d AS (DELETE FROM samples_other WHERE time >= "
                f"'{a}' AND time < '{b}' RETURNING *) SELECT * FROM d")
    cur.execute(f"CREATE TABLE {name} PARTITION OF samples FOR VALUES FROM ('{a}') TO ('{b}')")
    cur.execute("INSERT INTO samples SELECT * FROM moved")
    cur.execute("DROP TABLE moved")
    return True


def partition_ahead(cur, now):
    """Next month's partition when `now` (an aware datetime) is within AHEAD of it: the month, or
    None when it is not time yet. Made ahead, no loader waits for it when the month turns."""
    ahead = next_month(month(now))
    if ahead - now > AHEAD:
        return None
    make_partition(cur, ahead)
    return ahead
