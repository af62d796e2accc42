"""The edge agent: ingest > verify/decode/validate > timestamp > durable queue > batch > send.

Collaborators are injected (store, sink, clock) so tests replace the network and the clock, not
the logic. Two threads besides paho's: the writer (group commit, then PUBACK) and the sender.
"""

import json
import logging
import os
import queue
import random
import sqlite3
import threading
import time
from operator import itemgetter

from openpole.wire import batch, node_message, sign

from . import systemd
from .aggregate import Minutes
from .ingest import MqttIngest
from openpole.common import Histogram
from .sinks import Permanent, TooLarge, Transient, sink_for
from . import store as store_mod
from .store import Store

log = logging.getLogger("openpole.edge")
GROUP_COMMIT_MAX = 4000  # messages per transaction (the ingest window is larger)
CLOCK_FLOOR_NS = 1_577_836_800 * 10**9  # 2020-01-01: a pole clock before this is wrong
TQ_OK, TQ_UNSYNCED, TQ_IMPLAUSIBLE, TQ_NODE_RESET = 0, 1, 2, 3
LIMITS_EVERY_S = 10.0
SENDER_WAIT_MAX_S = 5.0  # the sender looks at least this often (the watchdog wants it alive)
EXIT_WORKER_DIED = 70  # EX_SOFTWARE
RETRY_MAX_S = 30.0  # the longest wait between two tries of the same batch
DISK_RETRY_S = 1.0
WORKER_STALE_S = 60.0  # a worker silent this long is hung: the watchdog is not fed (WatchdogSec=90)
SQLITE_BUSY, SQLITE_LOCKED = 5, 6
_NODE_BOOT_SEQ = itemgetter(0, 1, 2)


def _one_message_fault(e):
    """True for a queue write error one message can cause (a value SQLite cannot hold, a constraint
    refused): not a full disk (waited out instead), nor a database another process holds locked,
    where storing the messages one by one would only quarantine good data."""
    if not isinstance(e, (OverflowError, ValueError, TypeError, sqlite3.Error)):
        return False
    code = getattr(e, "sqlite_errorcode", None)
    if code is not None and code & 0xFF in (SQLITE_BUSY, SQLITE_LOCKED):
        return False
    return not (isinstance(e, sqlite3.OperationalError) and store_mod.disk_full(e))


def node_acks(accepted):
    """{node: [[boot, first seq, last seq], ...]}: the runs of node messages a group commit put on
    disk, for each node's ack topic (the node frees its outbox from them, sensor_specs/node_ack.cddl)."""
    out = {}
    node_of = run = None
    for node, boot, seq, *_ in sorted(accepted, key=_NODE_BOOT_SEQ):
        if node != node_of:
            node_of, run = node, [boot, seq, seq]
            out[node] = [run]
        elif run[0] == boot and run[2] + 1 >= seq:
            run[2] = seq  # sorted: seq is the run's last or one past it
        else:
            run = [boot, seq, seq]
            out[node].append(run)
    return out


