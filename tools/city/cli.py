"""`openpole city ...`: the city's side of openpole at scale."""

import argparse
import json
import sys
from pathlib import Path

from ..errors import UserError
from ..common import parse_hostport


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
    _nats_auth(i)
    i.set_defaults(func=run_init)
    ld = csub.add_parser("load", help="load the stream of pole batches into PostgreSQL (run several for more throughput)")
    ld.add_argument("--config", type=Path, metavar="FILE", help="settings (TOML, docs/city.md); the flags override it")
    ld.add_argument("--nats", metavar="URL", help="the cluster's servers: nats://a:4222,nats://b:4222")
    ld.add_argument("--db", metavar="DSN", help="PostgreSQL, e.g. postgresql://openpole@db1/openpole")
    ld.add_argument("--keys", metavar="FILE", help="TOML table of pole id = key (hex): take only batches those poles signed")
    ld.add_argument("--group", type=int, help="batches fetched and committed at once (default 200)")
    ld.add_argument("--exit-when-idle", type=float, metavar="S", help="stop after S seconds with nothing to load")
    ld.add_argument("--name", help="this loader's name in `city status` (default HOST:PID)")
    ld.add_argument("--metrics", metavar="HOST:PORT", help="serve Prometheus metrics at http://HOST:PORT/metrics")
    ld.add_argument("--aggregate-every", type=float, metavar="S", dest="aggregate_every_s",
                    help="fold new samples into the hourly and daily aggregates every S seconds (default 10; 0: "
                         "leave it to other loaders)")
    ld.add_argument("--quiet", action="store_true", default=None, help="no line per loaded group")
    _nats_auth(ld)
    ld.set_defaults(func=run_load)
    po = csub.add_parser("poles", help="the city's registry of poles: their positions and addresses",
                         description="the city's registry of poles: their positions and addresses\n\nexample:\n  "
                                     "openpole city poles import --db postgresql://openpole@db1/openpole poles.csv",
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    psub = po.add_subparsers(dest="poles_command", metavar="ACTION", required=True)
    pi = psub.add_parser("import", help="add or update poles from a CSV file (pole id, lat, lon, address, description)",
                         description="add or update poles from a CSV file: pole id, lat, lon, address, description "
                                     "(a header line is allowed); a pole whose position changed gets a new location; "
                                     "a bad line is refused with its reason, the others imported (exit 1)\n\n"
                                     "example:\n  openpole city poles import --db postgresql://openpole@db1/openpole "
                                     "poles.csv",
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    pi.add_argument("file", type=Path, metavar="FILE.csv")
    pi.add_argument("--db", required=True, metavar="DSN")
    pi.set_defaults(func=run_poles_import)
    sa = csub.add_parser("status", help="the stream's lag per consumer, its servers, and each loader's rate and errors "
                                        "(exit 1 on a problem)")
    sa.add_argument("--nats", metavar="URL", help="the cluster's servers: nats://a:4222,nats://b:4222")
    sa.add_argument("--db", metavar="DSN", help="PostgreSQL: the loaders' rows")
    sa.add_argument("--json", action="store_true", help="one JSON object")
    _nats_auth(sa)
    sa.set_defaults(func=run_status)
    la = csub.add_parser("latest", help="each series' newest value in PostgreSQL")
    la.add_argument("--db", required=True, metavar="DSN")
    la.add_argument("--pole", help="one pole only")
    la.add_argument("--json", action="store_true", help="one JSON array")
    la.set_defaults(func=run_latest)
    ex = csub.add_parser("export", help="CSV in the Array of Things layout from PostgreSQL (as `receiver export`)")
    ex.add_argument("--db", required=True, metavar="DSN")
    ex.add_argument("--out", type=Path, required=True, help="directory for the CSV files")
    ex.add_argument("--since", help="from this UTC date or time (2026-11-30 or 2026-11-30T12:00)")
    ex.add_argument("--until", help="up to, not including, this UTC date or time")
    ex.set_defaults(func=run_export)
    st = csub.add_parser("stats", help="counts of loaded records (the keys of `openpole receiver stats`)")
    st.add_argument("--db", required=True, metavar="DSN")
    st.add_argument("--json", action="store_true", help="one JSON object")
    st.set_defaults(func=run_stats)
    what = "one UTC day's open-data files: Array of Things CSV, Parquet, a Frictionless datapackage.json, SHA256SUMS"
    pb = csub.add_parser("publish", help=what, formatter_class=argparse.RawDescriptionHelpFormatter,
                         description=f"{what} (docs/data-users.md). The same day with the same data gives the same "
                                     f"bytes; publishing again into the same directory adds the readings that came "
                                     f"late as a new edition.\n\nexample:\n  openpole city publish --day 2026-11-30 "
                                     f"--out /srv/opendata/2026-11-30 --db postgresql://openpole_reader@db1/openpole")
    pb.add_argument("--day", required=True, metavar="YYYY-MM-DD", help="the UTC day")
    pb.add_argument("--out", required=True, type=Path, metavar="DIR", help="the directory for the files (made if new)")
    pb.add_argument("--db", default="", metavar="DSN", help="PostgreSQL (a read-only role will do); default: libpq's "
                                                           "environment (PGHOST, PGDATABASE, PGUSER...)")
    pb.add_argument("--license", default="CC-BY-4.0", metavar="SPDX",
                    help="the data's licence, an SPDX id (default CC-BY-4.0; known: CC0-1.0, CC-BY-SA-4.0, ODbL-1.0, "
                         "ODC-By-1.0, PDDL-1.0; another with --license-url)")
    pb.add_argument("--license-url", metavar="URL", help="the licence's text, for one openpole does not know")
    pb.add_argument("--project", default="openpole", help="the project id in the files (default openpole)")
    pb.add_argument("--url", default="", help="where these files are published, put in provenance.csv and "
                                             "datapackage.json")
    pb.add_argument("--late-window", type=float, default=None, metavar="HOURS",
                    help="the day is 'open' (late readings may still come) this long after its end, then 'final' "
                         "(default 168: the stream's default max age)")
    pb.set_defaults(func=run_publish)
    from .sta import cli as sta_cli  # `city serve`: the SensorThings API

    sta_cli.register(csub)


def _nats_auth(parser):
    parser.add_argument("--nats-creds", metavar="FILE", help="a NATS credentials file (JWT and nkey seed); a user and "
                                                             "password go in the URL: nats://user:pass@host:4222")
    parser.add_argument("--nats-tls-ca", metavar="FILE", help="the CA that signed the NATS servers' certificates "
                                                              "(with tls://host:4222)")


def _nats_opts(args):
    from .stream import options

    return options(getattr(args, "nats_creds", None), getattr(args, "nats_tls_ca", None))


def run_init(args):
    if not args.nats and not args.db:
        raise UserError("city init: give --nats URL (the stream), --db DSN (the schema), or both")
    if args.db:
        from .db import MIGRATIONS, migrate

        applied = migrate(args.db)
        print(f"database schema: {'applied migration(s) ' + ', '.join(map(str, applied)) if applied else 'up to date'} "
              f"(version {MIGRATIONS[-1][0]})")
        from .db import READER, ensure_reader

        what, sql = ensure_reader(args.db)
        if sql is None:
            print(f"read-only role {READER} {what}: SELECT on every table and view, for the SensorThings API "
                  f"(give it a password: ALTER ROLE {READER} PASSWORD '...')")
        else:
            print(f"read-only role {READER}: this login may not make roles; as a PostgreSQL superuser, run:\n{sql}")
    if args.nats:
        _init_stream(args)
    return 0


def _init_stream(args):
    from .stream import CONSUMER, DEAD_STREAM, MAX_DELIVER, STREAM, StreamSettings, ensure

    if not 1 <= args.replicas <= 5:
        raise UserError("--replicas: 1 to 5 (JetStream's limit)")
    settings = StreamSettings(replicas=args.replicas, duplicate_window_s=args.duplicate_window_s,
                              max_age_s=args.max_age_days * 86400, max_bytes=int(args.max_gb * 1024**3))
    what, cfg, more = ensure(args.nats, settings, _nats_opts(args))
    print(f"stream {STREAM} {what}: subjects {', '.join(cfg.subjects)}, {cfg.num_replicas} replica(s), file storage, "
          f"duplicate window {cfg.duplicate_window:g} s, max age {cfg.max_age / 86400:g} days, "
          f"max {cfg.max_bytes / 1024**3:g} GiB")
    print(f"stream {DEAD_STREAM} {more['dead_letters']}: the advisories of batches given up after {MAX_DELIVER} "
          f"deliveries, until a loader records them in dead_letters")
    if more["consumer"] == "updated":
        print(f"consumer {CONSUMER} updated: a batch delivered {MAX_DELIVER} times without an ack is given up, not "
              f"redelivered for ever")


def run_load(args):
    from . import config, load
    from .stream import options

    cfg = config.load(args.config, nats=args.nats, db=args.db, keys=args.keys, group=args.group,
                      exit_when_idle=args.exit_when_idle, name=args.name, metrics=args.metrics,
                      aggregate_every_s=args.aggregate_every_s, quiet=args.quiet, nats_creds=args.nats_creds,
                      nats_tls_ca=args.nats_tls_ca)

    def report(counts):
        if cfg.quiet:
            return
        print(f"loaded {counts['batches']} batch(es): {counts['records_unique']} new readings, "
              f"{counts['records_received'] - counts['records_unique']} duplicates, {counts['rejected']} rejected",
              flush=True)

    from ..receiver.cli import pole_keys

    keys = pole_keys(Path(cfg.keys)) if cfg.keys else None
    metrics_at = parse_hostport(cfg.metrics, 9109, flag="--metrics") if cfg.metrics else None
    totals = load.run(cfg.nats, cfg.db, keys, cfg.group, cfg.exit_when_idle, report, metrics_at, cfg.name,
                      options(cfg.nats_creds, cfg.nats_tls_ca), aggregate_every_s=cfg.aggregate_every_s)
    print(f"idle for {cfg.exit_when_idle:g} s: {totals['batches']} batches, {totals['records_unique']} new readings, "
          f"{totals['rejected']} rejected")
    return 0


def run_poles_import(args):
    from .poles import import_csv

    done, refused = import_csv(args.db, args.file)
    for line in refused:
        print(f"openpole: {args.file}: {line}", file=sys.stderr)
    print(f"{args.file}: {done['new']} poles placed, {done['moved']} moved (a new location each), {done['updated']} "
          f"described anew, {done['same']} unchanged, {len(refused)} lines refused")
    return 1 if refused else 0


def run_stats(args):
    from .load import stats

    st = stats(args.db)
    print(json.dumps(st) if args.json else ", ".join(f"{k} {v}" for k, v in st.items()))
    return 0


def run_status(args):
    from .query import format_status, status

    if not args.nats and not args.db:
        raise UserError("city status: give --nats URL (the stream's lag), --db DSN (the loaders), or both")
    st = status(args.nats, args.db, _nats_opts(args) if args.nats else None)
    print(json.dumps(st) if args.json else format_status(st))
    return 1 if st["problems"] else 0


def run_latest(args):
    import datetime

    from .query import latest

    rows = latest(args.db, args.pole)
    if args.json:
        print(json.dumps(rows))
        return 0
    for r in rows:
        t = datetime.datetime.fromtimestamp(r["time"], datetime.timezone.utc)
        print(f"{r['pole']:<12} {r['node']:<16} {r['name']:<14} {r['value']:>10g} {r['unit'] or '':<8} {t:%Y-%m-%d %H:%M:%S}Z")
    if not rows:
        print("no readings loaded yet" + (f" for pole {args.pole}" if args.pole else ""))
    return 0


def run_export(args):
    from .query import export, parse_time

    since = parse_time(args.since, "--since") if args.since else None
    until = parse_time(args.until, "--until") if args.until else None
    n = export(args.db, args.out, since, until)
    print(f"wrote {n} records to {args.out}/data.csv.gz, with nodes.csv, sensors.csv and provenance.csv")
    return 0


def run_publish(args):
    from .publish import LATE_WINDOW_H, publish

    window = LATE_WINDOW_H if args.late_window is None else args.late_window
    if window < 0:
        raise UserError("--late-window: 0 hours or more")
    r = publish(args.db, args.day, args.out, license=args.license, license_url=args.license_url, project=args.project,
                url=args.url, late_window_h=window)
    late = f", {r['late']} received after the day's end" if r["late"] else ""
    what = (f"edition {r['edition']}, {r['added']} readings more than the last" if r["edition"] > 1 else "edition 1")
    state = (f"open: late readings may come until {r['open_until']} UTC; publish it again to add them"
             if r["status"] == "open" else "final")
    print(f"{r['day']}: {r['readings']} readings{late} to {args.out} ({what}; {state})")
    for name, size in sorted(r["files"].items()):
        print(f"  {name}: {size} bytes")
    return 0
