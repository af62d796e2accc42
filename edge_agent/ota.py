"""Over-the-air updates on the pole (docs/ota.md): the agent's side of the contract.

A push (`openpole ota push`, or the page) makes a rollout: one job per node, in the agent's SQLite
(`ota_jobs`, next to the queue), each going pending -> transferring -> staged -> trial -> confirmed,
or rolled_back / failed / cancelled, with a reason. The bundle's objects are kept in the state
directory by SHA-256 (ota/objects/), so an agent restart loses nothing: the nodes ask again and
the agent answers from disk.

The engine is one thread. paho's thread only queues what comes on `ota/get` and `ota/report` (a
full queue is a counted drop), so the readings' hot path does not wait on it. Every input from the
network is checked; what breaks the contract is counted (ota_* counters) and dropped, never fatal.

Commands reach a running agent through its state directory (ota/inbox/): whoever may write there
(the agent's own user: `sudo -u openpole openpole ota push`) may push. The agent stays the only
writer of the jobs; the command line reads them read-only (`openpole ota status` works while the
agent is down).
"""

import hashlib
import json
import logging
import os
import queue
import sqlite3
import threading
import time
from pathlib import Path

from openpole.ota.bundle import in_range
from openpole.wire import node_message, ota

log = logging.getLogger("openpole.edge.ota")

SCHEMA = """
CREATE TABLE IF NOT EXISTS ota_bundles (sha256 TEXT PRIMARY KEY, manifest_sha256 TEXT NOT NULL, kind TEXT NOT NULL,
    version TEXT NOT NULL, board TEXT NOT NULL, mpy INTEGER NOT NULL, mp_min TEXT NOT NULL, mp_max TEXT NOT NULL,
    objects TEXT NOT NULL, total INTEGER NOT NULL, signed_by TEXT, t_ns INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS ota_rollouts (id INTEGER PRIMARY KEY AUTOINCREMENT, bundle TEXT NOT NULL,
    canary INTEGER NOT NULL, max_parallel INTEGER NOT NULL, state TEXT NOT NULL, reason TEXT NOT NULL DEFAULT '',
    t_ns INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS ota_jobs (id INTEGER PRIMARY KEY AUTOINCREMENT, rollout INTEGER NOT NULL,
    node TEXT NOT NULL, bundle TEXT NOT NULL, canary INTEGER NOT NULL, state TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '', done INTEGER NOT NULL DEFAULT 0, total INTEGER NOT NULL,
    heard INTEGER NOT NULL DEFAULT 0, ticket_ns INTEGER, app TEXT, prev TEXT,
    created_ns INTEGER NOT NULL, updated_ns INTEGER NOT NULL, finished_ns INTEGER);
CREATE TABLE IF NOT EXISTS ota_seq (node TEXT PRIMARY KEY, seq INTEGER NOT NULL) WITHOUT ROWID;
"""
STATES = ("pending", "transferring", "staged", "trial", "confirmed", "rolled_back", "failed", "cancelled")
ACTIVE = ("transferring", "staged", "trial")
TERMINAL = ("confirmed", "rolled_back", "failed", "cancelled")
# What a node reports (docs/ota.md) -> the job's state; "refused" ends the job as failed.
REPORTED = {"refused": "failed", "transferring": "transferring", "staged": "staged", "trial": "trial",
            "confirmed": "confirmed", "rolled_back": "rolled_back", "failed": "failed", "cancelled": "cancelled"}
ORDER = {s: i for i, s in enumerate(("pending", "transferring", "staged", "trial"))}
GET_TOPIC = "openpole/v1/+/ota/get"
REPORT_TOPIC = "openpole/v1/+/ota/report"
OTA_TOPIC = "openpole/v1/{}/ota"
CHUNK_MAX = 4096  # the most data bytes in one reply, whatever a node asks for (a firmware erase block)
REPORT_MAX = 2048
EVENTS_MAX = 2000
TICKET_AGAIN_S = 30.0  # a ticket no word came back for goes again (with a new sequence number)
ONLINE_AFTER_MESSAGE_S = 90.0  # a node that sent a reading this recently is online
PROGRESS_EVERY_S = 5.0
TICK_S = 0.5
REASON_MAX = 200
GET_BURST = 10.0


