"""What a city's IT asks of the stream and the database: `openpole city latest`, `city export` and
`city status`."""

import asyncio
import datetime

from ..common import redact_url
from ..errors import UserError
from .db import connect, require_schema
from .stream import STREAM, _connect

LIVE_S = 60.0  # a loader whose row is older than this is reported as stopped
UTC = datetime.timezone.utc


def latest(dsn, pole=None):
    """Each series' newest value: [{pole, node, name, unit, value, time}] (time in Unix seconds),
    the shape of the receiver's /latest."""
    with connect(dsn) as conn:
        require_schema(conn)
        # One probe of samples_key per series (and partition); a clock a day ahead or more is not "latest".
        rows = conn.execute("SELECT t.pole, t.node, q.name, q.unit, r.value, extract(epoch FROM r.time)::float8 "
                            "FROM series se JOIN things t ON t.id = se.thing_id JOIN quantities q ON q.key = se.key "
                            "CROSS JOIN LATERAL (SELECT coalesce(s.vals[se.key]::text::float8, s.vals8[se.key]) AS value, "
                            "s.time FROM samples s WHERE s.thing_id = se.thing_id AND s.time < now() + interval '1 day' "
                            "AND coalesce(s.vals[se.key]::float8, s.vals8[se.key]) IS NOT NULL "
                            "ORDER BY s.time DESC, s.boot DESC, s.seq DESC LIMIT 1) r WHERE %s::text IS NULL OR t.pole = %s",
                            (pole, pole)).fetchall()
        # Readings kept from before schema 4 that no sample holds (db.py: readings_legacy).
        rows += conn.execute("SELECT DISTINCT ON (pole, node, quantity) pole, node, quantity, unit, value, "
                             "extract(epoch FROM time)::float8 FROM readings_legacy WHERE time < now() + interval '1 day' "
                             "AND (%s::text IS NULL OR pole = %s) ORDER BY pole, node, quantity, time DESC",
                             (pole, pole)).fetchall()
    newest = {}
    for r in rows:
        if r[:3] not in newest or newest[r[:3]][5] < r[5]:
            newest[r[:3]] = r
    return [dict(zip(("pole", "node", "name", "unit", "value", "time"), newest[k])) for k in sorted(newest)]


def _readings(conn, since, until):
    """(time, pole, node, quantity, value) between since and until, by time (then pole, node and
    quantity as code points), from server-side cursors: the samples' readings and the legacy ones."""
    import heapq

    names = dict(conn.execute("SELECT key, name FROM quantities").fetchall())
    window = (since, since, until, until)
    samples = conn.cursor(name="openpole_export")
    samples.itersize = 2000
    samples.execute('SELECT s.time, t.pole COLLATE "C", t.node COLLATE "C", s.vals, s.vals8 FROM samples s JOIN things t '
                    "ON t.id = s.thing_id WHERE (%s::timestamptz IS NULL OR s.time >= %s) AND (%s::timestamptz IS NULL "
                    "OR s.time < %s) ORDER BY 1, 2, 3, s.boot, s.seq", window)
    legacy = conn.cursor(name="openpole_export_legacy")
    legacy.itersize = 20000
    legacy.execute('SELECT time, pole COLLATE "C", node COLLATE "C", quantity COLLATE "C", value FROM readings_legacy '
                   "WHERE (%s::timestamptz IS NULL OR time >= %s) AND (%s::timestamptz IS NULL OR time < %s) "
                   "ORDER BY 1, 2, 3, 4", window)

    def expanded():
        for t, pole, node, vals, vals8 in samples:
            values = vals if vals is not None else vals8
            yield from sorted((t, pole, node, names[k], v) for k, v in enumerate(values, 1) if v is not None)

    return heapq.merge(expanded(), legacy, key=lambda r: r[:4])


def export(dsn, out_dir, since=None, until=None):
    """The readings between since and until (aware datetimes, either open) in the Array of Things
    layout, the receiver's export: by time, streamed from server-side cursors."""
    from ..receiver.export import write_aot

    with connect(dsn) as conn:
        require_schema(conn)
        nodes = conn.execute("SELECT pole, node FROM nodes ORDER BY pole, node").fetchall()
        return write_aot(out_dir, _readings(conn, since, until), nodes)


def parse_time(text, flag):
    """'2026-11-30' or '2026-11-30T12:00' (UTC unless it says otherwise) -> an aware datetime."""
    try:
        t = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise UserError(f"{flag} {text}: expected a date or time like 2026-11-30 or 2026-11-30T12:00") from None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


