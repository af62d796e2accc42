"""The pole's durable queue: SQLite in WAL mode, synchronous=FULL, one row per node message.

A node message is acknowledged to the broker only after the transaction holding it has committed.
Its (node, boot, seq) is unique, so storing it is also the de-duplication. Each row carries its
SenML records already encoded, so a batch is a concatenation. Upstream acknowledgement moves a
cursor; rows behind it stay a day for de-duplication, then are pruned. Pending data has a byte
quota and a maximum age: the oldest is dropped first, and every drop is counted by reason.
Rejections are kept in `quarantine` with their reason. A damaged database file is moved aside and
the agent starts on a new one (counted and logged): the agent always starts.
"""

import logging
import os
import sqlite3
import threading
import time
from pathlib import Path

log = logging.getLogger("openpole.edge.store")

# AUTOINCREMENT: an id is never used twice, even after pruning emptied the table. Without it, new
# rows took ids below the upload cursor and were never sent (and pruned unsent a day later).
MESSAGES_COLUMNS = """(
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    node TEXT NOT NULL, boot INTEGER NOT NULL, seq INTEGER NOT NULL,
    receive_ns INTEGER NOT NULL, records INTEGER NOT NULL, senml BLOB NOT NULL,
    clock_ok INTEGER NOT NULL DEFAULT 1,
    UNIQUE (node, boot, seq)
)"""
SCHEMA = f"""
CREATE TABLE IF NOT EXISTS messages {MESSAGES_COLUMNS};
CREATE TABLE IF NOT EXISTS quarantine (
    id INTEGER PRIMARY KEY, receive_ns INTEGER NOT NULL, source TEXT NOT NULL,
    reason TEXT NOT NULL, detail TEXT NOT NULL, payload BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
-- What the pole's page shows of the last day: closed per-minute aggregates, the nodes' diag
-- reports, and every action taken on a node (kept HISTORY_NS, pruned with the limits).
CREATE TABLE IF NOT EXISTS minutes (
    node TEXT NOT NULL, quantity TEXT NOT NULL, minute INTEGER NOT NULL,
    count INTEGER NOT NULL, mean REAL NOT NULL, min REAL NOT NULL, max REAL NOT NULL,
    PRIMARY KEY (node, quantity, minute)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS diags (node TEXT NOT NULL, t_ns INTEGER NOT NULL, report TEXT NOT NULL,
    PRIMARY KEY (node, t_ns)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS actions (id INTEGER PRIMARY KEY, t_ns INTEGER NOT NULL, node TEXT NOT NULL,
    action TEXT NOT NULL, value TEXT, client TEXT, outcome TEXT NOT NULL);
"""
# What waits to go upstream: (messages, records, bytes, oldest receive_ns or None).
DEPTH_SQL = ("SELECT count(*), coalesce(sum(records), 0), coalesce(sum(length(senml)), 0), min(receive_ns) "
             "FROM messages WHERE id > (SELECT value FROM meta WHERE key = 'cursor')")
KEEP_SENT_NS = 24 * 3600 * 10**9  # rows already upstream stay a day: replays in that time are caught
HISTORY_NS = 25 * 3600 * 10**9  # the page's charts and logs: a day and an hour
ACTIONS_KEPT = 1000
# A day of diag reports is 288 at the default diag_interval_s (300 s); a node sending one a second
# must not make the page read and parse 86,400 of them on each refresh.
DIAGS_READ = 1500


SQLITE_CORRUPT, SQLITE_FULL, SQLITE_NOTADB = 11, 13, 26


