"""The edge agent: ingest > verify/decode/validate > timestamp > durable queue > batch > send.

Collaborators are injected (store, sink, clock) so tests replace the network and the clock, not
the logic. Two threads besides paho's: the writer (group commit, then PUBACK) and the sender.
"""

import logging
import queue
import random
import threading
import time

from . import batch, decode
from .ingest import MqttIngest
from .sinks import Permanent, Transient, sink_for
from .store import Store

log = logging.getLogger("openpole.edge")
GROUP_COMMIT_MAX = 2000  # messages per transaction
CLOCK_FLOOR_NS = 1_577_836_800 * 10**9  # 2020-01-01: a pole clock before this is wrong
TQ_OK, TQ_UNSYNCED, TQ_IMPLAUSIBLE, TQ_NODE_RESET = 0, 1, 2, 3


class Agent:
    def __init__(self, cfg, store=None, sink=None, clock=time.time_ns, ingest_factory=MqttIngest):
        self.cfg = cfg
        self.store = store or Store(cfg.state_dir)
        self.sink = sink or sink_for(cfg.upstream)
        self.clock = clock
        self.inbox = queue.SimpleQueue()
        self.ingest = ingest_factory(cfg, self._deliver)
        self.stopping = threading.Event()
        self.upstream_ok = None
        self.last_error = None
        self._threads = []

    # --- ingest side (paho's thread) ---
    def _deliver(self, topic, payload, mid, qos):
        self.inbox.put((self.clock(), topic, bytes(payload), mid, qos))

    def time_quality(self, now_ns):
        return TQ_IMPLAUSIBLE if now_ns < CLOCK_FLOOR_NS else TQ_OK

    # --- writer: decode, commit, then acknowledge ---
    def _writer(self):
        while not self.stopping.is_set() or not self.inbox.empty():
            try:
                first = self.inbox.get(timeout=0.1)
            except queue.Empty:
                continue
            items = [first]
            while len(items) < GROUP_COMMIT_MAX:
                try:
                    items.append(self.inbox.get_nowait())
                except queue.Empty:
                    break
            self.process(items)

    def process(self, items):
        """Decode a group of (receive_ns, topic, payload, mid, qos), commit it, then ack it."""
        accepted, rejected = [], []
        for receive_ns, topic, payload, mid, qos in items:
            try:
                msg = decode.decode(payload, self.cfg.node_keys, self.cfg.require_mac)
                topic_node = topic.split("/")[2] if topic.count("/") == 3 else None
                if topic_node != msg.node:
                    raise decode.Rejected("topic_mismatch", f"node {msg.node!r} published on {topic!r}")
                tq = self.time_quality(receive_ns)
                if msg.age_lower_bound and tq == TQ_OK:
                    tq = TQ_NODE_RESET  # sampled before a node reset: the true time is earlier
                accepted.append((msg, receive_ns, tq))
            except decode.Rejected as e:
                rejected.append((receive_ns, topic, e.reason, str(e), payload))
        self.store.append(accepted, rejected)
        for _, _, _, mid, qos in items:
            self.ingest.ack(mid, qos)

    # --- sender: batches upstream, acknowledged batches leave the disk ---
    def _sender(self):
        backoff = 0.0
        last_send = time.monotonic()
        while not self.stopping.is_set():
            rows = self.store.pending(self.cfg.batch_max)
            due = time.monotonic() - last_send >= self.cfg.batch_interval_s
            if not rows or (len(rows) < self.cfg.batch_max and not due):
                self.stopping.wait(0.05)
                continue
            batch_id = batch.new_batch_id()
            body = batch.encode(batch_id, self.cfg.pole_id, rows, self.clock())
            while not self.stopping.is_set():  # the same batch id until it is acknowledged
                try:
                    self.sink.send(batch_id, body)
                    self.store.delete([r["id"] for r in rows])
                    self.store.count("batches_sent")
                    self.upstream_ok, backoff = True, 0.0
                    break
                except Transient as e:
                    self.upstream_ok, self.last_error = False, str(e)
                    self.store.count("upstream_retries")
                    # Decorrelated jitter (AWS architecture blog): spreads retries of many poles.
                    backoff = min(30.0, random.uniform(0.5, max(0.5, backoff * 3)))
                    log.warning("%s; retrying in %.1f s", e, backoff)
                    self.stopping.wait(backoff)
                except Permanent as e:
                    self.last_error = str(e)
                    log.error("%s; batch %s quarantined", e, batch_id.hex())
                    self.store.append([], [(self.clock(), "upstream", "upstream_refused", str(e), body)])
                    self.store.delete([r["id"] for r in rows], counter="records_refused_upstream")
                    break
            last_send = time.monotonic()

    def start(self):
        for target in (self._writer, self._sender):
            t = threading.Thread(target=target, name=f"openpole-{target.__name__[1:]}", daemon=True)
            t.start()
            self._threads.append(t)
        self.ingest.start()

    def stop(self):
        self.ingest.stop()
        self.stopping.set()
        for t in self._threads:
            t.join(timeout=5)
        self.store.close()
