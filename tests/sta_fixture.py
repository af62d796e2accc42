"""A city database for the SensorThings tests, made as a city makes one: `openpole city init`, the
poles registry through `openpole city poles import`, readings through the real loader
(tools/city/load.py), the hourly and daily aggregates folded as the loaders do (tools/city/maintain.py).
The API reads it as openpole_reader, the read-only role `city init` makes.
"""

import datetime

import cbor2

from openpole.spec.registry import REGISTRY
from openpole.wire import batch, node_message, sign

KEY = bytes(range(32))
T0 = 1_790_000_000  # 2026-09-21T13:33:20Z: a whole number of seconds
T0_MONTH = datetime.datetime(2026, 9, 1, tzinfo=datetime.timezone.utc)
POLES = {"p1": (37.5665, 126.9780, "Main St / 3rd Ave", "north-east corner"),
         "p2": (37.5700, 126.9900, "Park Rd 12", None)}


def node_batch(pole, node, boot, samples, receive_s):
    """samples: [(seq, age_s, {quantity name: value})] -> a signed batch, one node message each."""
    by_name = REGISTRY.by_name
    blobs, n = [], 0
    for seq, age_s, values in samples:
        m = node_message.decode(cbor2.dumps({0: 1, 1: node, 2: boot, 3: seq,
                                             4: [[int(age_s * 1000), {by_name[q].key: v for q, v in values.items()}]]}))
        k, senml = batch.senml_records(pole, m, int(receive_s * 1e9))
        blobs.append(senml)
        n += k
    return sign.sign(batch.encode(batch.new_batch_id(), pole, blobs, n, int(receive_s * 1e9)), pole, KEY)


def dataset():
    """[(pole, node, boot, [(seq, age_s, values)], receive_s)]: three nodes, two poles, a node moved.

    n1 (p1): a BME280 and a PMS5003, 30 samples a minute apart; n2 (p2): an SHT31, 12 samples;
    n3, a noise meter: on p2 for its first 6 samples, then on p1 (a Thing on each pole). A value out
    of range is flagged (pm2_5 of 1500 µg/m³)."""
    out = []
    for i in range(30):
        v = {"temperature": 20.0 + i * 0.25, "humidity": 50.0 + i, "pressure": 1000.0 + i, "pm2_5": float(i)}
        if i == 10:
            v["pressure"] = 16777217.0  # 2^24 + 1: far out of range, and no single-precision float holds it
        if i == 7:
            v["pm2_5"] = 1500.0
        out.append(("p1", "n1", 1, [(i, 5, v)], T0 + 60 * i + 5))
    for i in range(12):
        out.append(("p2", "n2", 4, [(i, 2, {"temperature": float(i + 1), "humidity": 40.0 + i})], T0 + 60 * i + 2))
    for i in range(12):
        pole = "p2" if i < 6 else "p1"
        out.append((pole, "n3", 9, [(i, 1, {"laeq": 50.0 + i, "lamax": 60.0 + i})], T0 + 3600 + 60 * i + 1))
    return out


def load(dsn, data=None):
    """Store the dataset's batches through the real loader; -> readings stored."""
    from openpole.city.load import Loader

    loader = Loader(dsn, keys={"p1": KEY, "p2": KEY})
    total = 0
    try:
        for pole, node, boot, samples, rs in data or dataset():
            c = loader.store([(f"openpole.batches.{pole}", node_batch(pole, node, boot, samples, rs), None)])
            total += c["records_unique"]
    finally:
        loader.close()
    return total


def build(dsn, poles=POLES, data=None):
    """`city init`, the poles registry through `city poles import`, the dataset through the real loader,
    the aggregates folded as the loaders' timer folds them; -> {"things": {(pole, node): id},
    "series": {(thing id, key): id}}."""
    import subprocess
    import sys

    def openpole(*args):
        r = subprocess.run([sys.executable, "-m", "openpole", *map(str, args)], capture_output=True, text=True,
                           timeout=120)
        assert r.returncode == 0, r.stdout + r.stderr
        return r.stdout

    openpole("city", "init", "--db", dsn)
    import_poles(dsn, poles)
    load(dsn, data)
    fold(dsn)
    return ids(dsn)


def import_poles(dsn, poles):
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        f = Path(d) / "poles.csv"
        f.write_text("pole,lat,lon,address,description\n" + "".join(
            f"{p},{lat},{lon},{addr or ''},{desc or ''}\n" for p, (lat, lon, addr, desc) in poles.items()))
        r = subprocess.run([sys.executable, "-m", "openpole", "city", "poles", "import", "--db", dsn, f],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stdout + r.stderr


def fold(dsn):
    """The hourly and daily aggregates of everything loaded, as a loader's timer folds them."""
    import psycopg

    from openpole.city import maintain

    with psycopg.connect(dsn) as conn:
        while maintain.fold(conn):
            pass


def ids(dsn):
    import psycopg

    with psycopg.connect(dsn) as conn:
        things = {(p, n): i for i, p, n in conn.execute("SELECT id, pole, node FROM things").fetchall()}
        series = {(t, k): i for i, t, k in conn.execute("SELECT id, thing_id, key FROM series").fetchall()}
    return {"things": things, "series": series}


def reader_dsn(dsn):
    """The same database as the read-only role `city init` makes."""
    return dsn.replace("postgresql://openpole@", "postgresql://openpole_reader@")
