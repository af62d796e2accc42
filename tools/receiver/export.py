"""`openpole receiver export --data DIR --out DIR`: the receiver's records in the Array of Things
layout (data.csv.gz, nodes.csv, sensors.csv, provenance.csv), for the tools people already have."""

import csv
import datetime
import gzip
from pathlib import Path

from openpole import paths
from openpole.errors import UserError
from openpole.spec import model

from .store import BATCHES, connect, owner, readings

def stamp(t):
    """Array of Things' time format, 2026/11/30 12:00:05; four-digit years always (strftime's %Y
    writes year 1 as "1")."""
    return f"{t.year:04d}/{t.month:02d}/{t.day:02d} {t.hour:02d}:{t.minute:02d}:{t.second:02d}"
DATA_COLUMNS = ("timestamp", "node_id", "subsystem", "sensor", "parameter", "value_raw", "value_hrf")


def _sensor_of(specs):
    """quantity name -> the sensor model that measures it (first in sensor_specs/), 'noise' for levels."""
    out = {}
    for stem, t in specs.sensors.items():
        for m in t["measures"]:
            out.setdefault(m["quantity"], stem)
    for q in specs.quantities:
        out.setdefault(q["name"], "noise" if q["kind"] == "level" else "node")
    return out


def export(data_dir, out_dir):
    db_path = Path(data_dir) / "receiver.sqlite"
    if not db_path.exists():
        raise UserError(f"no receiver data in {data_dir}: pass the --data directory the receiver used")
    db = connect(data_dir, readonly=True)
    owners = db.cursor()  # asked while the batch cursor is open

    def rows():
        # Batch by batch as they arrived (a batch holds seconds of data), by time within each.
        for row in db.execute(BATCHES):
            for r in sorted(readings([row], lambda m: owner(owners, m)), key=lambda r: (r["time"], r["pole"], r["node"], r["name"])):
                yield datetime.datetime.fromtimestamp(r["time"], datetime.timezone.utc), r["pole"], r["node"], r["name"], r["value"]

    try:
        return write_aot(out_dir, rows(), db.execute("SELECT pole, node FROM nodes ORDER BY pole, node").fetchall())
    finally:
        db.close()


def write_aot(out_dir, rows, nodes):
    """The Array of Things layout in out_dir. rows: (time as an aware datetime, pole, node, quantity,
    value) in the order to write; nodes: (pole, node). Returns the number of rows. The SQLite
    receiver and the city's PostgreSQL (`openpole city export`) both write through it."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    specs = model.load(paths.SENSOR_SPECS, paths.BOARD_DEFS)
    sensor = _sensor_of(specs)
    n, first, last = 0, None, None
    with gzip.open(out / "data.csv.gz", "wt", newline="") as f:
        w = csv.writer(f)
        w.writerow(DATA_COLUMNS)
        for t, pole, node, name, value in rows:
            w.writerow((stamp(t), node, pole, sensor.get(name, "node"), name, value, value))
            first = min(first or t, t)
            last = max(last or t, t)
            n += 1
    with open(out / "nodes.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(("node_id", "project_id", "vsn", "address", "lat", "lon", "description"))
        for pole, node in nodes:
            w.writerow((node, "openpole", node, "", "", "", f"on pole {pole}"))
    with open(out / "sensors.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(("ontology", "subsystem", "sensor", "parameter", "hrf_unit", "hrf_minval", "hrf_maxval", "datasheet"))
        for q in specs.quantities:
            s = sensor[q["name"]]
            sheet = specs.sensors.get(s, {}).get("datasheet", "")
            w.writerow((f"/sensing/{q['kind']}/{q['name']}", "openpole", s, q["name"], specs.units[q["unit"]]["symbol"],
                        q["min"], q["max"], sheet))
    with open(out / "provenance.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(("data_format_version", "project_id", "data_start_date", "data_end_date", "creation_date", "url"))
        w.writerow(("2", "openpole", stamp(first) if first else "", stamp(last) if last else "",
                    stamp(datetime.datetime.now(datetime.timezone.utc)), ""))
    return n
