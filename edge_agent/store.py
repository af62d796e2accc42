"""The pole's durable queue: SQLite in WAL mode, synchronous=FULL.

A node message is acknowledged to the broker only after the transaction holding its records (and
its (node, boot, seq) in `seen`, for de-duplication) has committed. Records leave only after the
upstream acknowledged the batch that carried them. Rejections are kept in `quarantine` with their
reason; every outcome is counted in `counters`.
"""

import sqlite3
import threading
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    id INTEGER PRIMARY KEY,
    node TEXT NOT NULL, boot INTEGER NOT NULL, seq INTEGER NOT NULL,
    key INTEGER NOT NULL, value NOT NULL,           -- no affinity: ints stay ints, floats floats
    sample_ns INTEGER NOT NULL, receive_ns INTEGER NOT NULL,
    flags INTEGER NOT NULL DEFAULT 0, time_quality INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS seen (
    node TEXT NOT NULL, boot INTEGER NOT NULL, seq INTEGER NOT NULL, receive_ns INTEGER NOT NULL,
    PRIMARY KEY (node, boot, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS quarantine (
    id INTEGER PRIMARY KEY, receive_ns INTEGER NOT NULL, source TEXT NOT NULL,
    reason TEXT NOT NULL, detail TEXT NOT NULL, payload BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
"""


class Store:
    def __init__(self, state_dir):
        self.path = Path(state_dir) / "queue.sqlite"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self.db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")  # the PUBACK promises the data is on disk
        self.db.executescript(SCHEMA)

    def close(self):
        with self._lock:
            self.db.close()

    def _count(self, counts):
        for name, n in counts.items():
            if n:
                self.db.execute(
                    "INSERT INTO counters(name, value) VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET value = value + ?",
                    (name, n, n),
                )

    def append(self, accepted, rejected):
        """One transaction. accepted: [(NodeMessage, receive_ns, time_quality)];
        rejected: [(receive_ns, source, reason, detail, payload)]. Returns duplicates found."""
        counts = {"messages_accepted": 0, "messages_duplicate": 0, "readings_accepted": 0, "readings_out_of_range": 0}
        with self._lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                for msg, receive_ns, tq in accepted:
                    cur = self.db.execute(
                        "INSERT OR IGNORE INTO seen(node, boot, seq, receive_ns) VALUES (?, ?, ?, ?)",
                        (msg.node, msg.boot, msg.seq, receive_ns),
                    )
                    if cur.rowcount == 0:
                        counts["messages_duplicate"] += 1
                        continue
                    counts["messages_accepted"] += 1
                    rows = [
                        (msg.node, msg.boot, msg.seq, r.key, r.value, receive_ns - r.age_ms * 1_000_000, receive_ns, r.flags, tq)
                        for r in msg.readings
                    ]
                    self.db.executemany(
                        "INSERT INTO records(node, boot, seq, key, value, sample_ns, receive_ns, flags, time_quality)"
                        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        rows,
                    )
                    counts["readings_accepted"] += len(rows)
                    counts["readings_out_of_range"] += sum(1 for r in msg.readings if r.flags)
                for row in rejected:
                    self.db.execute(
                        "INSERT INTO quarantine(receive_ns, source, reason, detail, payload) VALUES (?, ?, ?, ?, ?)", row
                    )
                    counts[f"rejected_{row[2]}"] = counts.get(f"rejected_{row[2]}", 0) + 1
                self._count(counts)
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
        return counts["messages_duplicate"]

    def pending(self, limit):
        """The oldest records not yet acknowledged upstream, as dict rows."""
        with self._lock:
            cur = self.db.execute(
                "SELECT id, node, boot, seq, key, value, sample_ns, receive_ns, flags, time_quality"
                " FROM records ORDER BY id LIMIT ?",
                (limit,),
            )
            cols = [c[0] for c in cur.description]
            return [dict(zip(cols, row)) for row in cur.fetchall()]

    def delete(self, ids, counter="records_delivered"):
        with self._lock:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.executemany("DELETE FROM records WHERE id = ?", [(i,) for i in ids])
            self._count({counter: len(ids)})
            self.db.execute("COMMIT")

    def count(self, name, n=1):
        with self._lock:
            self._count({name: n})

    def counters(self):
        with self._lock:
            return dict(self.db.execute("SELECT name, value FROM counters").fetchall())

    def depth(self):
        with self._lock:
            return self.db.execute("SELECT count(*) FROM records").fetchone()[0]