class Agent:
    def __init__(self, cfg, store=None, sink=None, clock=time.time_ns, ingest_factory=MqttIngest, clock_synced=None):
        self.cfg = cfg
        self.store = store or Store(cfg.state_dir, cfg.quota_bytes, cfg.max_age_s)
        self.sink = sink or sink_for(cfg.upstream, compress=cfg.compress, pole=cfg.pole_id, nats_user=cfg.nats_user,
                                     nats_password=cfg.nats_password, nats_creds=cfg.nats_creds,
                                     nats_tls_ca=cfg.nats_tls_ca)
        self.clock = clock
        self.clock_synced = clock_synced  # callable -> True/False/None (unknown): see timesync.py
        self.inbox = queue.SimpleQueue()
        self.ingest = ingest_factory(cfg, self._deliver)
        self.stopping = threading.Event()
        self.upstream_ok = None
        self.last_error = None
        self.nodes = {}  # node id -> {"last_seen_ns", "boot", "seq", "gaps", "clock_offset_ms"}
        self.minutes = Minutes()
        self.minutes_lock = threading.Lock()
        self.committed_records = 0  # written since the sender last looked: it reads only when worth it
        self.send_wake = threading.Event()  # a batch may be due: full, closed minutes waiting, or stopping
        self.alive = {}  # worker name -> time.monotonic() of its last loop: what the watchdog feeds on
        self.disk_low = False  # the free-disk floor is reached (or SQLite said full): an alarm
        self.disk_waits = 0  # seconds-long waits for room, since start
        self.ack_latency = Histogram()
        self._threads = []
        self.minutes_out = []  # closed minutes not yet in a batch (under minutes_lock)
        self.last_delivered = None  # (clock ns, records) of the last batch the upstream acknowledged
        self.node_info = {}  # node id -> what its diag and status topics said (edge_agent/page.py)
        if hasattr(self.ingest, "on_side"):
            self.ingest.on_side = self._side

    # --- ingest side (paho's thread) ---
    def _deliver(self, topic, payload, mid, qos):
        self.inbox.put((self.clock(), topic, payload, mid, qos))

    @staticmethod
    def time_quality(now_ns, synced):
        """synced: the clock check's answer (True, False, or None when unknown), asked once a group."""
        if now_ns < CLOCK_FLOOR_NS:
            return TQ_IMPLAUSIBLE
        if synced is False:
            return TQ_UNSYNCED
        return TQ_OK

    # --- writer: decode, commit, then acknowledge ---
    def _writer(self):
        group_s = self.cfg.group_commit_ms / 1000
        idle_s = self.cfg.group_commit_idle_ms / 1000
        paused = getattr(self.ingest, "paused", None)  # an Event the ingest sets when the stream pauses
        while not self.stopping.is_set() or not self.inbox.empty():
            self.alive["writer"] = time.monotonic()
            try:
                items = [self.inbox.get(timeout=0.2)]
            except queue.Empty:
                continue
            # Group commit: one transaction (one fsync) for what arrives within group_commit_ms,
            # closed early when the stream pauses for group_commit_idle_ms: that is what a broker
            # at its in-flight limit (Mosquitto: 20 per client by default) looks like until we ack.
            deadline = time.monotonic() + group_s
            if paused is not None:  # the ingest says when it paused: no look every few ms
                while self.inbox.qsize() < GROUP_COMMIT_MAX:
                    left = deadline - time.monotonic()
                    if left <= 0 or paused.wait(left):
                        break
            else:
                size = self.inbox.qsize()
                while time.monotonic() < deadline and size < GROUP_COMMIT_MAX:
                    time.sleep(idle_s)  # a look every few ms, not a wake-up per message
                    grown = self.inbox.qsize()
                    if grown == size:
                        break  # the stream paused
                    size = grown
            while len(items) < GROUP_COMMIT_MAX:
                try:
                    items.append(self.inbox.get_nowait())
                except queue.Empty:
                    break
            if self._wait_for_disk():
                self.process(items)

    def _disk_short(self, why):
        """Below the free-disk floor, or SQLite found the disk full: hold the group, count it, say it."""
        if not self.disk_low:
            log.error("%s: not storing or acknowledging until there is room again; the broker and the nodes "
                      "keep the messages meanwhile", why)
        self.disk_low = True
        self.disk_waits += 1
        self.alive["writer"] = time.monotonic()  # waiting for room is alive, not hung
        self.stopping.wait(DISK_RETRY_S)

    def _when_room(self, write, *args):
        """Run a queue write, waiting out a full disk (SQLITE_FULL) instead of dying of it."""
        while True:
            try:
                return write(*args)
            except sqlite3.OperationalError as e:
                if not store_mod.disk_full(e) or self.stopping.is_set():
                    raise
                self._disk_short(f"the queue's disk is full ({e})")

    def _wait_for_disk(self):
        """False when stopping first: the held group is never acked, so the broker sends it again."""
        while not self.stopping.is_set():
            free = self.store.free_bytes()
            if free >= self.cfg.min_free_bytes:
                self.disk_low = False
                return True
            self._disk_short(f"{free} bytes free on the queue's disk, under the {self.cfg.min_free_bytes}-byte floor")
        return False

    def _track(self, msg, receive_ns):
        """Per node: last seen, sequence gaps (a loss estimate), clock offset. True for a message
        newer than any seen from the node (not a replay)."""
        boot, seq = msg.boot, msg.seq
        n = self.nodes.get(msg.node)
        if n is None:
            n = self.nodes[msg.node] = {"boot": boot, "seq": seq - 1, "gaps": 0, "messages": 0}
        last_boot, last_seq = n["boot"], n["seq"]
        n["sensors"] = msg.status  # {sensor: [state, errors(, lost)]}: a reference, no copy
        if boot == last_boot:
            new = seq > last_seq
            if seq > last_seq + 1:
                n["gaps"] += seq - last_seq - 1  # lost on the way: a loss estimate
        else:
            new = boot > last_boot
            if new and n["messages"]:
                n["resets"] = n.get("resets", 0) + 1  # a new boot: the node reset (diag says why)
        if new:
            n["boot"], n["seq"] = boot, seq
        n["messages"] += 1
        n["last_seen_ns"] = receive_ns
        if msg.clock_ms is not None:
            n["clock_offset_ms"] = msg.clock_ms - receive_ns // 1_000_000  # node clock - pole clock
        return new

    def process(self, items):
        """Decode a group of (receive_ns, topic, payload, mid, qos), commit it, then ack it."""
        decoded, rejected = [], []  # decoded: (queue row, message, item)
        pole, keys, require_mac = self.cfg.pole_id, self.cfg.node_keys, self.cfg.require_mac
        decode, senml_records, time_quality = node_message.decode, batch.senml_records, self.time_quality
        synced = self.clock_synced() if self.clock_synced is not None else None
        for item in items:
            receive_ns, topic, payload, mid, qos = item
            try:
                msg = decode(payload, keys, require_mac)
                parts = topic.split("/")
                if len(parts) != 4 or parts[2] != msg.node:
                    raise node_message.Rejected("topic_mismatch", f"node {msg.node!r} published on {topic!r}")
                tq = time_quality(receive_ns, synced)
                if msg.age_lower_bound and tq == TQ_OK:
                    tq = TQ_NODE_RESET  # sampled before a node reset: the true time is earlier
                count, senml = senml_records(pole, msg, receive_ns, tq)
                clock_ok = 1 if tq == TQ_OK or tq == TQ_NODE_RESET else 0
                decoded.append(((msg.node, msg.boot, msg.seq, receive_ns, count, senml, clock_ok), msg, item))
            except node_message.Rejected as e:
                rejected.append((receive_ns, topic, e.reason, str(e), bytes(payload)))
            except Exception as e:  # a message this code could not handle: kept and counted, never fatal
                log.exception("message on %s could not be processed; quarantined", topic)
                rejected.append((receive_ns, topic, "internal_error", f"{type(e).__name__}: {e}", bytes(payload)))
        stored = self._commit(decoded, rejected)
        # Tracked once stored: a message that never reached the disk must not count as the node's
        # newest, or the node's next ones would be taken for replays and left out of the minutes.
        track, add = self._track, self.minutes.add
        with self.minutes_lock:
            for row, msg, _ in stored:
                if track(msg, row[3]):
                    add(msg.node, msg.readings, row[3])
        accepted = [row for row, _, _ in stored]
        self.committed_records += sum(a[4] for a in accepted)
        if self.committed_records >= self.cfg.batch_max:
            self.send_wake.set()
        self.ingest.ack_group([(mid, qos) for _, _, _, mid, qos in items], node_acks(accepted))
        acked_at = self.clock()
        observe = self.ack_latency.observe
        for item in items:
            observe((acked_at - item[0]) / 1e9)

    def _commit(self, decoded, rejected):
        """Store a group in one transaction and return what was stored. When one message breaks the
        transaction, the group is halved until the part that breaks it is that message alone: it
        goes to the quarantine (internal_error), the others are stored and acknowledged (some
        2 log2 n commits for one bad message in n, not n), so it cannot stop the writer and come
        back from the broker after every restart."""
        try:
            self._when_room(self.store.append, [d[0] for d in decoded], rejected)
            return decoded
        except Exception as e:
            if not _one_message_fault(e):
                raise
            log.warning("a group of %d messages could not be stored at once (%s: %s); storing it in halves",
                        len(decoded), type(e).__name__, e)
        half = len(decoded) // 2
        stored, parts = [], [decoded[half:], decoded[:half]] if half else [decoded]
        while parts:
            part = parts.pop()
            try:
                self._when_room(self.store.append, [d[0] for d in part], [])
                stored.extend(part)
                continue
            except Exception as e:
                if not _one_message_fault(e):
                    raise
                fault = f"{type(e).__name__}: {e}"
            if len(part) > 1:
                half = len(part) // 2
                parts += [part[half:], part[:half]]  # the first half next: stored in arrival order
                continue
            receive_ns, topic, payload = part[0][2][:3]
            log.error("message on %s could not be stored (%s); quarantined", topic, fault)
            bad = (receive_ns, topic, "internal_error", fault[:200], bytes(payload))
            self._when_room(self.store.append, [], [bad])
        if rejected:
            self._when_room(self.store.append, [], rejected)
        return stored

    # --- the nodes' diag reports and status (paho's thread): for the page and /status ---
    SIDE_MAX_BYTES = 16384
    SIDE_MAX_NODES = 1000

    def _side(self, topic, payload):
        parts = topic.split("/")
        if len(parts) != 4 or len(payload) > self.SIDE_MAX_BYTES or not node_message.NODE_ID_RE.match(parts[2]):
            self.store.count("side_rejected")
            return
        node, kind = parts[2], parts[3]
        info = self.node_info.get(node)
        if info is None:
            if len(self.node_info) >= self.SIDE_MAX_NODES:
                self.store.count("side_rejected")
                return
            info = self.node_info[node] = {}
        now = self.clock()
        if kind == "status":
            info["online"] = payload == b"online"
            info["status_ns"] = now
            return
        try:
            report = json.loads(payload)
        except (ValueError, RecursionError):  # not JSON, or nested past what Python parses
            self.store.count("side_rejected")
            return
        if not isinstance(report, dict):
            self.store.count("side_rejected")
        elif "cmd" in report:  # a command's answer; a diag command's carries a whole report
            info["reply"], info["reply_ns"] = report, now
            if isinstance(report.get("diag"), dict):
                info["diag"], info["diag_ns"] = report["diag"], now
                self._keep_diag(node, now, json.dumps(report["diag"]))
        else:
            info["diag"], info["diag_ns"] = report, now
            self._keep_diag(node, now, payload.decode("utf-8", "replace"))

    def _keep_diag(self, node, now, text):
        """For the page's history, when the disk has room: this runs on paho's thread, which must
        not wait out a full disk as the writer does (the ingest and the keepalive would stop)."""
        try:
            self.store.keep_diag(node, now, text)
        except sqlite3.OperationalError as e:
            if not store_mod.disk_full(e):
                raise
            self.store.count("diag_not_kept_disk_full")

    def _close_minutes(self):
        """Close the minutes that are done: kept for the page's charts at once, sent upstream with
        the next batch (one of their own when no record waits)."""
        with self.minutes_lock:
            closed = self.minutes.close(self.clock())
            self.minutes_out.extend(closed)
        if closed:
            self._when_room(self.store.keep_minutes, closed)

    # --- sender: batches upstream, acknowledged batches leave the queue ---
    def _limits(self):
        """The queue's quota and maximum age on their own timer: an outage (the sender retrying one
        batch for hours) must not stop them, or the disk fills. Minutes close here too, so the
        page's charts go on while the upstream is away, and the last minutes before a quiet spell
        go upstream without waiting for the next reading."""
        while not self.stopping.is_set():
            self._when_room(self.store.enforce_limits, self.clock())
            self._close_minutes()
            if self.minutes_out:
                self.send_wake.set()
            self.stopping.wait(LIMITS_EVERY_S)

    def _sender(self):
        last_send = time.monotonic()
        backlog = True  # what an earlier run left goes at once
        interval = self.cfg.batch_interval_s
        while not self.stopping.is_set():
            self.alive["sender"] = time.monotonic()
            # A batch is due when its interval is up, it is full, the queue is behind or closed minutes
            # wait; otherwise the sender sleeps until one is (woken by the writer or the limits timer).
            self.send_wake.clear()
            waited = time.monotonic() - last_send
            if not (backlog or waited >= interval or self.committed_records >= self.cfg.batch_max or self.minutes_out):
                self.send_wake.wait(min(interval - waited, SENDER_WAIT_MAX_S))
                continue
            self.committed_records = 0
            rows, backlog = self.store.pending(self.cfg.batch_max)
            self._close_minutes()
            with self.minutes_lock:
                closed, self.minutes_out = self.minutes_out, []
            if not rows and not closed:
                last_send = time.monotonic()  # nothing waiting: the interval starts with the next record
                continue
            if self._deliver_batch(rows, closed):
                backlog = True  # split: the rest of what was due goes at once
            last_send = time.monotonic()

    def _batch(self, rows, closed):
        records = sum(r[1] for r in rows)
        batch_id = batch.new_batch_id()
        body = batch.encode(batch_id, self.cfg.pole_id, [r[2] for r in rows], records, self.clock(), closed)
        if self.cfg.upstream_key:
            body = sign.sign(body, self.cfg.pole_id, self.cfg.upstream_key)
        return batch_id, body, records

    def _deliver_batch(self, rows, closed):
        """Send one batch until the upstream acknowledges it (the same batch id each time), halve it
        on a 413, quarantine it on a refusal of its content. True when it was split."""
        batch_id, body, records = self._batch(rows, closed)
        backoff = 0.0
        split = False
        while not self.stopping.is_set():
            try:
                answer = self.sink.send(batch_id, body)
                if answer and answer.get("duplicate"):
                    self.store.count("upstream_duplicates")  # a re-send after a lost ack, stored once upstream
                self._when_room(self.store.acknowledged, rows[-1][0] if rows else None, records)
                self.upstream_ok, self.last_error = True, None
                self.last_delivered = (self.clock(), records)
                return split
            except TooLarge as e:
                if len(rows) <= 1:
                    what = "a single message is" if rows else "its minute aggregates alone are"
                    self._refused(Permanent(f"{e}; {what} that large"), batch_id, body, rows, records)
                    return split
                rows = rows[: len(rows) // 2]  # the rest goes in the next batches
                split = True
                batch_id, body, records = self._batch(rows, closed)
                self.store.count("upstream_batches_split")
                log.warning("%s; sending %d messages instead", e, len(rows))
            except Transient as e:
                self.alive["sender"] = time.monotonic()  # retrying is alive; a hung send is not
                self.upstream_ok, self.last_error = False, str(e)
                self.store.count("upstream_retries")
                if e.code:
                    self.store.count(f"upstream_http_{e.code}")
                # Decorrelated jitter (AWS architecture blog): spreads retries of many poles.
                backoff = min(RETRY_MAX_S, random.uniform(0.5, max(0.5, backoff * 3)))
                log.warning("%s; retrying in %.1f s", e, backoff)
                self.stopping.wait(backoff)
            except Permanent as e:
                self._refused(e, batch_id, body, rows, records)
                return split
        return split

    def _refused(self, e, batch_id, body, rows, records):
        self.last_error = str(e)
        log.error("%s; batch %s quarantined", e, batch_id.hex())
        self.store.append([], [(self.clock(), "upstream", "upstream_refused", str(e), body)])
        self.store.acknowledged(rows[-1][0] if rows else None, records, counter="records_refused_upstream")

    def _watchdog(self):
        """Feed systemd's watchdog while the writer and the sender both looped recently: a hung
        thread in a live process gets the service restarted."""
        every = systemd.watchdog_interval_s()
        while not self.stopping.wait(every):
            now = time.monotonic()
            if all(now - self.alive.get(w, 0) < WORKER_STALE_S for w in ("writer", "sender")):
                systemd.notify("WATCHDOG=1")

    def _guarded(self, target):
        """A worker that dies takes the process down (exit 70): a pole agent that looks alive while
        it neither stores nor sends would never be restarted by systemd."""
        def run():
            try:
                target()
            except BaseException:
                log.critical("the %s thread died; exiting so the service restarts", target.__name__[1:], exc_info=True)
                logging.shutdown()
                os._exit(EXIT_WORKER_DIED)
        return run

    def start(self):
        workers = [self._writer, self._sender, self._limits]
        if systemd.watchdog_interval_s() is not None:
            workers.append(self._watchdog)
        for target in workers:
            t = threading.Thread(target=self._guarded(target), name=f"openpole-{target.__name__[1:]}", daemon=True)
            t.start()
            self._threads.append(t)
        self.ingest.start()
        systemd.notify("READY=1")

    def stop(self):
        self.ingest.stop()
        self.stopping.set()
        self.send_wake.set()
        for t in self._threads:
            t.join(timeout=5)
        self.store.close()