async def _stream_status(url, opts=None, patience_s=15.0):
    import nats.errors
    import nats.js.errors

    nc = await _connect(url, opts=opts)
    try:
        js = nc.jetstream(timeout=3)
        deadline = asyncio.get_running_loop().time() + patience_s
        while True:  # a server that just died took the stream's leadership with it: an election follows
            try:
                info = await js.stream_info(STREAM)
                consumers = await js.consumers_info(STREAM)
                break
            except nats.js.errors.NotFoundError:
                raise UserError(f"--nats {redact_url(url)}: no stream {STREAM}: run `openpole city init --nats URL` first") from None
            except (nats.errors.TimeoutError, nats.errors.NoRespondersError, nats.js.errors.ServiceUnavailableError):
                if asyncio.get_running_loop().time() > deadline:
                    raise UserError(f"--nats {redact_url(url)}: the stream {STREAM} has no leader for {patience_s:g} s: fewer than "
                                    f"a majority of its servers run; start the stopped nats-servers") from None
                await asyncio.sleep(0.5)
    finally:
        await nc.close()
    st, cl = info.state, info.cluster
    replicas = []
    if cl is not None:
        replicas.append({"server": cl.leader, "role": "leader", "current": True, "offline": False, "lag": 0})
        for p in cl.replicas or []:
            replicas.append({"server": p.name, "role": "replica", "current": bool(p.current),
                             "offline": bool(p.offline), "lag": p.lag or 0})
    return {
        "stream": {"name": STREAM, "batches": st.messages, "bytes": st.bytes, "first_seq": st.first_seq,
                   "last_seq": st.last_seq, "max_bytes": info.config.max_bytes, "max_age_s": info.config.max_age,
                   "replicas": replicas},
        "consumers": [{"name": c.name, "pending": c.num_pending, "in_flight": c.num_ack_pending,
                       "redelivered": c.num_redelivered, "waiting_fetches": c.num_waiting,
                       "delivered_seq": c.delivered.stream_seq if c.delivered else 0} for c in consumers],
    }


DEAD_SHOWN = 5  # the newest dead letters `city status` lists


AGGREGATES_LATE_S = 900  # samples waiting this long for the hourly aggregates: a problem
DEAD_RECENT_S = 86400  # a batch the stream gave up on within this long: a problem (an older one, history)


def _database(dsn):
    """(the loaders' rows, newest first; the dead letters' count and the newest DEAD_SHOWN; the
    aggregates' backlog)."""
    with connect(dsn) as conn:
        require_schema(conn)
        rows = conn.execute("SELECT name, extract(epoch FROM now() - started)::float8, "
                            "extract(epoch FROM now() - seen)::float8, batches, received, loaded, rejected, rate, errors "
                            "FROM loaders ORDER BY seen DESC").fetchall()
        dead, recent = conn.execute("SELECT count(*), count(*) FILTER (WHERE at > now() - make_interval(secs => %s)) "
                                    "FROM dead_letters", (DEAD_RECENT_S,)).fetchone()
        newest = conn.execute("SELECT id, extract(epoch FROM now() - at)::float8, stream_seq, subject, deliveries, reason, "
                              "octet_length(payload) FROM dead_letters ORDER BY id DESC LIMIT %s", (DEAD_SHOWN,)).fetchall()
        blocks, oldest = conn.execute("SELECT count(*), extract(epoch FROM now() - min(queued))::float8 FROM "
                                      "aggregate_queue").fetchone()
    out = []
    for name, up, ago, batches, received, loaded, rejected, rate, errors in rows:
        out.append({"name": name, "live": ago < LIVE_S, "up_s": round(up), "seen_s_ago": round(ago, 1),
                    "batches": batches, "readings": loaded, "duplicates": received - loaded, "rejected": rejected,
                    "rate": round(rate, 1), "errors": {k: v for k, v in errors.items() if v}})
    letters = [{"id": i, "s_ago": round(ago, 1), "stream_seq": seq, "subject": subject, "deliveries": deliveries,
                "reason": reason, "bytes": size} for i, ago, seq, subject, deliveries, reason, size in newest]
    return out, {"count": dead, "recent": recent, "newest": letters}, {"blocks_waiting": blocks, "oldest_s": round(oldest or 0, 1)}


