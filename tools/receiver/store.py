"""The reference receiver's storage: SQLite, de-duplicated by batch id and by record identity."""

import sqlite3
import threading
import time
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS batches (
    id BLOB PRIMARY KEY, pole TEXT NOT NULL, received_ns INTEGER NOT NULL, records INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS records (
    pole TEXT NOT NULL, node TEXT NOT NULL, boot INTEGER NOT NULL, seq INTEGER NOT NULL, name TEXT NOT NULL,
    unit TEXT, value NOT NULL, time REAL NOT NULL, receive_ns INTEGER, flags INTEGER NOT NULL,
    time_quality INTEGER NOT NULL, stored_ns INTEGER NOT NULL, node_clock_ms INTEGER,
    PRIMARY KEY (pole, node, boot, seq, name)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS nodes (pole TEXT NOT NULL, node TEXT NOT NULL, PRIMARY KEY (pole, node)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS minutes (
    pole TEXT NOT NULL, node TEXT NOT NULL, quantity TEXT NOT NULL, start INTEGER NOT NULL,
    count INTEGER NOT NULL, mean REAL NOT NULL, min REAL NOT NULL, max REAL NOT NULL,
    PRIMARY KEY (pole, node, quantity, start)
) WITHOUT ROWID;
"""


class ReceiverStore:
    def __init__(self, data_dir):
        path = Path(data_dir) / "receiver.sqlite"
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self.db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")  # a 2xx promises the batch is on disk
        self.db.executescript(SCHEMA)

    def _bump(self, name, n):
        self.db.execute(
            "INSERT INTO counters(name, value) VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET value = value + ?", (name, n, n)
        )

    def add_batch(self, batch_id, pole, records, minutes=()):
        """Store a decoded batch; returns (new records, duplicate records). Idempotent by batch id."""
        now = time.time_ns()
        with self._lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                cur = self.db.execute(
                    "INSERT OR IGNORE INTO batches(id, pole, received_ns, records) VALUES (?, ?, ?, ?)",
                    (batch_id, pole, now, len(records)),
                )
                if cur.rowcount == 0:
                    self._bump("batches_duplicate", 1)
                    self._bump("records_received", len(records))
                    self.db.execute("COMMIT")
                    return 0, len(records)
                before = self.db.total_changes
                self.db.executemany(
                    "INSERT OR IGNORE INTO records VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [(r["pole"], r["node"], r["boot"], r["seq"], r["name"], r["unit"], r["value"], r["time"],
                      r["receive_ns"], r["flags"], r["time_quality"], now, r["node_clock_ms"]) for r in records],
                )
                new = self.db.total_changes - before
                self.db.executemany("INSERT OR IGNORE INTO nodes VALUES (?, ?)", {(r["pole"], r["node"]) for r in records})
                self.db.executemany("INSERT OR REPLACE INTO minutes VALUES (?, ?, ?, ?, ?, ?, ?, ?)", [(pole,) + tuple(m) for m in minutes])
                self._bump("records_unique", new)
                self._bump("batches", 1)
                self._bump("records_received", len(records))
                self.db.execute("COMMIT")
                return new, len(records) - new
            except BaseException:
                self.db.execute("ROLLBACK")
                raise

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
                "batches_rejected": counters.get("batches_rejected", 0)}

    def latest(self):
        """Newest value per (pole, node, quantity): [{pole, node, name, unit, value, time}]."""
        with self._lock:
            rows = self.db.execute(
                "SELECT pole, node, name, unit, value, max(time) FROM records GROUP BY pole, node, name ORDER BY pole, node, name"
            ).fetchall()
        return [dict(zip(("pole", "node", "name", "unit", "value", "time"), r)) for r in rows]

    def per_node(self):
        with self._lock:
            return dict(self.db.execute("SELECT node, count(*) FROM records GROUP BY node").fetchall())

    def close(self):
        with self._lock:
            self.db.close()
