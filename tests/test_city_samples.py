"""tools/city/samples.py, the sample rows' own rules, checked against what PostgreSQL does with them:
a real gives back every value a node sends, times are rounded as datetime rounds them, and the
loader's binary rows read back as the values they were made of."""

import datetime
import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pgcluster import PgServer

from openpole.city.samples import RowEncoder, real_gives_back, unix_us
from openpole.spec.registry import REGISTRY

UTC = datetime.timezone.utc
EPOCH = datetime.datetime(1970, 1, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def pg():
    server = PgServer()
    yield server
    server.stop()


@settings(max_examples=3000, deadline=None)
@given(t=st.floats(-62135596800.0, 253402300798.0) | st.integers(-62135596800, 253402300798)
       | st.integers(-10**9, 4 * 10**9).map(lambda s: s + 0.5e-6) | st.decimals(0, 4e9, places=7).map(float))
def test_times_round_to_microseconds_as_datetime_does(t):
    assert unix_us(t) == (datetime.datetime.fromtimestamp(t, UTC) - EPOCH) // datetime.timedelta(microseconds=1)


def test_a_real_gives_back_every_value_a_node_can_send():
    """Every multiple of a quantity's resolution in its range, as the pole rounds it (round(v,
    digits) of the node's single-precision float): real_gives_back holds for each."""
    checked = 0
    for q in REGISTRY.by_key.values():
        steps = round((q.max - q.min) / q.resolution)
        for i in range(steps + 1):
            v = round(q.min + i * q.resolution, q.digits)
            assert real_gives_back(float(v)), (q.name, v)
            checked += 1
    assert checked > 200_000


def test_real_gives_back_says_what_postgresql_gives_back(pg):
    import psycopg

    r = random.Random(7)
    values = [0.0, -0.0, 1013.27, 12345.67, 12345678.91, 16777216.0, 16777217.0, 0.1, 1e-40, 1e-46, 3.4e38, 3.5e38,
              2.0 ** -149, 1.401298464324817e-45, 123456.789, 65535.0]
    values += [round(r.uniform(-1e6, 1e6), r.randrange(0, 9)) for _ in range(3000)]
    values += [r.uniform(-1e-30, 1e30) for _ in range(500)]
    with psycopg.connect(pg.dsn) as conn:
        conn.execute("CREATE TEMP TABLE r (i int, v real)")
        keep = [(i, v) for i, v in enumerate(values) if abs(v) <= 3.4e38 and (v == 0 or abs(v) >= 1e-44)]
        with conn.cursor().copy("COPY r (i, v) FROM STDIN") as copy:
            for row in keep:
                copy.write_row(row)
        back = dict(conn.execute("SELECT i, v FROM r").fetchall())
    agree = 0
    for i, v in keep:
        assert real_gives_back(v) == (back[i] == v), (v, back[i])
        agree += 1
    assert agree > 3000 and not real_gives_back(3.5e38) and not real_gives_back(1e-46)


def test_the_binary_rows_read_back_as_they_were_made(pg):
    import psycopg

    from openpole.city.load import SAMPLE_COLUMNS

    r = random.Random(3)
    rows = []
    for i in range(2000):
        keys = sorted(r.sample(range(1, 22), r.randrange(1, 18)))
        exact = r.random() < 0.8
        vals = {k: float(round(r.uniform(-100, 1000), 2)) if exact else r.uniform(-1e300, 1e300) for k in keys}
        if exact:
            vals = {k: v for k, v in vals.items() if real_gives_back(v)} or {keys[0]: 21.5}
        flagged = sorted(r.sample(sorted(vals), r.randrange(1, len(vals) + 1))) if r.random() < 0.2 else None
        t = r.randrange(-62135596800 * 10**6, 253402300799 * 10**6)
        received = None if r.random() < 0.1 else r.randrange(0, 2**62 // 1000)
        rows.append((i, t, received, r.randrange(-2**63, 2**63), r.randrange(-2**63, 2**63), r.randrange(-2**31, 2**31),
                     r.randrange(-2**15, 2**15), vals, exact, flagged))
    with psycopg.connect(pg.dsn) as conn:
        conn.execute("SET TimeZone TO 'UTC'")
        conn.execute("CREATE TEMP TABLE s (id bigint, time timestamptz, received timestamptz, boot bigint, seq bigint, "
                     "thing_id int, tq smallint, vals real[], vals8 double precision[], flagged smallint[])")
        with conn.cursor().copy(f"COPY s ({SAMPLE_COLUMNS}) FROM STDIN (FORMAT BINARY)") as copy:
            copy.write(RowEncoder().encode(rows))
        back = {row[0]: row for row in conn.execute(f"SELECT {SAMPLE_COLUMNS} FROM s").fetchall()}
    assert len(back) == len(rows)

    def at(us):
        return EPOCH + datetime.timedelta(microseconds=us)

    for rid, t, received, boot, seq, thing, tq, vals, exact, flagged in rows:
        got = back[rid]
        values = [vals.get(k) for k in range(1, max(vals) + 1)]
        want = (rid, at(t), None if received is None else at(received), boot, seq, thing, tq,
                values if exact else None, None if exact else values, flagged)
        assert got == want, (got, want)
        assert all(math.isfinite(v) for v in vals.values())
