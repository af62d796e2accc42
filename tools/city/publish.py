"""`openpole city publish --day YYYY-MM-DD --out DIR`: one UTC day's open-data files.

The files (docs/data-users.md says what each column means):
- data.csv.gz, nodes.csv, sensors.csv, provenance.csv: the Array of Things digest layout, for the
  tools people already have (AoT's digest README: data ordered by ascending timestamp, `NA` where a
  value is unavailable: the nodes send converted values, so value_raw is always NA);
- readings.parquet and hourly.parquet: the same readings and the day's hourly means, typed
  (timestamps in UTC to the millisecond, floats, booleans), sorted by pole, node and time, one row
  group per node;
- datapackage.json: a Frictionless Data Package describing every file, with its licence, size and
  SHA-256; SHA256SUMS: `sha256sum -c` of them all.

Reproducible: the same day with the same data gives the same bytes. Nothing of the run goes in (no
creation time: provenance's creation_date is the newest receive time the edition holds; gzip's
mtime is 0; rows in a total order; Parquet written by one pinned pyarrow). Everything is read in one
REPEATABLE READ transaction, so the files agree with each other, and streamed: the CSV is PostgreSQL's
COPY piped through gzip, the Parquet one node's day at a time.

Late data: a pole that could not reach the city sends its readings later. A day is `open` in its
provenance until --late-window hours after its end, `final` after; re-publishing into the same
directory adds what came since as a new edition, the earlier editions' rows kept in provenance.csv.
"""

import csv
import datetime
import gzip
import hashlib
import io
import json
import os
from pathlib import Path

from ..errors import UserError
from .db import connect, require_schema

UTC = datetime.timezone.utc
LICENSES = {  # SPDX id -> (title, URL)
    "CC-BY-4.0": ("Creative Commons Attribution 4.0 International", "https://creativecommons.org/licenses/by/4.0/"),
    "CC-BY-SA-4.0": ("Creative Commons Attribution-ShareAlike 4.0 International",
                     "https://creativecommons.org/licenses/by-sa/4.0/"),
    "CC0-1.0": ("Creative Commons Zero v1.0 Universal", "https://creativecommons.org/publicdomain/zero/1.0/"),
    "ODbL-1.0": ("Open Data Commons Open Database License v1.0", "https://opendatacommons.org/licenses/odbl/1-0/"),
    "ODC-By-1.0": ("Open Data Commons Attribution License v1.0", "https://opendatacommons.org/licenses/by/1-0/"),
    "PDDL-1.0": ("Open Data Commons Public Domain Dedication and License v1.0",
                 "https://opendatacommons.org/licenses/pddl/1-0/"),
}
LATE_WINDOW_H = 168.0  # the stream's default max age (city init --max-age-days 7): a batch older is gone anyway
DATA_COLUMNS = ("timestamp", "node_id", "subsystem", "sensor", "parameter", "value_raw", "value_hrf")
NODE_COLUMNS = ("node_id", "project_id", "vsn", "address", "lat", "lon", "description", "start_timestamp",
                "end_timestamp", "pole", "thing_id")
SENSOR_COLUMNS = ("ontology", "subsystem", "sensor", "parameter", "hrf_unit", "hrf_minval", "hrf_maxval", "datasheet")
PROVENANCE_COLUMNS = ("data_format_version", "project_id", "data_start_date", "data_end_date", "creation_date", "url",
                      "edition", "readings", "added", "late_readings", "received_until", "status", "open_until",
                      "license")
