"""`openpole city publish`: a day's open-data files from a city database loaded through the real
loader (tests/sta_fixture.py), read back by pandas, pyarrow and sha256sum, compared with what
PostgreSQL holds; late readings added by publishing again."""

import hashlib
import json
import subprocess
import sys
import time

import pytest
import sta_fixture as fx
from pgcluster import PgServer

DAY = "2026-09-21"  # the fixture's readings: T0 is 2026-09-21T14:13:20Z
FAR = str(24 * 3650)  # a late window that keeps the day open for the test's lifetime


def openpole(*args, timeout=120):
    r = subprocess.run([sys.executable, "-m", "openpole", *map(str, args)], capture_output=True, text=True,
                       timeout=timeout)
    return r.returncode, r.stdout, r.stderr


@pytest.fixture(scope="module")
def city():
    pg = PgServer()
    try:
        ids = fx.build(pg.dsn)
        yield {"pg": pg, "dsn": pg.dsn, "reader": fx.reader_dsn(pg.dsn), "ids": ids}
    finally:
        pg.stop()


def publish(city, out, *extra):
    code, out_text, err = openpole("city", "publish", "--day", DAY, "--out", out, "--db", city["reader"], *extra)
    assert code == 0, out_text + err
    return out_text


def files(d):
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


def db_readings(dsn, day=DAY):
    import psycopg

    with psycopg.connect(dsn) as conn:
        conn.execute("SET TIME ZONE 'UTC'")
        return conn.execute(
            "SELECT t.pole, t.node, o.time, q.name, o.result, o.received, o.flags = 1, o.boot, o.seq, o.thing_id, "
            "o.series_id, o.id FROM observations o JOIN things t ON t.id = o.thing_id JOIN quantities q ON q.key = o.key "
            "WHERE o.time >= %s::date AND o.time < %s::date + 1 ORDER BY t.pole, t.node, o.time, o.boot, o.seq, o.key",
            (day, day)).fetchall()


