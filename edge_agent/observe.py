"""What the agent shows about itself: /status (JSON) and /metrics (Prometheus text) on a local port,
and `openpole edge status [--json]`, which reads /status from the running agent."""

import json
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from openpole.errors import UserError

STARTED = time.monotonic()  # uptime: a wall-clock step must not change it


def _is_set(event):
    return None if event is None else event.is_set()


def status(agent):
    """Everything an engineer asks first, as one dict."""
    now = agent.clock()
    messages, records, size, oldest = agent.store.depth()
    nodes = {}
    for node, n in sorted(agent.nodes.items()):
        seen = n.get("last_seen_ns")
        total = n["messages"] + n["gaps"]
        nodes[node] = {"last_seen_s": None if seen is None else round((now - seen) / 1e9, 1),
                       "last_seen_unix": None if seen is None else round(seen / 1e9, 3), "boot": n["boot"],
                       "seq": n["seq"], "messages": n["messages"], "missing": n["gaps"],
                       "loss_estimate": round(n["gaps"] / total, 4) if total else 0.0,
                       "clock_offset_ms": n.get("clock_offset_ms")}
    return {
        "pole": agent.cfg.pole_id,
        "uptime_s": round(time.monotonic() - STARTED),
        "broker": {"address": f"{agent.cfg.broker_host}:{agent.cfg.broker_port}", "connected": agent.ingest.connected,
                   "subscribed": _is_set(getattr(agent.ingest, "subscribed", None))},
        "upstream": {"url": agent.sink.describe(), "ok": agent.upstream_ok, "last_error": agent.last_error},
        "queue": {"messages": messages, "records": records, "bytes": size,
                  "oldest_age_s": None if oldest is None else round((now - oldest) / 1e9, 1)},
        "disk": {"free_bytes": agent.store.free_bytes(), "floor_bytes": agent.cfg.min_free_bytes,
                 "low": agent.disk_low, "waits": agent.disk_waits},
        "inbox": agent.inbox.qsize(),
        "ack_latency": agent.ack_latency.snapshot(),
        "counters": agent.store.counters(),
        "nodes": nodes,
        "ota": ota_status(agent),
    }


def ota_status(agent):
    """The update jobs (edge_agent/ota.py): how many in each state, the latest rollouts and jobs."""
    if getattr(agent, "ota", None) is None:
        return None
    from .ota import summary

    with agent.ota.lock:
        return summary(agent.ota.db)


def _name(counter):
    return "".join(c if c.isalnum() else "_" for c in counter.lower())


def metrics(st):
    """Prometheus text exposition of a status dict: a counter per event kind (openpole_edge_X_total),
    gauges, the ack latency histogram, and last-seen as a timestamp."""
    lines = []
    for k, v in sorted(st["counters"].items()):
        lines += [f"# TYPE openpole_edge_{_name(k)}_total counter", f"openpole_edge_{_name(k)}_total {v}"]
    q = st["queue"]
    lines += [
        "# TYPE openpole_edge_queue_messages gauge", f"openpole_edge_queue_messages {q['messages']}",
        "# TYPE openpole_edge_queue_records gauge", f"openpole_edge_queue_records {q['records']}",
        "# TYPE openpole_edge_queue_bytes gauge", f"openpole_edge_queue_bytes {q['bytes']}",
        "# TYPE openpole_edge_queue_oldest_age_seconds gauge", f"openpole_edge_queue_oldest_age_seconds {q['oldest_age_s'] or 0}",
        "# HELP openpole_edge_inbox_messages Messages received and not yet committed.",
        "# TYPE openpole_edge_inbox_messages gauge", f"openpole_edge_inbox_messages {st['inbox']}",
        "# TYPE openpole_edge_broker_connected gauge", f"openpole_edge_broker_connected {int(bool(st['broker']['connected']))}",
        "# TYPE openpole_edge_upstream_ok gauge", f"openpole_edge_upstream_ok {int(bool(st['upstream']['ok']))}",
        "# TYPE openpole_edge_disk_free_bytes gauge", f"openpole_edge_disk_free_bytes {st['disk']['free_bytes']}",
        "# TYPE openpole_edge_disk_low gauge", f"openpole_edge_disk_low {int(st['disk']['low'])}",
        "# TYPE openpole_edge_disk_waits_total counter", f"openpole_edge_disk_waits_total {st['disk']['waits']}",
        "# HELP openpole_edge_ack_latency_seconds From a node message's arrival to its PUBACK (after its commit).",
        "# TYPE openpole_edge_ack_latency_seconds histogram",
    ]
    h = st["ack_latency"]
    lines += [f'openpole_edge_ack_latency_seconds_bucket{{le="{le}"}} {n}' for le, n in h["buckets"]]
    lines += [f"openpole_edge_ack_latency_seconds_sum {h['sum']}", f"openpole_edge_ack_latency_seconds_count {h['count']}"]
    nodes = st["nodes"].items()
    lines += ["# TYPE openpole_edge_node_last_seen_timestamp_seconds gauge"]
    lines += [f'openpole_edge_node_last_seen_timestamp_seconds{{node="{n}"}} {v["last_seen_unix"]}' for n, v in nodes
              if v["last_seen_unix"] is not None]
    lines += ["# HELP openpole_edge_node_missing_messages_total Sequence gaps seen since the agent started.",
              "# TYPE openpole_edge_node_missing_messages_total counter"]
    lines += [f'openpole_edge_node_missing_messages_total{{node="{n}"}} {v["missing"]}' for n, v in nodes]
    o = st.get("ota")
    if o:
        lines += ["# HELP openpole_edge_ota_jobs Update jobs on this pole by state.", "# TYPE openpole_edge_ota_jobs gauge"]
        lines += [f'openpole_edge_ota_jobs{{state="{s}"}} {n}' for s, n in o["jobs_by_state"].items()]
        lines += ["# HELP openpole_edge_ota_job_progress_ratio Bytes a node has of its job's bundle, as a fraction.",
                  "# TYPE openpole_edge_ota_job_progress_ratio gauge"]
        lines += [f'openpole_edge_ota_job_progress_ratio{{node="{j["node"]}",job="{j["id"]}",state="{j["state"]}"}} '
                  f'{round(j["done"] / j["total"], 4) if j["total"] else 0}' for j in o["jobs"]
                  if j["state"] not in ("confirmed", "rolled_back", "failed", "cancelled")]
    return "\n".join(lines) + "\n"


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        st = status(self.server.agent)
        if self.path == "/metrics":
            body, ctype = metrics(st).encode(), "text/plain; version=0.0.4"
        elif self.path == "/status":
            body, ctype = json.dumps(st).encode(), "application/json"
        else:
            self.send_error(404, "GET /status or /metrics")
            return
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def serve(agent, port, host="127.0.0.1"):
    """Serve /status and /metrics in a thread; returns the server (None when port is 0)."""
    if not port:
        return None
    httpd = ThreadingHTTPServer((host, port), _Handler)
    httpd.daemon_threads = True
    httpd.agent = agent
    threading.Thread(target=httpd.serve_forever, name="openpole-metrics", daemon=True).start()
    return httpd


