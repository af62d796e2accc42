"""`openpole city poles import FILE.csv` against a real PostgreSQL: the registry's rows in `poles`,
each position in `locations`, idempotent, a moved pole with a new location, and each bad line
refused in one line naming it while the good ones are imported."""

import subprocess
import sys

import pytest
from pgcluster import PgServer


def openpole(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "openpole", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def pg():
    server = PgServer()
    assert openpole("city", "init", "--db", server.dsn).returncode == 0
    yield server
    server.stop()


def rows(pg, sql):
    import psycopg

    with psycopg.connect(pg.dsn) as conn:
        return conn.execute(sql).fetchall()


def test_import_is_idempotent_and_a_move_is_a_new_location(pg, tmp_path):
    import psycopg

    with psycopg.connect(pg.dsn) as conn:  # a pole that sent batches before the city registered it
        conn.execute("INSERT INTO poles (pole, first_seen, last_batch) VALUES ('pole-3', '2026-01-02 03:04+00', now())")
    f = tmp_path / "poles.csv"
    f.write_text("\ufeffpole_id,lat,lon,address,description\n"
                 "pole-1,37.5665,126.9780,\"Main St / 3rd Ave, NE corner\",street light\n"
                 "pole-2,-33.8688,151.2093\n"
                 "\n"
                 "pole-3,48.8566,2.3522,Rue de Rivoli 1,\n")
    r = openpole("city", "poles", "import", "--db", pg.dsn, f)
    assert r.returncode == 0 and r.stderr == "", r.stdout + r.stderr
    assert "3 poles placed, 0 moved (a new location each), 0 described anew, 0 unchanged, 0 lines refused" in r.stdout
    assert rows(pg, "SELECT pole, lat, lon, address, description FROM poles ORDER BY pole") == [
        ("pole-1", 37.5665, 126.978, "Main St / 3rd Ave, NE corner", "street light"),
        ("pole-2", -33.8688, 151.2093, "", ""), ("pole-3", 48.8566, 2.3522, "Rue de Rivoli 1", "")]
    # pole-3 has stood there since its first batch
    assert rows(pg, "SELECT valid_from = '2026-01-02 03:04+00' FROM locations WHERE pole = 'pole-3'") == [(True,)]

    r = openpole("city", "poles", "import", "--db", pg.dsn, f)  # again: nothing changes
    assert r.returncode == 0 and "0 poles placed, 0 moved" in r.stdout and "3 unchanged" in r.stdout, r.stdout
    assert rows(pg, "SELECT count(*) FROM locations") == [(3,)]

    f.write_text("pole-1,37.5670,126.9785,\"Main St / 3rd Ave, NE corner\",street light\n"  # moved a few metres
                 "pole-2,-33.8688,151.2093,George St 1,\n")  # described anew, where it stood
    r = openpole("city", "poles", "import", "--db", pg.dsn, f)
    assert r.returncode == 0 and "0 poles placed, 1 moved (a new location each), 1 described anew" in r.stdout, r.stdout
    history = rows(pg, "SELECT lat, lon FROM locations WHERE pole = 'pole-1' ORDER BY valid_from, id")
    assert history == [(37.5665, 126.978), (37.567, 126.9785)]  # the old position stays, the newest is current
    assert rows(pg, "SELECT lat, address FROM locations WHERE pole = 'pole-2'") == [(-33.8688, "George St 1")]
    assert rows(pg, "SELECT lat FROM poles WHERE pole = 'pole-1'") == [(37.567,)]


def test_each_bad_line_is_refused_in_one_line_and_the_good_ones_are_imported(pg, tmp_path):
    f = tmp_path / "poles.csv"
    f.write_text("good-1,10,20,A,B\n"
                 "bad id!,10,20\n"
                 "bad-lat,91,20\n"
                 "bad-lon,10,-180.5\n"
                 "bad-num,north,20\n"
                 "bad-nan,nan,20\n"
                 "good-1,11,21\n"
                 "too-many,1,2,a,b,c\n"
                 "too-few,1\n"
                 "nul,1,2,a\x00b\n"
                 "good-2,-90,180\n")
    r = openpole("city", "poles", "import", "--db", pg.dsn, f)
    assert r.returncode == 1, r.stdout + r.stderr
    lines = r.stderr.splitlines()
    want = ["line 2: pole id 'bad id!': 1-64 of", "line 3: lat 91 is outside -90 to 90 degrees",
            "line 4: lon -180.5 is outside -180 to 180 degrees", "line 5: lat 'north' is not a number",
            "line 6: lat nan is outside -90 to 90 degrees", "line 7: pole good-1 is on line 1 already",
            "line 8: 6 columns, not 3 to 5", "line 9: 2 columns, not 3 to 5", "line 10: the address holds a NUL character"]
    assert len(lines) == len(want), r.stderr
    for line, w in zip(lines, want):
        assert line.startswith(f"openpole: {f}: {w}"), (line, w)
    assert "2 poles placed" in r.stdout and "9 lines refused" in r.stdout, r.stdout
    assert rows(pg, "SELECT pole, lat, lon FROM poles WHERE pole LIKE 'good-%' ORDER BY pole") == [
        ("good-1", 10.0, 20.0), ("good-2", -90.0, 180.0)]
    r = openpole("city", "poles", "import", "--db", pg.dsn, tmp_path / "none.csv")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "none.csv" in r.stderr, r.stderr
    f.write_bytes(b"\xff\xfe not text")
    r = openpole("city", "poles", "import", "--db", pg.dsn, f)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "not text" in r.stderr, r.stderr