def read_only(path):
    """(depth as DEPTH_SQL gives it, {counter: value}) of a queue file opened read-only: what `openpole
    edge status --state` shows while the agent is down."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        return db.execute(DEPTH_SQL).fetchone(), dict(db.execute("SELECT name, value FROM counters").fetchall())
    finally:
        db.close()


def disk_full(e):
    code = getattr(e, "sqlite_errorcode", None)
    return code & 0xFF == SQLITE_FULL if code is not None else "full" in str(e)


def damaged(e):
    """True for an error that says the file itself is bad (not busy, read-only, full or unreadable)."""
    code = getattr(e, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (SQLITE_CORRUPT, SQLITE_NOTADB)
    return type(e) is sqlite3.DatabaseError  # Python < 3.11: corruption is raised as the base class


class Store:
    def __init__(self, state_dir, quota_bytes=512 * 1024 * 1024, max_age_s=7 * 86400):
        self.path = Path(state_dir) / "queue.sqlite"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.quota_bytes = quota_bytes
        self.max_age_ns = int(max_age_s * 10**9)
        self._lock = threading.Lock()
        try:
            self._open()
        except sqlite3.DatabaseError as e:
            if not damaged(e):
                raise  # locked, read-only, I/O, disk full: a good queue, not to be moved aside
            aside = self.path.with_name(f"queue.sqlite.damaged-{int(time.time())}")
            log.error("queue database %s is damaged (%s): moved to %s, starting a new one", self.path, e, aside.name)
            for suffix in ("", "-wal", "-shm"):
                p = Path(str(self.path) + suffix)
                if p.exists():
                    p.rename(Path(str(aside) + suffix))
            self._open()
            self._count({"queue_database_replaced": 1})

    def _open(self):
        self.db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self.reader = None
        try:
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")  # the PUBACK promises the data is on disk
            self.db.executescript(SCHEMA)
            self.db.execute("INSERT OR IGNORE INTO meta(key, value) VALUES ('cursor', 0)")
            self.db.execute("SELECT count(*) FROM messages").fetchone()  # reads the file: fails if damaged
            self._ids_above_cursor()
        except sqlite3.DatabaseError:
            self.db.close()
            raise
        # Status and metrics read through a connection of their own: in WAL mode a reader sees the
        # last commit without waiting for the writer's lock, so a scrape never slows a group commit.
        self.reader = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self.reader.execute("PRAGMA query_only = 1")
        self._rlock = threading.Lock()

    def _ids_above_cursor(self):
        """A queue from before AUTOINCREMENT is rebuilt with it; either way the next id is above the
        upload cursor and every id ever used."""
        db = self.db
        sql = db.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'messages'").fetchone()[0]
        db.execute("BEGIN IMMEDIATE")
        try:
            if "clock_ok" not in sql:
                db.execute("ALTER TABLE messages ADD COLUMN clock_ok INTEGER NOT NULL DEFAULT 1")
            if "AUTOINCREMENT" not in sql.upper():
                db.execute(f"CREATE TABLE messages_new {MESSAGES_COLUMNS}")
                db.execute("INSERT INTO messages_new SELECT id, node, boot, seq, receive_ns, records, senml, clock_ok "
                           "FROM messages")
                db.execute("DROP TABLE messages")
                db.execute("ALTER TABLE messages_new RENAME TO messages")
                log.info("queue database: message ids now never reused (AUTOINCREMENT)")
            floor = db.execute("SELECT max(coalesce((SELECT max(id) FROM messages), 0), value) FROM meta "
                               "WHERE key = 'cursor'").fetchone()[0]
            if not db.execute("UPDATE sqlite_sequence SET seq = max(seq, ?) WHERE name = 'messages'", (floor,)).rowcount:
                db.execute("INSERT INTO sqlite_sequence(name, seq) VALUES ('messages', ?)", (floor,))
            db.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise

    def _rollback(self):
        # A failed COMMIT (SQLITE_FULL) may have rolled back already: a second ROLLBACK would raise.
        if self.db.in_transaction:
            self.db.execute("ROLLBACK")

    def close(self):
        with self._lock:
            self.db.close()
        with self._rlock:
            self.reader.close()

    def _count(self, counts):
        self.db.executemany(
            "INSERT INTO counters(name, value) VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
            [(k, v) for k, v in counts.items() if v],
        )

    def append(self, accepted, rejected):
        """One transaction. accepted: [(node, boot, seq, receive_ns, records, senml[, clock_ok])]
        (clock_ok 0: receive_ns came from a clock not yet synced, so the maximum age does not apply);
        rejected: [(receive_ns, source, reason, detail, payload)]. Returns the duplicates found."""
        if accepted and len(accepted[0]) == 6:
            accepted = [(*a, 1) for a in accepted]
        with self._lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                before = self.db.total_changes
                self.db.executemany(
                    "INSERT OR IGNORE INTO messages(node, boot, seq, receive_ns, records, senml, clock_ok) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    accepted,
                )
                stored = self.db.total_changes - before
                counts = {"messages_accepted": stored, "messages_duplicate": len(accepted) - stored}
                if rejected:
                    self.db.executemany(
                        "INSERT INTO quarantine(receive_ns, source, reason, detail, payload) VALUES (?, ?, ?, ?, ?)", rejected
                    )
                    for row in rejected:
                        counts["rejected_" + row[2]] = counts.get("rejected_" + row[2], 0) + 1
                self._count(counts)
                self.db.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise
        return len(accepted) - stored

    def cursor(self):
        return self.db.execute("SELECT value FROM meta WHERE key = 'cursor'").fetchone()[0]

    def pending(self, max_records):
        """The oldest messages not yet acknowledged upstream, up to max_records records (at least
        one message): ([(id, records, senml)], full) where full says more were left out."""
        with self._lock:
            cur = self.db.execute(
                "SELECT id, records, senml FROM messages WHERE id > (SELECT value FROM meta WHERE key = 'cursor') ORDER BY id"
            )
            out, n, full = [], 0, False
            for row in cur:
                if out and n + row[1] > max_records:
                    full = True
                    break
                out.append(row)
                n += row[1]
            cur.close()
            return out, full

    def acknowledged(self, last_id, records, counter="records_delivered"):
        """Everything up to last_id is upstream (or refused there): move the cursor. last_id None:
        a batch of minute aggregates alone, counted."""
        with self._lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                if last_id is not None:
                    self.db.execute("UPDATE meta SET value = max(value, ?) WHERE key = 'cursor'", (last_id,))
                self._count({counter: records, "batches_sent" if counter == "records_delivered" else "batches_refused": 1})
                self.db.execute("COMMIT")
            except BaseException:
                self._rollback()  # never leave the connection inside a transaction
                raise

    def enforce_limits(self, now_ns):
        """Drop the oldest pending data past the maximum age or the byte quota (counted by reason);
        prune acknowledged rows older than a day. Returns what was dropped, by reason."""
        dropped = {}
        with self._lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                c = self.cursor()
                # Exactly the pending rows past the maximum age, by a clock that was right when they
                # came: rows stored before NTP stepped the clock (or under fake-hwclock) are not
                # aged by a clock they were never dated with, and newer rows among them stay.
                old = (c, now_ns - self.max_age_ns)
                n_old = self.db.execute("SELECT coalesce(sum(records), 0) FROM messages WHERE id > ? AND receive_ns < ? "
                                        "AND clock_ok", old).fetchone()[0]
                if n_old:
                    self.db.execute("DELETE FROM messages WHERE id > ? AND receive_ns < ? AND clock_ok", old)
                    dropped["dropped_max_age"] = n_old
                size = self.db.execute("SELECT coalesce(sum(length(senml)), 0) FROM messages WHERE id > ?", (c,)).fetchone()[0]
                if size > self.quota_bytes:
                    excess, last, n = size - self.quota_bytes, c, 0
                    for mid, recs, ln in self.db.execute("SELECT id, records, length(senml) FROM messages WHERE id > ? ORDER BY id", (c,)):
                        if excess <= 0:
                            break
                        excess -= ln
                        last, n = mid, n + recs
                    c = last
                    dropped["dropped_quota"] = n
                if dropped:
                    self.db.execute("UPDATE meta SET value = ? WHERE key = 'cursor'", (c,))
                    self._count(dropped)
                self.db.execute("DELETE FROM messages WHERE id <= ? AND receive_ns < ?", (c, now_ns - KEEP_SENT_NS))
                self.db.execute("DELETE FROM minutes WHERE minute < ?", ((now_ns - HISTORY_NS) // 10**9,))
                self.db.execute("DELETE FROM diags WHERE t_ns < ?", (now_ns - HISTORY_NS,))
                self.db.execute("DELETE FROM actions WHERE id <= (SELECT max(id) FROM actions) - ?", (ACTIONS_KEPT,))
                q = self._cap_quarantine()
                if q:
                    dropped["dropped_quarantine"] = q
                    self._count({"dropped_quarantine": q})
                self.db.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise
        for reason, n in dropped.items():
            log.warning("queue: %d records dropped (%s)", n, reason.removeprefix("dropped_"))
        return dropped

    def _cap_quarantine(self):
        """Keep the quarantine within a tenth of the quota, dropping its oldest rows: a node that
        sends garbage all day must not fill the disk. Returns the rows dropped."""
        cap = self.quota_bytes // 10
        size = self.db.execute("SELECT coalesce(sum(length(payload) + length(detail)), 0) FROM quarantine").fetchone()[0]
        if size <= cap:
            return 0
        excess, last, n = size - cap, None, 0
        for qid, ln in self.db.execute("SELECT id, length(payload) + length(detail) FROM quarantine ORDER BY id"):
            if excess <= 0:
                break
            excess -= ln
            last, n = qid, n + 1
        self.db.execute("DELETE FROM quarantine WHERE id <= ?", (last,))
        return n

    def free_bytes(self):
        """Free bytes on the queue's filesystem, for an unprivileged writer."""
        st = os.statvfs(self.path.parent)
        return st.f_bavail * st.f_frsize

    def count(self, name, n=1):
        with self._lock:
            self._count({name: n})

    def counters(self):
        with self._rlock:
            return dict(self.reader.execute("SELECT name, value FROM counters").fetchall())

    # --- the page's history: written off the ingest path (the sender, the limits timer, paho's
    # thread for diag reports), read through the reader connection by the named queries below ---
    def keep_minutes(self, rows):
        """Closed minutes (node, quantity, minute, count, mean, min, max) for the page's charts."""
        if rows:
            with self._lock:
                self.db.executemany("INSERT OR REPLACE INTO minutes VALUES (?, ?, ?, ?, ?, ?, ?)", rows)

    def keep_diag(self, node, t_ns, report):
        with self._lock:
            self.db.execute("INSERT OR REPLACE INTO diags VALUES (?, ?, ?)", (node, t_ns, report))

    def log_action(self, t_ns, node, action, value, client, outcome):
        with self._lock:
            self.db.execute("INSERT INTO actions (t_ns, node, action, value, client, outcome) VALUES (?, ?, ?, ?, ?, ?)",
                            (t_ns, node, action, value, client, outcome))

    def _read(self, sql, args):
        with self._rlock:
            return self.reader.execute(sql, args).fetchall()

    def latest_messages(self, node, n):
        """The node's n newest stored messages, newest first: [(senml, records, receive_ns)]."""
        return self._read("SELECT senml, records, receive_ns FROM messages WHERE node = ? ORDER BY boot DESC, seq DESC "
                          "LIMIT ?", (node, n))

    def minutes(self, node, since_s):
        """The node's closed minutes from since_s (unix s) on, oldest first:
        [(quantity, minute, mean, min, max)]."""
        return self._read("SELECT quantity, minute, mean, min, max FROM minutes WHERE node = ? AND minute >= ? "
                          "ORDER BY minute", (node, since_s))

    def diags(self, node, since_ns, n=DIAGS_READ):
        """The node's diag reports from since_ns on, oldest first, at most the n newest:
        [(t_ns, report as the node sent it)]."""
        rows = self._read("SELECT t_ns, report FROM diags WHERE node = ? AND t_ns >= ? ORDER BY t_ns DESC LIMIT ?",
                          (node, since_ns, n))
        return rows[::-1]

    def actions(self, node, n):
        """The n latest actions taken on the node, newest first: [(t_ns, action, value, client, outcome)]."""
        return self._read("SELECT t_ns, action, value, client, outcome FROM actions WHERE node = ? ORDER BY id DESC "
                          "LIMIT ?", (node, n))

    def depth(self):
        """(messages, records, bytes, oldest receive_ns or None) waiting to go upstream."""
        with self._rlock:
            return self.reader.execute(DEPTH_SQL).fetchone()
