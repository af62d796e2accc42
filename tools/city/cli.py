"""`openpole city ...`: the city's side of openpole at scale."""

import json
from pathlib import Path

from ..errors import UserError


def register(sub):
    p = sub.add_parser("city", help="a city's NATS JetStream stream and PostgreSQL loaders for many poles")
    csub = p.add_subparsers(dest="city_command", metavar="ACTION", required=True)
    i = csub.add_parser("init", help="make the JetStream stream of pole batches and the database schema, or bring "
                                     "them up to date")
    i.add_argument("--nats", metavar="URL",
                   help="the cluster's servers, as NATS clients take them: nats://a:4222,nats://b:4222")
    i.add_argument("--db", metavar="DSN", help="PostgreSQL, e.g. postgresql://openpole@db1/openpole: apply the "
                                               "schema's migrations")
    i.add_argument("--replicas", type=int, default=3, help="copies of each batch across servers (default 3; 1 for "
                                                          "a single test server)")
    i.add_argument("--max-age-days", type=float, default=7.0, help="a batch waits at most this long for the loaders "
                                                                 "(default 7)")
    i.add_argument("--max-gb", type=float, default=50.0, help="the stream's size cap in GiB, oldest dropped past it "
                                                            "(default 50)")
    i.add_argument("--duplicate-window-s", type=float, default=600.0,
                   help="a re-sent batch id within this window is stored once (default 600)")
    i.set_defaults(func=run_init)
    ld = csub.add_parser("load", help="load the stream of pole batches into PostgreSQL (run several for more throughput)")
    ld.add_argument("--nats", required=True, metavar="URL", help="the cluster's servers: nats://a:4222,nats://b:4222")
    ld.add_argument("--db", required=True, metavar="DSN", help="PostgreSQL, e.g. postgresql://openpole@db1/openpole")
    ld.add_argument("--keys", type=Path, help="TOML table of pole id = key (hex): take only batches those poles signed")
    ld.add_argument("--group", type=int, default=100, help="batches fetched and committed at once (default 100)")
    ld.add_argument("--exit-when-idle", type=float, metavar="S", help="stop after S seconds with nothing to load")
    ld.set_defaults(func=run_load)
    st = csub.add_parser("stats", help="counts of loaded records (the keys of `openpole receiver stats`)")
    st.add_argument("--db", required=True, metavar="DSN")
    st.add_argument("--json", action="store_true", help="one JSON object")
    st.set_defaults(func=run_stats)


def run_init(args):
    if not args.nats and not args.db:
        raise UserError("city init: give --nats URL (the stream), --db DSN (the schema), or both")
    if args.db:
        from .db import MIGRATIONS, migrate

        applied = migrate(args.db)
        print(f"database schema: {'applied migration(s) ' + ', '.join(map(str, applied)) if applied else 'up to date'} "
              f"(version {MIGRATIONS[-1][0]})")
    if args.nats:
        _init_stream(args)
    return 0


def _init_stream(args):
    from .stream import STREAM, StreamSettings, ensure

    if not 1 <= args.replicas <= 5:
        raise UserError("--replicas: 1 to 5 (JetStream's limit)")
    settings = StreamSettings(replicas=args.replicas, duplicate_window_s=args.duplicate_window_s,
                              max_age_s=args.max_age_days * 86400, max_bytes=int(args.max_gb * 1024**3))
    what, cfg = ensure(args.nats, settings)
    print(f"stream {STREAM} {what}: subjects {', '.join(cfg.subjects)}, {cfg.num_replicas} replica(s), file storage, "
          f"duplicate window {cfg.duplicate_window:g} s, max age {cfg.max_age / 86400:g} days, "
          f"max {cfg.max_bytes / 1024**3:g} GiB")


def run_load(args):
    from . import load

    def report(counts):
        print(f"loaded {counts['batches']} batch(es): {counts['records_unique']} new readings, "
              f"{counts['records_received'] - counts['records_unique']} duplicates, {counts['rejected']} rejected",
              flush=True)

    from ..receiver.cli import pole_keys

    keys = pole_keys(args.keys) if args.keys else None
    totals = load.run(args.nats, args.db, keys, args.group, args.exit_when_idle, report)
    print(f"idle for {args.exit_when_idle:g} s: {totals['batches']} batches, {totals['records_unique']} new readings, "
          f"{totals['rejected']} rejected")
    return 0


def run_stats(args):
    from .load import stats

    st = stats(args.db)
    print(json.dumps(st) if args.json else ", ".join(f"{k} {v}" for k, v in st.items()))
    return 0