def test_publishing_a_day_twice_gives_the_same_bytes_and_a_manifest_that_checks(city, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    text = publish(city, a, "--late-window", FAR)
    assert f"{DAY}: {len(db_readings(city['dsn']))} readings" in text and "edition 1" in text, text
    time.sleep(1.1)  # a timestamp of the run would differ now
    publish(city, b, "--late-window", FAR)
    first = files(a)
    assert set(first) == {"data.csv.gz", "nodes.csv", "sensors.csv", "provenance.csv", "readings.parquet",
                          "hourly.parquet", "datapackage.json", "SHA256SUMS"}
    assert first == files(b)
    publish(city, a, "--late-window", FAR)  # again into the same directory: nothing new, the same edition
    assert files(a) == first
    r = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=a, capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.count(": OK") == 7, r.stdout + r.stderr
    pkg = json.loads(first["datapackage.json"])
    assert pkg["licenses"] == [{"name": "CC-BY-4.0", "title": "Creative Commons Attribution 4.0 International",
                                "path": "https://creativecommons.org/licenses/by/4.0/"}]
    for res in pkg["resources"]:
        data = first[res["path"]]
        assert res["bytes"] == len(data) and res["hash"] == "sha256:" + hashlib.sha256(data).hexdigest()
    # the licence is the city's to choose
    publish(city, tmp_path / "c", "--late-window", FAR, "--license", "CC0-1.0")
    assert json.loads((tmp_path / "c" / "datapackage.json").read_text())["licenses"][0]["name"] == "CC0-1.0"


def test_pandas_reads_the_parquet_and_the_csv_to_the_rows_postgresql_holds(city, tmp_path):
    import pandas as pd
    import psycopg
    import pyarrow.parquet as pq

    publish(city, tmp_path, "--late-window", FAR)
    want = db_readings(city["dsn"])
    assert len(want) > 100
    df = pd.read_parquet(tmp_path / "readings.parquet")
    assert str(df["time"].dtype) == "datetime64[ms, UTC]" and str(df["value"].dtype) == "float64"
    assert str(df["out_of_range"].dtype) == "bool" and str(df["seq"].dtype) == "int64"
    got = [(r.pole, r.node, r.time.to_pydatetime(), r.quantity, r.value,
            None if pd.isna(r.received) else r.received.to_pydatetime(), r.out_of_range, r.boot, r.seq, r.thing_id,
            r.datastream_id, r.observation_id) for r in df.itertuples()]
    assert got == want
    assert sorted(df[df["out_of_range"]]["quantity"]) == ["pm2_5", "pressure"]  # 1500 µg/m³ and 2^24 + 1 hPa: kept
    # a row group per node, each one node's, in pole and node order
    f = pq.ParquetFile(tmp_path / "readings.parquet")
    nodes = sorted({(r[0], r[1]) for r in want})
    assert f.num_row_groups == len(nodes) == 4  # n1 on p1, n2 on p2, n3 on p2 then on p1 (two Things)
    for i, (pole, node) in enumerate(nodes):
        g = f.read_row_group(i, columns=["pole", "node"]).to_pylist()
        assert {(x["pole"], x["node"]) for x in g} == {(pole, node)}
    assert [c.column_index for c in f.metadata.row_group(0).sorting_columns][:2] == [0, 1]
    # the AoT CSV: by timestamp, to the second, node_id pole/node
    csv = pd.read_csv(tmp_path / "data.csv.gz", keep_default_na=False)
    assert list(csv.columns) == ["timestamp", "node_id", "subsystem", "sensor", "parameter", "value_raw", "value_hrf"]
    assert (csv["value_raw"] == "NA").all()
    assert list(csv["timestamp"]) == sorted(csv["timestamp"])
    assert sorted(zip(csv["timestamp"], csv["node_id"], csv["parameter"], csv["value_hrf"])) == sorted(
        (r[2].strftime("%Y/%m/%d %H:%M:%S"), f"{r[0]}/{r[1]}", r[3], r[4]) for r in want)
    sensors = pd.read_csv(tmp_path / "sensors.csv")
    used = set(zip(csv["subsystem"], csv["sensor"], csv["parameter"]))
    assert used <= set(zip(sensors["subsystem"], sensors["sensor"], sensors["parameter"]))
    assert ("i2c", "bme280", "pressure") in used and ("uart", "pms5003", "pm2_5") in used and ("i2s", "noise", "laeq") in used
    nodes_csv = pd.read_csv(tmp_path / "nodes.csv", keep_default_na=False)
    p1 = nodes_csv[nodes_csv["node_id"] == "p1/n1"].iloc[0]
    assert (p1["lat"], p1["lon"], p1["address"], p1["description"]) == (37.5665, 126.978, "Main St / 3rd Ave",
                                                                       "north-east corner")
    # the hourly means as the database keeps them
    with psycopg.connect(city["dsn"]) as conn:
        conn.execute("SET TIME ZONE 'UTC'")
        hours = conn.execute("SELECT t.pole, t.node, q.name, h.hour, h.count, h.mean, h.min, h.max FROM hourly h "
                             "JOIN series se ON se.id = h.series_id JOIN things t ON t.id = se.thing_id JOIN quantities q "
                             "ON q.key = se.key ORDER BY 1, 2, se.key, 4").fetchall()
    hdf = pd.read_parquet(tmp_path / "hourly.parquet")
    assert [(r.pole, r.node, r.quantity, r.hour.to_pydatetime(), r.count, r.mean, r.min, r.max)
            for r in hdf.itertuples()] == hours


def test_late_readings_come_in_a_new_edition_that_provenance_describes(city, tmp_path):
    import pandas as pd

    publish(city, tmp_path, "--late-window", FAR)
    before = len(pd.read_parquet(tmp_path / "readings.parquet"))
    prov = pd.read_csv(tmp_path / "provenance.csv", keep_default_na=False)
    assert list(prov["edition"]) == [1] and list(prov["status"]) == ["open"] and list(prov["late_readings"]) == [0]
    # A node's reading of 23:59:50 that its pole received at 00:10 the next day, loaded later still.
    end = 1790035200  # 2026-09-22T00:00:00Z
    fx.load(city["dsn"], [("p2", "n2", 4, [(500, 610, {"temperature": 12.5, "humidity": 61.0})], end + 600)])
    try:
        text = publish(city, tmp_path, "--late-window", FAR)
        assert "edition 2, 2 readings more than the last" in text and "2 received after the day's end" in text, text
        assert "open: late readings may come until 2036/" in text, text
        df = pd.read_parquet(tmp_path / "readings.parquet")
        assert len(df) == before + 2
        late = df[df["seq"] == 500]
        assert sorted(late["value"]) == [12.5, 61.0] and late["received"].iloc[0] == pd.Timestamp(end + 600, unit="s",
                                                                                                    tz="UTC")
        prov = pd.read_csv(tmp_path / "provenance.csv", keep_default_na=False)
        assert list(prov["edition"]) == [1, 2] and list(prov["added"]) == [before, 2]
        assert list(prov["late_readings"]) == [0, 2] and prov["received_until"].iloc[1] == "2026/09/22 00:10:00"
        assert prov["creation_date"].iloc[1] == "2026/09/22 00:10:00"  # the data's time, not the run's
        # past the late window, the day is final: a new edition says so
        text = publish(city, tmp_path, "--late-window", "0")
        assert "edition 3" in text and "final" in text, text
        prov = pd.read_csv(tmp_path / "provenance.csv", keep_default_na=False)
        assert list(prov["status"]) == ["open", "open", "final"] and list(prov["added"]) == [before, 2, 0]
    finally:
        import psycopg

        with psycopg.connect(city["dsn"]) as conn:
            conn.execute("DELETE FROM samples WHERE seq = 500")


@pytest.mark.parametrize("args, says", [
    (["--day", "2026-13-01"], "--day 2026-13-01: expected a UTC date like 2026-11-30"),
    (["--day", "yesterday"], "--day yesterday: expected a UTC date like 2026-11-30"),
    (["--day", "2026-09-2"], "--day 2026-09-2: expected a UTC date like 2026-11-30"),
    (["--day", "2026-01-01"], "--day 2026-01-01: no readings sampled that UTC day (this database's readings run from "
                              "2026-09-21 to 2026-09-21)"),
    (["--day", DAY, "--license", "WTFPL"], "--license WTFPL: not one openpole knows"),
])
def test_bad_arguments_get_one_line_that_says_what_to_do(city, tmp_path, args, says):
    code, out, err = openpole("city", "publish", "--out", tmp_path / "o", "--db", city["reader"], *args)
    assert code == 2 and err.startswith(f"openpole: {says}") and err.count("\n") == 1, err
    assert "Traceback" not in err and not (tmp_path / "o" / "data.csv.gz").exists()


def test_an_unwritable_out_directory_is_said_in_one_line(city, tmp_path):
    (tmp_path / "file").write_text("not a directory")
    code, out, err = openpole("city", "publish", "--day", DAY, "--out", tmp_path / "file" / "sub", "--db", city["reader"])
    assert code == 2 and err.startswith(f"openpole: --out {tmp_path}/file/sub: cannot write there") \
        and err.count("\n") == 1, err
    code, out, err = openpole("city", "publish", "--day", DAY, "--out", tmp_path / "x", "--db",
                              "postgresql://openpole@127.0.0.1:1/none")
    assert code == 2 and err.startswith("openpole: --db: cannot connect to PostgreSQL") and err.count("\n") == 1, err
