"""`openpole sim load`: valid node messages v1 at QoS 1, fast, from CPython.

P publishing processes share N node ids; each message is a real v1 message (a BME280 sample) whose
node clock (key 6) is its publish time, so a receiver can measure end-to-end latency. Every PUBACK
is awaited before the command exits; --rate paces the total rate.
"""

import collections
import multiprocessing
import os
import time

import cbor2
import paho.mqtt.client as mqtt

from ..errors import UserError


def node_ids(n):
    return [f"load-{i:05d}" for i in range(n)]


def message(node, boot, seq, clock_ms, t=21.5):
    return cbor2.dumps({0: 1, 1: node, 2: boot, 3: seq, 4: [[0, {1: t, 2: 45.25, 3: 1013.5}]],
                        5: {"bme280": [0, 0]}, 6: clock_ms})


def _worker(args):
    host, port, nodes, count, rate, boot, proc_index = args
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"openpole-load-{os.getpid()}-{proc_index}")
    c.max_inflight_messages_set(1000)
    c.max_queued_messages_set(0)
    c.connect(host, port, keepalive=60)
    c.loop_start()
    seqs = dict.fromkeys(nodes, 0)
    infos = collections.deque()  # in flight, oldest first: PUBACKs come back in order
    t0 = time.monotonic()
    for i in range(count):
        node = nodes[i % len(nodes)]
        payload = message(node, boot, seqs[node], time.time_ns() // 1_000_000, 20.0 + (i % 100) / 10)
        seqs[node] += 1
        infos.append(c.publish(f"openpole/v1/{node}/data", payload, qos=1))
        if rate:
            ahead = t0 + (i + 1) / rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
        while len(infos) > 1000:  # a window of 1,000 unacknowledged messages: back-pressure
            infos.popleft().wait_for_publish(60)
    for info in infos:
        info.wait_for_publish(60)
        if not info.is_published():
            raise RuntimeError("a PUBACK did not arrive in 60 s")
    c.disconnect()
    c.loop_stop()
    return count


def run(host, port, nodes, messages, rate=0.0, procs=1, boot=1):
    """Publish `messages` messages over `nodes` node ids from `procs` processes; returns seconds."""
    if nodes < procs:
        raise UserError("--nodes must be at least --procs (each process owns its nodes)")
    ids = node_ids(nodes)
    parts = [ids[p::procs] for p in range(procs)]
    counts = [messages // procs + (1 if p < messages % procs else 0) for p in range(procs)]
    jobs = [(host, port, parts[p], counts[p], rate / procs if rate else 0.0, boot, p) for p in range(procs)]
    t0 = time.monotonic()
    if procs == 1:
        _worker(jobs[0])
    else:
        with multiprocessing.get_context("fork").Pool(procs) as pool:
            pool.map(_worker, jobs)
    return time.monotonic() - t0


def register(ssub):
    p = ssub.add_parser("load", help="publish valid node messages at QoS 1, as fast as asked")
    p.add_argument("--broker", default="127.0.0.1:1883", help="HOST:PORT of the broker")
    p.add_argument("--nodes", type=int, default=1000, help="node ids to spread the messages over")
    p.add_argument("--messages", type=int, default=10000, help="messages in all")
    p.add_argument("--rate", type=float, default=0.0, help="messages per second in all (0: as fast as possible)")
    p.add_argument("--procs", type=int, default=1, help="publishing processes")
    p.add_argument("--boot", type=int, default=1, help="boot id to use (a new one for a fresh run)")
    p.set_defaults(func=_cli)


def _cli(args):
    from ..common import parse_hostport

    host, port = parse_hostport(args.broker)
    try:
        secs = run(host, port, args.nodes, args.messages, args.rate, args.procs, args.boot)
    except (OSError, ConnectionError) as e:
        raise UserError(f"cannot publish to {args.broker}: {e}") from None
    print(f"published {args.messages} messages from {args.nodes} nodes in {secs:.2f} s "
          f"({args.messages / secs:.0f} msg/s, every PUBACK received)")
    return 0