READING_FIELDS = (  # (name, arrow type, Frictionless type, description)
    ("pole", "string", "string", "the pole's id"),
    ("node", "string", "string", "the node's id on its pole"),
    ("time", "timestamp", "datetime", "when the node sampled it (UTC)"),
    ("quantity", "string", "string", "the registry's quantity (sensor_specs/quantities.toml)"),
    ("value", "float64", "number", "the value as the node sent it"),
    ("unit", "string", "string", "the quantity's unit"),
    ("sensor", "string", "string", "the sensor model that measured it"),
    ("out_of_range", "bool", "boolean", "outside the quantity's registry range (kept, never altered)"),
    ("time_quality", "string", "string", "synchronised, unsynchronised, implausible or before_reset"),
    ("received", "timestamp", "datetime", "when the pole received it (UTC; empty for readings loaded before "
                                          "receive times were kept)"),
    ("boot", "int64", "integer", "the node's boot count"),
    ("seq", "int64", "integer", "the node message's sequence number in that boot"),
    ("thing_id", "int64", "integer", "the SensorThings Thing: /v1.1/Things(thing_id)"),
    ("datastream_id", "int64", "integer", "the SensorThings Datastream: /v1.1/Datastreams(datastream_id)"),
    ("observation_id", "int64", "integer", "the SensorThings Observation: /v1.1/Observations(observation_id)"),
)
HOURLY_FIELDS = (
    ("pole", "string", "string", "the pole's id"),
    ("node", "string", "string", "the node's id on its pole"),
    ("quantity", "string", "string", "the registry's quantity"),
    ("hour", "timestamp", "datetime", "the UTC hour's start"),
    ("count", "int64", "integer", "readings in the registry's range that hour"),
    ("mean", "float64", "number", "their mean (the energy mean for dB quantities)"),
    ("min", "float64", "number", "their minimum"),
    ("max", "float64", "number", "their maximum"),
    ("first", "timestamp", "datetime", "the hour's first sample time"),
    ("last", "timestamp", "datetime", "the hour's last sample time"),
    ("unit", "string", "string", "the quantity's unit"),
    ("thing_id", "int64", "integer", "the SensorThings Thing"),
    ("datastream_id", "int64", "integer", "the SensorThings Datastream of these hourly means (the readings' + 2^31)"),
)


def stamp(t):
    """Array of Things' time format, 2026/11/30 12:00:05."""
    return f"{t.year:04d}/{t.month:02d}/{t.day:02d} {t.hour:02d}:{t.minute:02d}:{t.second:02d}"


def parse_day(text):
    try:
        d = datetime.date.fromisoformat(text)
        if len(text) != 10:
            raise ValueError
    except (ValueError, TypeError):
        raise UserError(f"--day {text}: expected a UTC date like 2026-11-30") from None
    return datetime.datetime(d.year, d.month, d.day, tzinfo=UTC)


def _series_cte():
    """WITH se: each series (id, thing_id, key) with its sensor's stem and bus (the AoT subsystem),
    the Sensor the API gives its Datastream."""
    from openpole.spec.registry import REGISTRY

    from .sta.mapping import SENSOR_IDS, _sensor_choice, lit

    stem = {i: s for s, i in SENSOR_IDS.items()}
    bus = {s: REGISTRY.specs.sensors[s]["bus"] if s in REGISTRY.specs.sensors else "i2s" for s in SENSOR_IDS}
    choice = _sensor_choice().format(a="se")
    return (f"WITH se AS MATERIALIZED (SELECT se.id, se.thing_id, se.key, "
            f"CASE {choice} {' '.join(f'WHEN {i} THEN {lit(stem[i])}' for i in sorted(stem))} END AS sensor, "
            f"CASE {choice} {' '.join(f'WHEN {i} THEN {lit(bus[stem[i]])}' for i in sorted(stem))} END AS bus "
            f"FROM series se) ")


TQ_SQL = "CASE s.tq WHEN 0 THEN 'synchronised' WHEN 1 THEN 'unsynchronised' WHEN 2 THEN 'implausible' " \
         "WHEN 3 THEN 'before_reset' END"
MS = "(extract(epoch FROM {}) * 1000)::bigint"
# One node's (thing) samples of the day, each reading of them: by time, then boot, seq and key.
# `se` is the series with their sensor and bus, worked out once per series (SERIES), not per reading.
VALUES = ("CROSS JOIN LATERAL unnest(coalesce(s.vals::text, s.vals8::text)::float8[]) WITH ORDINALITY AS v(value, key) "
          "JOIN se ON se.thing_id = s.thing_id AND se.key = v.key JOIN quantities q ON q.key = v.key")