def status(nats_url=None, dsn=None, nats_opts=None):
    """The stream, its consumers' lag and the loaders, with the problems among them."""
    out, problems = {}, []
    if nats_url:
        out.update(asyncio.run(_stream_status(nats_url, nats_opts)))
        for r in out["stream"]["replicas"]:
            if r["offline"] or not r["current"]:
                problems.append(f"stream replica on {r['server']} is {'offline' if r['offline'] else 'behind'}: "
                                f"start that nats-server, or replace it (nats-server docs: peer-remove)")
        mb = out["stream"]["max_bytes"]
        if mb and mb > 0 and out["stream"]["bytes"] > 0.8 * mb:
            problems.append("the stream is over 80 % of its size cap: add loaders, or the oldest batches will be "
                            "dropped (openpole city init --max-gb)")
    if dsn:
        out["loaders"], out["dead_letters"], out["aggregates"] = _database(dsn)
        late = out["aggregates"]["oldest_s"]
        if late > AGGREGATES_LATE_S:
            problems.append(f"the hourly aggregates are {_ago(late)} behind ({out['aggregates']['blocks_waiting']} blocks "
                            f"of samples wait): a running loader folds them every aggregates.every_s; see its log for "
                            f"'aggregates:' lines")
        if out["dead_letters"]["recent"]:
            problems.append(f"{out['dead_letters']['recent']} batch(es) given up by the stream in the last 24 h, not "
                            f"loaded: the loaders' logs say why; each is kept, with its payload, in table "
                            f"dead_letters")
    live = [l for l in out.get("loaders", []) if l["live"]]
    if nats_url and not out["consumers"] and out["stream"]["batches"]:
        problems.append(f"{out['stream']['batches']} batches wait and no loader has ever subscribed: start "
                        f"`openpole city load`")
    for c in out.get("consumers", []):
        if c["pending"] and dsn and not live:
            problems.append(f"{c['pending']} batches wait in consumer {c['name']} and no loader is running: "
                            f"start `openpole city load`")
    out["problems"] = problems
    return out


def _size(n):
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


def _ago(s):
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.0f} min" if s < 7200 else f"{s / 3600:.0f} h"


def format_status(st):
    lines = []
    if "stream" in st:
        s = st["stream"]
        reps = ", ".join(f"{r['server']} {r['role'] if r['current'] else 'offline' if r['offline'] else 'behind'}"
                         for r in s["replicas"]) or "one server"
        lines.append(f"stream {s['name']}: {s['batches']} batches ({_size(s['bytes'])}) held, "
                     f"at most {s['max_age_s'] / 86400:g} days; servers: {reps}")
        for c in st["consumers"]:
            lines.append(f"consumer {c['name']}: {c['pending']} batches waiting (lag), {c['in_flight']} in flight, "
                         f"{c['redelivered']} redelivered")
    if "loaders" in st:
        lines.append(f"loaders: {sum(l['live'] for l in st['loaders'])} running")
        stopped = [l for l in st["loaders"] if not l["live"]]
        shown = [l for l in st["loaders"] if l["live"]] + stopped[:5]  # the rows are newest first
        for l in shown:
            errors = ", ".join(f"{k} {v}" for k, v in l["errors"].items()) or "no errors"
            if l["live"]:
                lines.append(f"  {l['name']}: {l['rate']:g} readings/s, up {_ago(l['up_s'])}, {l['readings']} readings "
                             f"loaded, {l['duplicates']} duplicates, {l['rejected']} rejected, {errors}")
            else:
                lines.append(f"  {l['name']}: stopped (last seen {_ago(l['seen_s_ago'])} ago), {l['readings']} readings "
                             f"loaded")
        if len(stopped) > 5:
            lines.append(f"  and {len(stopped) - 5} loaders stopped earlier")
    agg = st.get("aggregates")
    if agg is not None:
        lines.append(f"aggregates: {agg['blocks_waiting']} blocks of samples wait for the hourly fold"
                     + (f", the oldest for {_ago(agg['oldest_s'])}" if agg["blocks_waiting"] else ""))
    dead = st.get("dead_letters")
    if dead and dead["count"]:
        lines.append(f"dead letters: {dead['count']} batch(es) delivered to loaders without an ack until the stream gave "
                     f"up, kept in table dead_letters: the loaders' logs say why")
        for d in dead["newest"]:
            held = f"{d['bytes']} bytes kept" if d["bytes"] is not None else "no longer in the stream"
            lines.append(f"  #{d['id']} {d['subject'] or '(no subject)'}: stream seq {d['stream_seq']}, {d['reason']} "
                         f"after {d['deliveries']} deliveries, {_ago(d['s_ago'])} ago, {held}")
        if dead["count"] > len(dead["newest"]):
            lines.append(f"  and {dead['count'] - len(dead['newest'])} earlier")
    elif dead is not None:
        lines.append("dead letters: none")
    for p in st["problems"]:
        lines.append(f"problem: {p}")
    return "\n".join(lines)
