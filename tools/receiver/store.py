"""The reference receiver's storage: SQLite. Each batch is kept as the pole sent it, unwrapped from
its signature once verified (the CBOR body); a message index de-duplicates on (pole, node, boot,
seq) and says which batch holds each message's first copy. Readings are read back out of the bodies
(`readings()`): one index row per node message instead of one table row per reading is what lets
the receiver keep pace."""

import logging
import sqlite3
import threading
import time
from pathlib import Path

from openpole.wire import batch as upstream
from openpole.wire import sign
from openpole.errors import UserError

log = logging.getLogger("openpole.receiver")

SCHEMA = """
CREATE TABLE IF NOT EXISTS batches (
    id BLOB PRIMARY KEY, pole TEXT NOT NULL, received_ns INTEGER NOT NULL, records INTEGER NOT NULL,
    duplicates INTEGER NOT NULL, body BLOB NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS messages (
    pole TEXT NOT NULL, node TEXT NOT NULL, boot INTEGER NOT NULL, seq INTEGER NOT NULL, batch BLOB NOT NULL,
    readings INTEGER NOT NULL, PRIMARY KEY (pole, node, boot, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS latest (
    pole TEXT NOT NULL, node TEXT NOT NULL, name TEXT NOT NULL, unit TEXT, value NOT NULL, time REAL NOT NULL,
    PRIMARY KEY (pole, node, name)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS nodes (pole TEXT NOT NULL, node TEXT NOT NULL, PRIMARY KEY (pole, node)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS minutes (
    pole TEXT NOT NULL, node TEXT NOT NULL, quantity TEXT NOT NULL, start INTEGER NOT NULL,
    count INTEGER NOT NULL, mean REAL NOT NULL, min REAL NOT NULL, max REAL NOT NULL,
    PRIMARY KEY (pole, node, quantity, start)
) WITHOUT ROWID;
"""


def connect(data_dir, readonly=False):
    path = Path(data_dir) / "receiver.sqlite"
    if readonly:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    old = db.execute("SELECT 1 FROM sqlite_master WHERE name = 'records' AND type = 'table'").fetchone()
    if old:
        db.close()
        raise UserError(f"{path} is in the receiver's first layout (a row per reading): "
                        "export it with that release, or give this receiver a new --data directory")
    return db