def _write_csv(path, header, rows):
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    path.write_bytes(buf.getvalue().encode())


def _arrow_types(fields):
    import pyarrow as pa

    ts = pa.timestamp("ms", tz="UTC")
    types = {"string": pa.string(), "timestamp": ts, "float64": pa.float64(), "bool": pa.bool_(), "int64": pa.int64()}
    return pa.schema([pa.field(n, types[t], nullable=True) for n, t, _, _ in fields])


def _node_table(conn, sql, params, fields):
    """COPY of one node's rows as CSV (timestamps as epoch milliseconds), parsed by pyarrow into the
    fields' types."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    buf = io.BytesIO()
    with conn.cursor().copy(f"COPY ({sql}) TO STDOUT (FORMAT csv)", params) as cp:
        for chunk in cp:
            buf.write(chunk)
    schema = _arrow_types(fields)
    raw = {n: (pa.int64() if t == "timestamp" else schema.field(n).type) for n, t, _, _ in fields}
    if not buf.tell():
        return schema.empty_table()
    buf.seek(0)
    t = pacsv.read_csv(buf, read_options=pacsv.ReadOptions(column_names=[f[0] for f in fields], use_threads=False),
                       convert_options=pacsv.ConvertOptions(column_types=raw, strings_can_be_null=False,
                                                            true_values=["t"], false_values=["f"],
                                                            null_values=[""]))
    return t.cast(schema)


class Publication:
    def __init__(self, dsn, day, out, license="CC-BY-4.0", license_url=None, project="openpole", url="",
                 late_window_h=LATE_WINDOW_H, now=None):
        self.dsn, self.d0, self.out = dsn, day, Path(out)
        self.d1 = day + datetime.timedelta(days=1)
        if license not in LICENSES and not license_url:
            raise UserError(f"--license {license}: not one openpole knows ({', '.join(LICENSES)}); give its address "
                            f"with --license-url too")
        title, path = LICENSES.get(license, (license, None))
        self.license = {"name": license, "title": title, "path": license_url or path}
        self.project, self.url, self.late_window_h = project, url, late_window_h
        self.now = now or datetime.datetime.now(UTC)

    def _check_out(self):
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            probe = self.out / ".openpole-publish-probe"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as e:
            raise UserError(f"--out {self.out}: cannot write there ({e.strerror or e}): give a directory you may "
                            f"write") from None

    def run(self):
        """-> a summary dict: day, readings, edition, status, files {name: bytes}."""
        import psycopg

        self._check_out()
        with connect(self.dsn) as conn:
            require_schema(conn)
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            conn.execute("SET LOCAL TIME ZONE 'UTC'")
            conn.execute("SET LOCAL jit = off")
            # a day is minutes of work on a big city: not the API's role timeout (openpole_reader's 30 s)
            conn.execute("SET LOCAL statement_timeout = 0")
            try:
                return self._publish(conn)
            except psycopg.OperationalError as e:
                raise UserError(f"--db: PostgreSQL stopped the publication: {' '.join(str(e).split())[:200]} "
                                f"(run it again)") from None

    def _day(self, extra=""):
        return f"s.time >= %(d0)s AND s.time < %(d1)s{extra}"

    def _publish(self, conn):
        p = {"d0": self.d0, "d1": self.d1}
        things = conn.execute(
            'SELECT t.id, t.pole COLLATE "C", t.node COLLATE "C", t.first_seen FROM things t WHERE EXISTS '
            f"(SELECT 1 FROM samples s WHERE s.thing_id = t.id AND {self._day()}) ORDER BY 2, 3", p).fetchall()
        if not things:
            span = conn.execute("SELECT min(day), max(day) FROM daily").fetchone()
            known = (f"this database's readings run from {span[0]:%Y-%m-%d} to {span[1]:%Y-%m-%d}" if span[0]
                     else "this database holds no readings yet")
            raise UserError(f"--day {self.d0:%Y-%m-%d}: no readings sampled that UTC day ({known})")
        counts = conn.execute(
            f"SELECT count(*), count(*) FILTER (WHERE s.received >= %(d1)s), max(s.received) FROM things t "
            f"CROSS JOIN LATERAL (SELECT s.* FROM samples s WHERE s.thing_id = t.id AND {self._day()}) s "
            f"CROSS JOIN LATERAL unnest(coalesce(s.vals::text, s.vals8::text)::float8[]) AS v(value) "
            f"WHERE v.value IS NOT NULL", p).fetchone()
        readings, late, received_until = counts
        files = {}
        cte = _series_cte()
        files["data.csv.gz"] = self._data_csv(conn, p, cte)
        files["readings.parquet"], files["hourly.parquet"] = self._parquet(conn, p, things, cte)
        files["nodes.csv"] = self._nodes(conn, things)
        files["sensors.csv"] = self._sensors()
        edition = self._provenance(readings, late, received_until)
        files["provenance.csv"] = self._file_info("provenance.csv")
        self._datapackage(files, edition)
        files["datapackage.json"] = self._file_info("datapackage.json")
        self._sums(files)
        return {"day": f"{self.d0:%Y-%m-%d}", "readings": readings, "late": late, "edition": edition["edition"],
                "added": edition["added"], "status": edition["status"], "open_until": edition["open_until"],
                "files": {n: f["bytes"] for n, f in files.items()}}

    def _file_info(self, name):
        sha, size = hashlib.sha256(), 0
        with open(self.out / name, "rb") as f:
            while chunk := f.read(1 << 20):
                sha.update(chunk)
                size += len(chunk)
        return {"bytes": size, "sha256": sha.hexdigest()}

    def _replace(self, name):
        """(a temporary path beside name, a function putting it in place)."""
        tmp = self.out / f".{name}.tmp"
        return tmp, lambda: os.replace(tmp, self.out / name)

    def _data_csv(self, conn, p, cte):
        sql = (f"{cte}SELECT to_char(s.time, 'YYYY/MM/DD HH24:MI:SS'), t.pole || '/' || t.node, se.bus, se.sensor, q.name, "
               f"'NA', v.value FROM things t CROSS JOIN LATERAL (SELECT s.* FROM samples s WHERE s.thing_id = t.id "
               f"AND {self._day()}) s {VALUES} WHERE v.value IS NOT NULL "
               f'ORDER BY s.time, t.pole COLLATE "C", t.node COLLATE "C", s.boot, s.seq, v.key')
        tmp, done = self._replace("data.csv.gz")
        with open(tmp, "wb") as raw:
            with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=6) as gz:
                gz.write((",".join(DATA_COLUMNS) + "\n").encode())
                with conn.cursor().copy(f"COPY ({sql}) TO STDOUT (FORMAT csv)", p) as cp:
                    for chunk in cp:
                        gz.write(chunk)
        done()
        return self._file_info("data.csv.gz")

    def _parquet(self, conn, p, things, cte):
        import pyarrow.parquet as pq

        readings = (f"{cte}SELECT t.pole, t.node, {MS.format('s.time')}, q.name, v.value, q.unit, se.sensor, "
                    f"v.key = ANY (coalesce(s.flagged, '{{}}')), {TQ_SQL}, {MS.format('s.received')}, s.boot, s.seq, "
                    f"t.id, se.id, s.id * 256 + v.key FROM things t JOIN samples s ON s.thing_id = t.id {VALUES} "
                    f"WHERE t.id = %(thing)s AND {self._day()} AND v.value IS NOT NULL ORDER BY s.time, s.boot, "
                    f"s.seq, v.key")
        hourly = (f"SELECT t.pole, t.node, q.name, {MS.format('h.hour')}, h.count, h.mean, h.min, h.max, "
                  f"{MS.format('h.first')}, {MS.format('h.last')}, q.unit, t.id, h.series_id + 2147483648 "
                  f"FROM series se JOIN things t ON t.id = se.thing_id JOIN quantities q ON q.key = se.key "
                  f"JOIN hourly h ON h.series_id = se.id AND h.hour >= %(d0)s AND h.hour < %(d1)s "
                  f"WHERE se.thing_id = %(thing)s ORDER BY se.key, h.hour")
        out = []
        for name, sql, fields, order in (("readings.parquet", readings, READING_FIELDS, ("time", "seq")),
                                         ("hourly.parquet", hourly, HOURLY_FIELDS, ("quantity", "hour"))):
            schema = _arrow_types(fields)
            cols = [f[0] for f in fields]
            sorting = [pq.SortingColumn(cols.index(c)) for c in ("pole", "node") + order]
            tmp, done = self._replace(name)
            with pq.ParquetWriter(tmp, schema, compression="zstd", compression_level=3, sorting_columns=sorting,
                                  write_statistics=True, store_schema=True) as w:
                for thing, _, _, _ in things:
                    t = _node_table(conn, sql, dict(p, thing=thing), fields)
                    if t.num_rows:
                        w.write_table(t, row_group_size=t.num_rows)  # a row group per node
            done()
            out.append(self._file_info(name))
        return out

    def _nodes(self, conn, things):
        rows = []
        for thing, pole, node, first_seen in things:
            loc = conn.execute("SELECT address, lat, lon, description FROM locations WHERE pole = %s "
                               "ORDER BY valid_from < %s DESC, CASE WHEN valid_from < %s THEN valid_from END DESC, "
                               "valid_from, id DESC LIMIT 1", (pole, self.d1, self.d1)).fetchone()
            address, lat, lon, desc = loc or ("", "", "", "")
            rows.append((f"{pole}/{node}", self.project, node, address or "", lat, lon, desc or "", stamp(first_seen),
                         "", pole, thing))
        _write_csv(self.out / "nodes.csv", NODE_COLUMNS, rows)
        return self._file_info("nodes.csv")

    def _sensors(self):
        from openpole.spec.registry import REGISTRY

        from .sta.mapping import NOISE_QUANTITIES

        specs = REGISTRY.specs
        by_name = {q["name"]: q for q in specs.quantities}
        rows = []
        for stem, s in sorted(specs.sensors.items()):
            for m in s.get("measures", []):
                rows.append((stem, s["bus"], m["quantity"], s.get("datasheet", "")))
        rows += [("noise", "i2s", q, "") for q in NOISE_QUANTITIES]
        out = []
        for stem, bus, q, sheet in rows:
            qq = by_name[q]
            out.append((f"/sensing/{qq['kind']}/{q}", bus, stem, q, specs.units[qq["unit"]]["symbol"], qq["min"],
                        qq["max"], sheet))
        _write_csv(self.out / "sensors.csv", SENSOR_COLUMNS, sorted(out, key=lambda r: (r[2], r[3])))
        return self._file_info("sensors.csv")

    def _provenance(self, readings, late, received_until):
        """This edition's row, after the earlier editions' rows from the provenance.csv already in --out
        (same day and project); the same data as the last edition gives that edition again."""
        open_until = self.d1 + datetime.timedelta(hours=self.late_window_h)
        earlier = []
        path = self.out / "provenance.csv"
        if path.exists():
            try:
                with open(path, newline="") as f:
                    prev = list(csv.DictReader(f))
                if all(r.get("data_start_date") == stamp(self.d0) and r.get("project_id") == self.project
                       and r.get("edition", "").isdigit() for r in prev):
                    earlier = prev
            except (OSError, UnicodeDecodeError, csv.Error):
                earlier = []
        row = {"data_format_version": "2", "project_id": self.project, "data_start_date": stamp(self.d0),
               "data_end_date": stamp(self.d1 - datetime.timedelta(seconds=1)),
               "creation_date": stamp(received_until) if received_until else "", "url": self.url,
               "readings": str(readings), "late_readings": str(late),
               "received_until": stamp(received_until) if received_until else "",
               "status": "open" if self.now < open_until else "final", "open_until": stamp(open_until),
               "license": self.license["name"]}
        same = ("readings", "late_readings", "received_until", "status", "license", "url")
        if earlier and all(earlier[-1].get(k) == row[k] for k in same):
            row = earlier.pop()  # nothing new: this is the last edition again
        else:
            row["edition"] = str(len(earlier) + 1)
            row["added"] = str(readings - int(earlier[-1]["readings"]) if earlier and
                               earlier[-1].get("readings", "").isdigit() else readings)
        _write_csv(path, PROVENANCE_COLUMNS, [[r.get(c, "") for c in PROVENANCE_COLUMNS] for r in earlier + [row]])
        return {"edition": int(row["edition"]), "added": int(row["added"] or 0), "status": row["status"],
                "open_until": row["open_until"]}

    def _datapackage(self, files, edition):
        def schema(fields):
            return {"fields": [{"name": n, "type": ft, "description": d} for n, _, ft, d in fields]}

        def csv_schema(cols, types=None):
            return {"fields": [{"name": c, "type": (types or {}).get(c, "string")} for c in cols]}

        day = f"{self.d0:%Y-%m-%d}"
        res = [
            ("data.csv.gz", "csv", "text/csv", "The day's readings, Array of Things digest layout, by timestamp",
             csv_schema(DATA_COLUMNS, {"value_hrf": "number"})),
            ("nodes.csv", "csv", "text/csv", "The nodes with readings that day, their poles' positions",
             csv_schema(NODE_COLUMNS, {"lat": "number", "lon": "number", "thing_id": "integer"})),
            ("sensors.csv", "csv", "text/csv", "The sensors and their quantities (parameters), units and ranges",
             csv_schema(SENSOR_COLUMNS, {"hrf_minval": "number", "hrf_maxval": "number"})),
            ("provenance.csv", "csv", "text/csv", "This day's editions: what each held, open or final",
             csv_schema(PROVENANCE_COLUMNS, {"edition": "integer", "readings": "integer", "added": "integer",
                                             "late_readings": "integer"})),
            ("readings.parquet", "parquet", "application/vnd.apache.parquet",
             "The day's readings, typed, by pole, node and time; a row group per node", schema(READING_FIELDS)),
            ("hourly.parquet", "parquet", "application/vnd.apache.parquet",
             "The day's hourly means per node and quantity; a row group per node", schema(HOURLY_FIELDS)),
        ]
        resources = []
        for name, fmt, media, desc, sch in res:
            r = {"name": name.split(".")[0], "path": name, "format": fmt, "mediatype": media, "description": desc,
                 "bytes": files[name]["bytes"], "hash": f"sha256:{files[name]['sha256']}", "schema": sch}
            if fmt == "csv":
                r["encoding"] = "utf-8"
                r["profile"] = "tabular-data-resource"
            if name.endswith(".gz"):
                r["compression"] = "gz"
            resources.append(r)
        pkg = {"profile": "data-package", "name": f"{self.project.lower()}-{day}",
               "title": f"{self.project} street-pole sensor readings, {day} (UTC)",
               "description": f"Every reading the city's poles sent for {day} UTC, raw and timestamped, with the "
                              f"hourly means; edition {edition['edition']}, {edition['status']} (late readings may "
                              f"come until {edition['open_until']} UTC)" if edition["status"] == "open" else
                              f"Every reading the city's poles sent for {day} UTC, raw and timestamped, with the "
                              f"hourly means; edition {edition['edition']}, final",
               "version": str(edition["edition"]), "licenses": [{k: v for k, v in self.license.items() if v}],
               "temporal": {"start": f"{day}T00:00:00Z", "end": f"{self.d1:%Y-%m-%d}T00:00:00Z"},
               "resources": resources}
        if self.url:
            pkg["homepage"] = self.url
        (self.out / "datapackage.json").write_text(json.dumps(pkg, indent=2, ensure_ascii=False) + "\n")

    def _sums(self, files):
        (self.out / "SHA256SUMS").write_text("".join(f"{files[n]['sha256']}  {n}\n" for n in sorted(files)))


def publish(dsn, day, out, **kw):
    return Publication(dsn, parse_day(day), out, **kw).run()
