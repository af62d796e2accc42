"""`openpole receiver export --data DIR --out DIR`: the receiver's records in the Array of Things
layout (data.csv.gz, nodes.csv, sensors.csv, provenance.csv), for the tools people already have."""

import csv
import datetime
import gzip
from pathlib import Path

from openpole import paths
from openpole.errors import UserError
from openpole.spec import model

from .store import connect, readings

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
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    specs = model.load(paths.SENSOR_SPECS, paths.BOARD_DEFS)
    sensor = _sensor_of(specs)
    db = connect(data_dir, readonly=True)
    owners = db.cursor()

    def owner(m):
        row = owners.execute("SELECT batch FROM messages WHERE pole = ? AND node = ? AND boot = ? AND seq = ?", m[:4]).fetchone()
        return row[0] if row else None

    n, first, last = 0, None, None
    with gzip.open(out / "data.csv.gz", "wt", newline="") as f:
        w = csv.writer(f)
        w.writerow(DATA_COLUMNS)
        # Batch by batch as they arrived (a batch holds seconds of data), by time within each.
        batches = db.execute("SELECT id, received_ns, duplicates, body FROM batches ORDER BY received_ns")
        for row in batches:
            for r in sorted(readings([row], owner), key=lambda r: (r["time"], r["pole"], r["node"], r["name"])):
                t = datetime.datetime.fromtimestamp(r["time"], datetime.timezone.utc)
                stamp = t.strftime("%Y/%m/%d %H:%M:%S")
                w.writerow((stamp, r["node"], r["pole"], sensor.get(r["name"], "node"), r["name"], r["value"], r["value"]))
                first = min(first or t, t)
                last = max(last or t, t)
                n += 1
    with open(out / "nodes.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(("node_id", "project_id", "vsn", "address", "lat", "lon", "description"))
        for pole, node in db.execute("SELECT pole, node FROM nodes ORDER BY pole, node"):
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
        fmt = "%Y/%m/%d %H:%M:%S"
        w.writerow(("2", "openpole", first.strftime(fmt) if first else "", last.strftime(fmt) if last else "",
                    datetime.datetime.now(datetime.timezone.utc).strftime("%Y/%m/%d %H:%M:%S"), ""))
    db.close()
    return n
