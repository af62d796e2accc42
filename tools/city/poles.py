"""`openpole city poles import FILE.csv`: the city's registry of poles into `poles` and `locations`.

A line is `pole id, lat, lon, address, description` (address and description may be left out; a
first line naming the columns is skipped). Importing a file again changes nothing; a pole whose
position changed gets a new `locations` row from now on (its earlier ones stay, for the API's
HistoricalLocations); a new address or description updates the current one. A line that cannot be
taken is refused with a one-line reason naming it, and the others are imported.
"""

import csv
import io
import math

from openpole.wire.batch import POLE_ID

from .db import connect, require_schema

MAX_TEXT = 1000  # characters in an address or description
HEADER = ("pole", "lat", "lon", "address", "description")


def _number(text, what, low, high):
    try:
        v = float(text)
    except ValueError:
        raise ValueError(f"{what} {text[:40]!r} is not a number") from None
    if not math.isfinite(v) or not low <= v <= high:
        raise ValueError(f"{what} {text[:40]} is outside {low:g} to {high:g} degrees")
    return v


def _text(text, what):
    if len(text) > MAX_TEXT:
        raise ValueError(f"the {what} of {len(text)} characters is over {MAX_TEXT}")
    if "\x00" in text:
        raise ValueError(f"the {what} holds a NUL character")
    return text


def parse(text):
    """CSV text -> ({pole: (lat, lon, address, description)}, [reasons for the lines refused])."""
    poles, refused, first_line = {}, [], {}
    reader = csv.reader(io.StringIO(text.lstrip("\ufeff")))
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as e:  # a field past the csv module's limit: the file cannot be read on from here
            refused.append(f"line {reader.line_num}: {e}; the lines after it are not read")
            break
        number = reader.line_num
        if not row or all(not c.strip() for c in row):
            continue
        cells = [c.strip() for c in row]
        if number == 1 and cells[0].lower().replace("_", " ") in ("pole", "pole id", "id") and \
                [c.lower() for c in cells[1:3]] == ["lat", "lon"]:
            continue  # the header
        try:
            if not 3 <= len(cells) <= 5:
                raise ValueError(f"{len(cells)} columns, not 3 to 5 (pole id, lat, lon, address, description)")
            pole = cells[0]
            if not POLE_ID.fullmatch(pole):
                raise ValueError(f"pole id {pole[:80]!r}: 1-64 of a-z, A-Z, 0-9, '.', '_' and '-' (as the poles send it)")
            if pole in first_line:
                raise ValueError(f"pole {pole} is on line {first_line[pole]} already")
            lat = _number(cells[1], "lat", -90, 90)
            lon = _number(cells[2], "lon", -180, 180)
            cells += [""] * (5 - len(cells))
            poles[pole] = (lat, lon, _text(cells[3], "address"), _text(cells[4], "description"))
            first_line[pole] = number
        except ValueError as e:
            refused.append(f"line {number}: {e}")
    return poles, refused


def import_csv(dsn, path):
    """Import the file into the database: ({"new": first positions, "moved", "updated": text only, "same":
    counts}, [refused lines])."""
    poles, refused = parse(path.read_text(encoding="utf-8"))
    done = {"new": 0, "moved": 0, "updated": 0, "same": 0}
    with connect(dsn) as conn:
        require_schema(conn)
        with conn.transaction(), conn.cursor() as cur:
            cur.execute("LOCK TABLE locations IN SHARE ROW EXCLUSIVE MODE")  # two imports at once: one after the other
            have = {p: (lat, lon, a, d) for p, lat, lon, a, d in cur.execute(
                "SELECT pole, lat, lon, address, description FROM poles WHERE pole = ANY(%s)", (list(poles),))}
            for pole in sorted(poles):
                lat, lon, address, description = want = poles[pole]
                old = have.get(pole)
                if old == want:
                    done["same"] += 1
                    continue
                cur.execute("INSERT INTO poles (pole, lat, lon, address, description) VALUES (%s, %s, %s, %s, %s) "
                            "ON CONFLICT (pole) DO UPDATE SET lat = excluded.lat, lon = excluded.lon, "
                            "address = excluded.address, description = excluded.description", (pole, *want))
                if old is None or old[0] is None:  # its first position: where it has stood since its first batch
                    cur.execute("INSERT INTO locations (pole, lat, lon, address, description, valid_from) SELECT %s, "
                                "%s, %s, %s, %s, least(now(), first_seen) FROM poles WHERE pole = %s", (pole, *want, pole))
                    done["new"] += 1
                elif old[:2] != (lat, lon):
                    cur.execute("INSERT INTO locations (pole, lat, lon, address, description) VALUES (%s, %s, %s, %s, %s)",
                                (pole, *want))
                    done["moved"] += 1
                else:  # the same place, described anew: the current location says so too
                    cur.execute("UPDATE locations SET address = %s, description = %s WHERE id = (SELECT max(id) FROM "
                                "locations WHERE pole = %s)", (address, description, pole))
                    done["updated"] += 1
    return done, refused