def fetch(port, host="127.0.0.1"):
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/status", timeout=5) as r:
            return json.load(r)
    except (urllib.error.URLError, OSError):
        raise UserError(f"no edge agent answers on {host}:{port}: is `openpole edge run` running (metrics.port)?") from None


def from_state(state_dir):
    """What the queue on disk says when the agent is down: its depth and its counters (read-only)."""
    import sqlite3
    from pathlib import Path

    from .store import read_only

    path = Path(state_dir) / "queue.sqlite"
    if not path.is_file():
        raise UserError(f"--state {state_dir}: no queue here (queue.sqlite): is it the agent's state.dir?")
    try:
        (messages, records, size, oldest), counters = read_only(path)
    except sqlite3.Error as e:
        raise UserError(f"{path}: cannot read the queue: {e}") from None
    return {"agent": "not asked: read from its state directory", "state": str(state_dir), "counters": counters,
            "queue": {"messages": messages, "records": records, "bytes": size,
                      "oldest_age_s": None if oldest is None else round((time.time_ns() - oldest) / 1e9, 1)}}


def human(st):
    q = st["queue"]
    queue = f"queue {q['messages']} messages ({q['records']} records, {q['bytes']} bytes), oldest {q['oldest_age_s']} s"
    if "broker" not in st:  # read from the state directory: the agent is down
        c = st["counters"]
        return "\n".join([f"the queue in {st['state']}, read from disk (`openpole edge status` without --state asks "
                          f"the running agent):", queue,
                          f"accepted {c.get('messages_accepted', 0)}, delivered {c.get('records_delivered', 0)} records "
                          f"in {c.get('batches_sent', 0)} batches"])
    b, u = st["broker"], st["upstream"]
    out = [f"pole {st['pole']}, up {st['uptime_s']} s",
           f"broker {b['address']}: {'connected' if b['connected'] else 'NOT CONNECTED'}",
           f"upstream {u['url']}: {'ok' if u['ok'] else 'not yet' if u['ok'] is None else 'FAILING: ' + str(u['last_error'])}",
           queue]
    d = st.get("disk")
    if d and d["low"]:
        out.append(f"DISK LOW: {d['free_bytes']} bytes free, under the {d['floor_bytes']}-byte floor: nothing is stored or "
                   f"acknowledged until there is room (state.min_free_bytes)")
    c = st["counters"]
    drops = {k: v for k, v in c.items() if k.startswith(("rejected_", "dropped_"))}
    out.append(f"accepted {c.get('messages_accepted', 0)}, duplicates {c.get('messages_duplicate', 0)}, "
               f"delivered {c.get('records_delivered', 0)} records in {c.get('batches_sent', 0)} batches")
    if drops:
        out.append("rejected or dropped: " + ", ".join(f"{k} {v}" for k, v in sorted(drops.items())))
    out.append(f"{'node':<16} {'last seen':>10} {'boot':>5} {'seq':>8} {'missing':>8} {'clock offset':>13}")
    for n, v in st["nodes"].items():
        off = "-" if v["clock_offset_ms"] is None else f"{v['clock_offset_ms']} ms"
        out.append(f"{n:<16} {str(v['last_seen_s']) + ' s':>10} {v['boot']:>5} {v['seq']:>8} {v['missing']:>8} {off:>13}")
    if st.get("ota") and st["ota"]["jobs"]:
        from openpole.ota.cli import human as ota_human

        out.append("updates (openpole ota status):")
        out += ota_human(st["ota"])
    return "\n".join(out)