class OtaError(ValueError):
    """A push or a cancel the agent refuses: str(e) is the one line the command line shows."""


def objects_dir(state_dir):
    return Path(state_dir) / "ota" / "objects"


def inbox_dir(state_dir):
    return Path(state_dir) / "ota" / "inbox"


def connect(state_dir):
    db = sqlite3.connect(Path(state_dir) / "queue.sqlite", check_same_thread=False, isolation_level=None, timeout=10)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.executescript(SCHEMA)
    return db


def _now():
    return time.time_ns()


class Engine:
    """The job engine of one agent. publish(topic, payload, qos) -> bool sends through the agent's
    MQTT client; ack(mid) acknowledges a QoS 1 report once it is on disk; count(name, n) counts;
    node_state(node) -> (online, firmware version or None) from what the agent knows of the node."""

    def __init__(self, cfg, publish, ack, count, node_state, clock=_now):
        self.cfg = cfg
        self.state_dir = Path(cfg.state_dir)
        self.publish, self.ack, self.count_sink, self.node_state, self.clock = publish, ack, count, node_state, clock
        self.db = connect(self.state_dir)
        self.lock = threading.Lock()  # the db connection: the engine thread and readers (status)
        objects_dir(self.state_dir).mkdir(parents=True, exist_ok=True)
        inbox_dir(self.state_dir).mkdir(parents=True, exist_ok=True)
        self.events = queue.Queue(EVENTS_MAX)
        self.counts = {}
        self.counts_lock = threading.Lock()
        self.jobs = {}  # job id -> dict (what a chunk request needs, kept in memory)
        self.bundle_objects = {}  # bundle sha256 -> {obj: (path of the object file, size)}
        self.last_get = {}  # node -> (tokens, monotonic time of its last request): the pace's bucket
        self.was_online = {}
        self.progress_dirty = set()
        self.stopping = threading.Event()
        self.thread = None
        self._load()

    # --- counters: kept in memory, written once a tick (a flood must not cost an fsync each) ---
    def count(self, name, n=1):
        with self.counts_lock:
            self.counts[name] = self.counts.get(name, 0) + n

    def _flush_counts(self):
        with self.counts_lock:
            counts, self.counts = self.counts, {}
        for name, n in counts.items():
            self.count_sink(name, n)

    # --- state ---
    def _load(self):
        with self.lock:
            # Jobs under way, and those that ended in the last day (a node asking again gets its answer).
            rows = self.db.execute("SELECT id, node, bundle, state, done, total, heard, ticket_ns, canary, rollout "
                                   "FROM ota_jobs WHERE finished_ns IS NULL OR finished_ns > ?",
                                   (self.clock() - 86400 * 10**9,)).fetchall()
        for jid, node, bundle, state, done, total, heard, ticket_ns, canary, rollout in rows:
            self.jobs[jid] = {"id": jid, "node": node, "bundle": bundle, "state": state, "done": done, "total": total,
                              "heard": heard, "ticket_ns": ticket_ns, "canary": canary, "rollout": rollout}

    def _objects(self, sha):
        objs = self.bundle_objects.get(sha)
        if objs is None:
            with self.lock:
                row = self.db.execute("SELECT objects FROM ota_bundles WHERE sha256 = ?", (sha,)).fetchone()
            if row is None:
                return None
            d = objects_dir(self.state_dir)
            objs = {int(k): (d / h, size) for k, (h, size) in json.loads(row[0]).items()}
            self.bundle_objects[sha] = objs
        return objs

    def _bundle(self, sha):
        with self.lock:
            row = self.db.execute("SELECT kind, version, mp_min, mp_max, manifest_sha256, objects, total, board "
                                  "FROM ota_bundles WHERE sha256 = ?", (sha,)).fetchone()
        if row is None:
            return None
        kind, version, mp_min, mp_max, msha, objects, total, board = row
        return {"kind": kind, "version": version, "range": (mp_min, mp_max), "manifest_sha256": msha,
                "manifest": objects_dir(self.state_dir) / json.loads(objects)["0"][0], "total": total, "board": board}

    def _set(self, job, state, reason=None, **cols):
        """Write a job's new state (and columns) to disk, then to memory."""
        now = self.clock()
        sets = ["state = ?", "updated_ns = ?"]
        args = [state, now]
        if reason is not None:
            sets.append("reason = ?")
            args.append(reason[:REASON_MAX])
        if state in TERMINAL:
            sets.append("finished_ns = ?")
            args.append(now)
        for k, v in cols.items():
            sets.append(f"{k} = ?")
            args.append(v)
        with self.lock:
            self.db.execute(f"UPDATE ota_jobs SET {', '.join(sets)} WHERE id = ?", (*args, job["id"]))
        job["state"] = state
        job.update(cols)
        if state in TERMINAL:
            log.info("ota job %d on %s: %s%s", job["id"], job["node"], state, f" ({reason})" if reason else "")

    # --- pushing and cancelling (from the inbox, the page, or a test) ---
    def add_bundle(self, b):
        """Keep a checked bundle (openpole.ota.bundle.Bundle): its objects by SHA-256, then its row."""
        d = objects_dir(self.state_dir)
        objs = {}
        for obj, data in b.objects.items():
            h = hashlib.sha256(data).hexdigest()
            path = d / h
            if not path.exists() or path.stat().st_size != len(data):
                tmp = d / f".{h}.tmp{os.getpid()}"
                with open(tmp, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, path)
            objs[str(obj)] = [h, len(data)]
        dfd = os.open(d, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
        m = b.manifest
        with self.lock:
            self.db.execute("INSERT OR IGNORE INTO ota_bundles VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                            (b.sha256, hashlib.sha256(b.manifest_bytes).hexdigest(), m["kind"], m["version"],
                             m["board"], m["mpy"], m["micropython"][0], m["micropython"][1], json.dumps(objs),
                             b.total, b.signed_by, self.clock()))

    def _call(self, fn, *args, timeout=30):
        """Run fn on the engine's thread (the only one that changes jobs) and return what it returns."""
        if self.thread is None or threading.current_thread() is self.thread or not self.thread.is_alive():
            return fn(*args)
        from concurrent.futures import Future

        fut = Future()
        try:
            self.events.put(("call", fn, args, fut, 0), timeout=timeout)
        except queue.Full:
            raise OtaError("the agent's update engine is busy: try again in a minute") from None
        return fut.result(timeout)

    def push(self, b, nodes, canary=1, max_parallel=None):
        return self._call(self._push, b, nodes, canary, max_parallel)

    def cancel(self, job_ids=None, rollout=None):
        return self._call(self._cancel, job_ids, rollout)

    def _push(self, b, nodes, canary=1, max_parallel=None):
        """Make a rollout of bundle b (checked already) to the nodes; returns {"rollout", "jobs":
        {node: job id}, "skipped": {node: why}}. OtaError when nothing can be pushed."""
        max_parallel = max_parallel or self.cfg.ota_max_parallel
        if not isinstance(canary, int) or canary < 0 or not isinstance(max_parallel, int) or max_parallel < 1:
            raise OtaError("--canary is 0 or more, --max-parallel 1 or more")
        if not nodes:
            raise OtaError("no node matches: the agent knows of the nodes in its keys file and those it has heard from")
        m = b.manifest
        skipped, chosen = {}, []
        for node in nodes:
            online, fw, board = self.node_state(node)
            if node not in self.cfg.node_keys:
                skipped[node] = "no key for it in node-keys.toml: a ticket could not be signed"
            elif fw is not None and not in_range(fw, m["micropython"]):
                skipped[node] = f"its firmware {fw} is outside the bundle's MicroPython {m['micropython'][0]} to " \
                                f"{m['micropython'][1]}"
            elif board is not None and board != m["board"]:
                skipped[node] = f"it is a {board}, the bundle is for {m['board']}"
            elif any(j["node"] == node and j["state"] not in TERMINAL for j in self.jobs.values()):
                skipped[node] = "it has a job in progress (openpole ota cancel it first)"
            else:
                chosen.append(node)
        if not chosen:
            raise OtaError("no node can take this bundle: " + "; ".join(f"{n}: {w}" for n, w in skipped.items()))
        self.add_bundle(b)
        now = self.clock()
        canary = min(canary, len(chosen))
        out = {}
        with self.lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                rollout = self.db.execute("INSERT INTO ota_rollouts (bundle, canary, max_parallel, state, t_ns) "
                                          "VALUES (?, ?, ?, 'running', ?)", (b.sha256, canary, max_parallel, now)).lastrowid
                for i, node in enumerate(chosen):
                    out[node] = self.db.execute(
                        "INSERT INTO ota_jobs (rollout, node, bundle, canary, state, total, created_ns, updated_ns) "
                        "VALUES (?, ?, ?, ?, 'pending', ?, ?, ?)",
                        (rollout, node, b.sha256, int(i < canary), b.total, now, now)).lastrowid
                self.db.execute("COMMIT")
            except BaseException:
                if self.db.in_transaction:
                    self.db.execute("ROLLBACK")
                raise
        for i, node in enumerate(chosen):
            jid = out[node]
            if jid >= 2**32:
                raise OtaError("job ids ran past 2^32 on this pole")
            self.jobs[jid] = {"id": jid, "node": node, "bundle": b.sha256, "state": "pending", "done": 0,
                              "total": b.total, "heard": 0, "ticket_ns": None, "canary": int(i < canary),
                              "rollout": rollout}
        log.info("ota rollout %d: %s %s to %d nodes (canary %d, %d at once)", rollout, m["kind"], m["version"],
                 len(chosen), canary, max_parallel)
        return {"rollout": rollout, "jobs": out, "skipped": skipped}

    def _cancel(self, job_ids=None, rollout=None):
        """Cancel jobs (by id, or a whole rollout): those not yet on trial. Returns {job: outcome}."""
        out = {}
        for j in list(self.jobs.values()):
            if not ((job_ids and j["id"] in job_ids) or (rollout is not None and j["rollout"] == rollout)):
                continue
            if j["state"] in TERMINAL:
                out[j["id"]] = f"already {j['state']}"
            elif j["state"] == "trial":
                out[j["id"]] = "on trial: it confirms or rolls back"
            else:
                if j["ticket_ns"] is not None:
                    self.publish(OTA_TOPIC.format(j["node"]), ota.cancel(j["id"]), 1)
                self._set(j, "cancelled", "cancelled by the operator")
                out[j["id"]] = "cancelled"
        if rollout is not None:
            with self.lock:
                self.db.execute("UPDATE ota_rollouts SET state = 'cancelled', reason = 'cancelled by the operator' "
                                "WHERE id = ? AND state = 'running'", (rollout,))
        return out

    # --- what arrives from the network (paho's thread): queued, never handled there ---
    def offer(self, kind, node, payload, mid=0, qos=0):
        try:
            self.events.put_nowait((kind, node, payload, mid, qos))
        except queue.Full:
            self.count("ota_dropped_busy")
            if qos == 1:
                self.ack(mid)  # dropped either way: the broker must not hold the window for it

    def on_publish(self, topic, payload, mid, qos):
        """For the ingest: True when the topic is an OTA one (queued here), else False."""
        if not topic.endswith(("/ota/get", "/ota/report")):
            return False
        parts = topic.split("/")
        if len(parts) != 5 or not node_message.NODE_ID_RE.match(parts[2]):
            self.count("ota_rejected_topic")
            if qos == 1:
                self.ack(mid)
            return True
        # A request carries its arrival time: the pace is judged by when it came, not by when the
        # engine got to it.
        self.offer(parts[4], parts[2], (time.monotonic(), bytes(payload)) if parts[4] == "get" else bytes(payload), mid, qos)
        return True

    # --- the engine thread ---
    def start(self):
        self.thread = threading.Thread(target=self.run, name="openpole-ota", daemon=True)
        self.thread.start()

    def stop(self):
        self.stopping.set()
        if self.thread is not None:
            self.thread.join(timeout=5)
        self._flush_progress()
        self._flush_counts()
        with self.lock:
            self.db.close()

    def run(self):
        next_tick = 0.0
        while not self.stopping.is_set():
            try:
                ev = self.events.get(timeout=TICK_S)
            except queue.Empty:
                ev = None
            if ev is not None:
                self.handle(ev)
            now = time.monotonic()
            if now >= next_tick:
                next_tick = now + TICK_S
                try:
                    self.tick()
                except Exception:  # never the end of OTA for the pole: logged, tried again next tick
                    log.exception("ota: the scheduler failed this tick")

    def handle(self, ev):
        kind, node, payload, mid, qos = ev
        if kind == "call":
            fn, args, fut = node, payload, mid
            try:
                fut.set_result(fn(*args))
            except Exception as e:  # the caller's to show (OtaError, UserError) or to log
                fut.set_exception(e)
            return
        try:
            if kind == "get":
                self.serve(node, payload)
            elif kind == "report":
                self.report(node, payload)
        except Exception:  # a bug here must not stop OTA: counted, logged
            log.exception("ota: %s from %s could not be handled", kind, node)
            self.count("ota_internal_error")
        finally:
            if qos == 1:
                self.ack(mid)

    def serve(self, node, arrival):
        came, payload = arrival
        try:
            jid, obj, offset, max_len = ota.read_request(payload)
        except ValueError:
            self.count("ota_get_rejected_malformed")
            return
        if max_len == 0:
            self.count("ota_get_rejected_malformed")
            return
        j = self.jobs.get(jid)
        topic = OTA_TOPIC.format(node)
        if j is None or j["node"] != node:
            self.count("ota_get_unknown_job")
            self.publish(topic, ota.chunk(ota.UNKNOWN_JOB, jid, obj, offset), 0)
            return
        if self.cfg.ota_pace_ms:
            # A token bucket per node: twice the pace's rate on average, bursts of GET_BURST (a radio
            # link bunches packets; a node that floods is held to the rate and counted).
            rate = 2000 / self.cfg.ota_pace_ms
            tokens, last = self.last_get.get(node, (GET_BURST, came))
            tokens = min(GET_BURST, tokens + (came - last) * rate)
            if tokens < 1:
                self.last_get[node] = (tokens, came)
                self.count("ota_get_too_fast")
                return
            self.last_get[node] = (tokens - 1, came)
        state = j["state"]
        if state == "cancelled":
            self.publish(topic, ota.chunk(ota.CANCELLED, jid, obj, offset), 0)
            return
        if state in ("failed", "rolled_back", "confirmed"):
            self.publish(topic, ota.chunk(ota.REFUSED, jid, obj, offset), 0)
            return
        objs = self._objects(j["bundle"])
        if objs is None or obj not in objs:
            self.count("ota_get_unknown_object")
            return
        path, size = objs[obj]
        if offset >= size:
            self.publish(topic, ota.chunk(ota.PAST_END, jid, obj, offset), 0)
            return
        n = min(max_len, CHUNK_MAX, size - offset)
        try:
            with open(path, "rb") as f:
                f.seek(offset)
                data = f.read(n)
        except OSError as e:
            log.error("ota: object %s of job %d cannot be read (%s); the job fails", path.name, jid, e.strerror)
            self._set(j, "failed", f"agent_object_unreadable: {e.strerror}")
            return
        self.publish(topic, ota.chunk(ota.OK, jid, obj, offset, data), 0)
        self.count("ota_chunks_sent")
        self.count("ota_bytes_sent", len(data))
        if not j["heard"]:
            j["heard"] = 1
            self._set(j, "transferring" if state == "pending" else state, heard=1)
        elif state == "pending":
            self._set(j, "transferring")
        done = sum(s for o, (_, s) in objs.items() if o < obj) + offset + len(data)
        if done > j["done"]:
            j["done"] = done
            self.progress_dirty.add(jid)

    def report(self, node, payload):
        if len(payload) > REPORT_MAX:
            self.count("ota_report_rejected_size")
            return
        try:
            r = json.loads(payload)
        except (ValueError, RecursionError):
            self.count("ota_report_rejected_malformed")
            return
        if not isinstance(r, dict) or type(r.get("job")) is not int or r.get("state") not in REPORTED:
            self.count("ota_report_rejected_malformed")
            return
        j = self.jobs.get(r["job"])
        if j is None or j["node"] != node:
            self.count("ota_report_unknown_job")
            return
        said, reason = r["state"], r.get("reason")
        reason = reason[:REASON_MAX] if isinstance(reason, str) else ""
        state = REPORTED[said]
        if said == "refused":
            reason = f"refused: {reason or 'no reason given'}"
        cur = j["state"]
        if cur in TERMINAL:
            # The node's word wins over the agent's cancel when it had swapped already.
            if not (cur == "cancelled" and state in ("trial", "confirmed", "rolled_back")):
                if state != cur:
                    self.count("ota_report_stale")
                return
        elif state not in TERMINAL and ORDER[state] < ORDER.get(cur, 0):
            self.count("ota_report_stale")  # a late progress report after the node moved on
            return
        cols = {"heard": 1}
        for k in ("app", "prev"):
            if isinstance(r.get(k), str):
                cols[k] = r[k][:40]
        if state == "transferring":
            objs = self._objects(j["bundle"]) or {}
            obj, off = r.get("obj"), r.get("offset")
            if type(obj) is int and type(off) is int and obj in objs and 0 <= off <= objs[obj][1]:
                cols["done"] = max(j["done"], sum(s for o, (_, s) in objs.items() if o < obj) + off)
        if state == "confirmed":
            cols["done"] = j["total"]
        if state == cur == "transferring" and j["heard"]:
            # Progress alone: kept in memory, written with the next tick's progress (no fsync a report).
            if cols.get("done", j["done"]) > j["done"]:
                j["done"] = cols["done"]
                self.progress_dirty.add(j["id"])
        elif state != cur or cols.get("done", j["done"]) != j["done"] or not j["heard"]:
            self._set(j, state, reason if state in TERMINAL or said == "refused" else None, **cols)
        if state in TERMINAL:
            self.progress_dirty.discard(j["id"])
            self.count(f"ota_jobs_{state}")
            if j["canary"] and state != "confirmed":
                self._stop_rollout(j, f"canary {node} {state}: {reason}" if reason else f"canary {node} {state}")

    def _stop_rollout(self, canary_job, why):
        rollout = canary_job["rollout"]
        with self.lock:
            self.db.execute("UPDATE ota_rollouts SET state = 'stopped', reason = ? WHERE id = ?", (why[:REASON_MAX], rollout))
        for j in self.jobs.values():
            if j["rollout"] == rollout and j["state"] == "pending" and j["ticket_ns"] is None:
                self._set(j, "cancelled", f"rollout stopped: {why}")
        log.warning("ota rollout %d stopped: %s", rollout, why)

    def _flush_progress(self):
        if not self.progress_dirty:
            return
        rows = [(self.jobs[j]["done"], self.clock(), j) for j in self.progress_dirty if j in self.jobs]
        self.progress_dirty = set()
        with self.lock:
            self.db.executemany("UPDATE ota_jobs SET done = ?, updated_ns = ? WHERE id = ?", rows)

    def _next_seq(self, node):
        with self.lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                self.db.execute("INSERT INTO ota_seq VALUES (?, 1) ON CONFLICT(node) DO UPDATE SET seq = seq + 1", (node,))
                seq = self.db.execute("SELECT seq FROM ota_seq WHERE node = ?", (node,)).fetchone()[0]
                self.db.execute("COMMIT")  # on disk before the ticket leaves: a restart never reuses one
            except BaseException:
                if self.db.in_transaction:
                    self.db.execute("ROLLBACK")
                raise
        return seq

    def _ticket(self, j):
        b = self._bundle(j["bundle"])
        key = self.cfg.node_keys.get(j["node"])
        if b is None or key is None:
            self._set(j, "failed", "agent: the bundle or the node's key is gone")
            return
        seq = self._next_seq(j["node"])
        try:
            t = ota.ticket(key, j["node"], j["id"], seq, b["kind"], b["version"], b["range"], b["manifest"].read_bytes(),
                           b["total"], self.cfg.ota_pace_ms, self.cfg.ota_trial_s)
        except (ValueError, OSError) as e:
            self._set(j, "failed", f"agent: {e}")
            return
        if self.publish(OTA_TOPIC.format(j["node"]), t, 1):
            now = self.clock()
            with self.lock:
                self.db.execute("UPDATE ota_jobs SET ticket_ns = ? WHERE id = ?", (now, j["id"]))
            j["ticket_ns"] = now
            self.count("ota_tickets_sent")

    def tick(self):
        self._flush_counts()
        self._flush_progress()
        self._inbox()
        now = self.clock()
        rollouts = {}
        for j in self.jobs.values():
            rollouts.setdefault(j["rollout"], []).append(j)
        for rid, jobs in rollouts.items():
            self._schedule(rid, jobs, now)

    def _schedule(self, rid, jobs, now):
        with self.lock:
            row = self.db.execute("SELECT state, max_parallel FROM ota_rollouts WHERE id = ?", (rid,)).fetchone()
        if row is None:
            return
        rstate, max_parallel = row
        canary = [j for j in jobs if j["canary"]]
        canary_done = all(j["state"] == "confirmed" for j in canary)
        if all(j["state"] in TERMINAL for j in jobs):
            if rstate == "running":
                with self.lock:
                    self.db.execute("UPDATE ota_rollouts SET state = 'done' WHERE id = ?", (rid,))
            return
        started = [j for j in jobs if j["state"] not in TERMINAL and (j["ticket_ns"] is not None or j["state"] in ACTIVE)]
        for j in jobs:
            if j["state"] not in TERMINAL:
                online, fw, _ = self.node_state(j["node"])
                back = online and not self.was_online.get(j["node"], False)
                self.was_online[j["node"]] = online
                if j in started and not j["heard"] and online and (
                        back or now - (j["ticket_ns"] or 0) > TICKET_AGAIN_S * 10**9):
                    self._ticket(j)  # the node was away, or the ticket got no answer: again
        if rstate != "running":
            return
        for j in jobs:
            if len(started) >= max_parallel:
                break
            if j["state"] != "pending" or j["ticket_ns"] is not None:
                continue
            if not j["canary"] and not canary_done:
                continue
            online, fw, _ = self.node_state(j["node"])
            if not online:
                continue
            b = self._bundle(j["bundle"])
            if fw is not None and b is not None and not in_range(fw, b["range"]):
                self._set(j, "failed", f"firmware {fw} is outside the bundle's MicroPython {b['range'][0]} to {b['range'][1]}")
                continue
            self._ticket(j)
            if j["ticket_ns"] is not None:
                started.append(j)

    def _inbox(self):
        """Commands the command line left in ota/inbox/: NAME.json (and NAME.bundle for a push);
        the answer goes to NAME.answer.json."""
        d = inbox_dir(self.state_dir)
        try:
            names = sorted(p for p in d.iterdir() if p.suffix == ".json" and not p.name.endswith(".answer.json"))
        except OSError:
            return
        for p in names[:10]:
            answer_path = p.with_name(p.stem + ".answer.json")
            try:
                cmd = json.loads(p.read_text())
                answer = {"ok": True, **self.command(cmd, p.with_suffix(".bundle"))}
            except OtaError as e:
                answer = {"ok": False, "error": str(e)}
            except Exception as e:  # a malformed command file: answered, never fatal
                from openpole.errors import UserError

                if not isinstance(e, (UserError, ValueError, KeyError, TypeError, OSError)):
                    log.exception("ota: command %s failed", p.name)
                answer = {"ok": False, "error": str(e) or type(e).__name__}
            tmp = answer_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(answer))
            os.replace(tmp, answer_path)
            for leftover in (p, p.with_suffix(".bundle")):
                try:
                    leftover.unlink()
                except OSError:
                    pass

    def command(self, cmd, bundle_path):
        from openpole.ota import bundle as bundle_mod

        if cmd.get("cmd") == "push":
            b = bundle_mod.read(bundle_path.read_bytes(), self.cfg.ota_release_keys, self.cfg.ota_require_signed)
            nodes = self.match(cmd["nodes"])
            return self._push(b, nodes, int(cmd.get("canary", 1)), cmd.get("max_parallel"))
        if cmd.get("cmd") == "cancel":
            return {"cancelled": self._cancel(set(cmd.get("jobs") or ()), cmd.get("rollout"))}
        raise OtaError(f"unknown command {cmd.get('cmd')!r}")

    def known_nodes(self):
        return set(self.cfg.node_keys)

    def match(self, patterns):
        import fnmatch

        known = sorted(self.known_nodes())
        return [n for n in known if any(fnmatch.fnmatchcase(n, p) for p in patterns)]