class ReceiverStore:
    def __init__(self, data_dir):
        self._lock = threading.Lock()
        self.db = connect(data_dir)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")  # a 2xx promises the batch is on disk
        self.db.executescript(SCHEMA)

    def _bump(self, name, n):
        self.db.execute(
            "INSERT INTO counters(name, value) VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET value = value + ?", (name, n, n)
        )

    def add_batch(self, batch_id, pole, body, messages, minutes=()):
        """Store a verified batch (its CBOR body and its decoded messages, batch.decode_messages);
        returns (new readings, duplicate readings). Idempotent by batch id and by message."""
        now = time.time_ns()
        total = sum(len(m[5]) for m in messages)
        with self._lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                if self.db.execute("SELECT 1 FROM batches WHERE id = ?", (batch_id,)).fetchone():
                    self._bump("batches_duplicate", 1)
                    self._bump("records_received", total)
                    self.db.execute("COMMIT")
                    return 0, total
                before = self.db.total_changes
                self.db.executemany("INSERT OR IGNORE INTO messages VALUES (?, ?, ?, ?, ?, ?)",
                                    [(m[0], m[1], m[2], m[3], batch_id, len(m[5])) for m in messages])
                fresh = self.db.total_changes - before
                if fresh == len(messages):
                    new = total
                elif fresh == 0:
                    new = 0
                else:  # some messages came before in another batch (a pole re-sent after a crash)
                    new = sum(len(m[5]) for m in messages if self._owner(m) == batch_id)
                self.db.execute("INSERT INTO batches VALUES (?, ?, ?, ?, ?, ?)",
                                (batch_id, pole, now, total, len(messages) - fresh, body))
                self._latest(messages)
                self.db.executemany("INSERT OR IGNORE INTO nodes VALUES (?, ?)", {(m[0], m[1]) for m in messages})
                self.db.executemany("INSERT OR REPLACE INTO minutes VALUES (?, ?, ?, ?, ?, ?, ?, ?)", [(pole,) + tuple(m) for m in minutes])
                self._bump("records_unique", new)
                self._bump("batches", 1)
                self._bump("records_received", total)
                self.db.execute("COMMIT")
                return new, total - new
            except BaseException:
                self.db.execute("ROLLBACK")
                raise

    def _owner(self, m):
        return owner(self.db, m)

    def _latest(self, messages):
        # A node's messages arrive in order, so the last reading of a quantity in a batch is its
        # newest; across batches the upsert keeps whichever is newer.
        newest = {(m[0], m[1], r[0]): r for m in messages for r in m[5]}
        self.db.executemany(
            "INSERT INTO latest VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(pole, node, name) DO UPDATE SET "
            "unit = excluded.unit, value = excluded.value, time = excluded.time WHERE excluded.time >= latest.time",
            [(k[0], k[1], k[2], r[1], r[2], r[3]) for k, r in newest.items()],
        )

    def count(self, name, n=1):
        with self._lock:
            self._bump(name, n)

    def stats(self):
        with self._lock:
            counters = dict(self.db.execute("SELECT name, value FROM counters").fetchall())
            nodes = self.db.execute("SELECT count(*) FROM nodes").fetchone()[0]
        received = counters.get("records_received", 0)
        unique = counters.get("records_unique", 0)
        return {"records": received, "unique": unique, "duplicates": received - unique, "nodes": nodes,
                "batches": counters.get("batches", 0), "batches_duplicate": counters.get("batches_duplicate", 0),
                "batches_rejected": counters.get("batches_rejected", 0),
                "batches_unauthorized": counters.get("batches_unauthorized", 0)}

    def latest(self):
        """Newest value per (pole, node, quantity): [{pole, node, name, unit, value, time}]."""
        with self._lock:
            rows = self.db.execute("SELECT pole, node, name, unit, value, time FROM latest ORDER BY pole, node, name").fetchall()
        return [dict(zip(("pole", "node", "name", "unit", "value", "time"), r)) for r in rows]

    def per_node(self):
        """Readings stored per node."""
        with self._lock:
            return dict(self.db.execute("SELECT node, sum(readings) FROM messages GROUP BY node").fetchall())

    def readings(self):
        with self._lock:
            rows = self.db.execute(BATCHES).fetchall()
        return readings(rows, self._owner_locked)

    def _owner_locked(self, m):
        with self._lock:
            return self._owner(m)

    def close(self):
        with self._lock:
            self.db.close()


# What readings() takes, in arrival order.
BATCHES = "SELECT id, received_ns, duplicates, body FROM batches ORDER BY received_ns"


def owner(db, m):
    """The id of the batch holding the first copy of decoded message m, or None."""
    row = db.execute("SELECT batch FROM messages WHERE pole = ? AND node = ? AND boot = ? AND seq = ?", m[:4]).fetchone()
    return row[0] if row else None


def readings(rows, owner):
    """Every stored reading once, batch by batch in arrival order: a dict of batch.RECORD_FIELDS and
    stored_ns. rows: (batch id, received_ns, duplicates, body); owner(message) -> the batch id
    holding that message's first copy (asked only of batches that carried duplicates)."""
    for batch_id, received_ns, dups, body in rows:
        try:
            _, _, messages, _ = upstream.decode_messages(sign.stored_body(body))
        except ValueError as e:  # stored by an older receiver whose decoder was less strict
            log.warning("batch %s (stored %s) fails today's batch checks (%s): left out", batch_id.hex(),
                        time.strftime("%Y-%m-%d %H:%M", time.gmtime(received_ns / 1e9)), e)
            continue
        for m in messages:
            if dups and owner(m) != batch_id:
                continue
            for r in m[5]:
                rec = dict(zip(upstream.RECORD_FIELDS, m[:5] + r))
                rec["stored_ns"] = received_ns
                yield rec