# --- read-only views, for `openpole ota status`, `edge status`, /metrics and the page ---
def jobs(db, limit=200):
    rows = db.execute("SELECT j.id, j.rollout, j.node, j.state, j.reason, j.done, j.total, j.canary, j.app, j.prev, "
                      "j.created_ns, j.updated_ns, j.finished_ns, b.kind, b.version FROM ota_jobs j "
                      "JOIN ota_bundles b ON b.sha256 = j.bundle ORDER BY j.id DESC LIMIT ?", (limit,)).fetchall()
    keys = ("id", "rollout", "node", "state", "reason", "done", "total", "canary", "app", "prev", "created_ns",
            "updated_ns", "finished_ns", "kind", "version")
    return [dict(zip(keys, r)) for r in rows]


def rollouts(db, limit=20):
    rows = db.execute("SELECT r.id, r.state, r.reason, r.canary, r.max_parallel, r.t_ns, b.kind, b.version "
                      "FROM ota_rollouts r JOIN ota_bundles b ON b.sha256 = r.bundle ORDER BY r.id DESC LIMIT ?",
                      (limit,)).fetchall()
    keys = ("id", "state", "reason", "canary", "max_parallel", "t_ns", "kind", "version")
    return [dict(zip(keys, r)) for r in rows]


def summary(db):
    """{state: jobs} over every job, and the latest rollouts with their jobs."""
    counts = dict(db.execute("SELECT state, count(*) FROM ota_jobs GROUP BY state").fetchall())
    return {"jobs_by_state": {s: counts.get(s, 0) for s in STATES}, "rollouts": rollouts(db, 5), "jobs": jobs(db, 50)}


def read_only(state_dir):
    path = Path(state_dir) / "queue.sqlite"
    if not path.exists():
        raise OtaError(f"no agent state in {state_dir} (queue.sqlite): is that the agent's [state] dir?")
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        if not db.execute("SELECT 1 FROM sqlite_master WHERE name = 'ota_jobs'").fetchone():
            return {"jobs_by_state": {s: 0 for s in STATES}, "rollouts": [], "jobs": []}
        return summary(db)
    finally:
        db.close()
