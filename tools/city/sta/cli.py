"""`openpole city serve`: its flags and its run loop (the server itself is server.py)."""

import argparse
from pathlib import Path

from ...common import parse_hostport
from ...errors import UserError


def register(csub):
    what = "a read-only OGC SensorThings API v1.1 over the city's PostgreSQL (docs/sensorthings.md)"
    sv = csub.add_parser("serve", help=what, formatter_class=argparse.RawDescriptionHelpFormatter,
                         description=f"{what}\n\nexample:\n  openpole city serve --db postgresql://openpole_reader@db1/"
                                     f"openpole --listen 0.0.0.0:8080 --public-url https://data.example.city/sta")
    sv.add_argument("--db", required=True, metavar="DSN",
                    help="PostgreSQL as a read-only role, e.g. postgresql://openpole_reader@db1/openpole")
    sv.add_argument("--listen", required=True, metavar="HOST:PORT", help="where to serve HTTP, e.g. 0.0.0.0:8080")
    sv.add_argument("--public-url", metavar="URL", help="the address users reach, put in every link "
                                                        "(default http://HOST:PORT), e.g. https://data.example.city/sta")
    sv.add_argument("--specs-url", metavar="URL", help="where the `openpole spec build` site is published (Sensor "
                                                       "metadata, ObservedProperty definitions); default: served here "
                                                       "under /specs/")
    sv.add_argument("--rate", type=float, default=20.0, help="requests per second per client (default 20; 0: no limit)")
    sv.add_argument("--burst", type=int, default=60, help="requests a client may send at once (default 60)")
    sv.add_argument("--timeout", type=float, default=10.0, help="seconds a query may take before a 503 (default 10)")
    sv.add_argument("--pool", type=int, default=4, help="database connections (default 4)")
    sv.add_argument("--trust-forwarded", action="store_true",
                    help="rate-limit by X-Forwarded-For (only behind a proxy that sets it)")
    sv.set_defaults(func=run_serve)
    register_feed(csub)


def run_serve(args):
    import asyncio

    host, port = parse_hostport(args.listen, 8080, "--listen")
    if args.rate < 0 or args.burst < 1 or args.timeout <= 0 or args.pool < 1:
        raise UserError("--rate must be 0 or more, --burst and --pool 1 or more, --timeout above 0")
    asyncio.run(_serve(args, host, port))


async def _serve(args, host, port):
    import asyncio
    import signal

    import psycopg

    from .server import serve

    try:
        server, runner = await serve(args.db, host, port, args.public_url, rate=args.rate, burst=args.burst,
                                     timeout_s=args.timeout, pool_size=args.pool, specs_url=args.specs_url,
                                     trust_forwarded=args.trust_forwarded)
    except (psycopg.OperationalError, TimeoutError, OSError) as e:
        raise UserError(f"cannot serve: {' '.join(str(e).split())[:200]} (check --db and --listen)") from None
    except Exception as e:
        if type(e).__name__ == "PoolTimeout":
            raise UserError("--db: cannot connect to PostgreSQL within 30 s: check the DSN and that the server "
                            "runs") from None
        raise
    print(f"SensorThings API v1.1 at {server.base} (listening on {host}:{port})", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    server.closing = True
    await runner.cleanup()
    await server.close()


def register_feed(csub):
    what = "each committed reading to MQTT as the SensorThings API renders it (v1.1/Datastreams(ID)/Observations, ...)"
    pb = csub.add_parser("feed", help=what, formatter_class=argparse.RawDescriptionHelpFormatter,
                         description=f"{what}\n\nexample:\n  openpole city feed --db postgresql://openpole_reader@db1/"
                                     f"openpole --mqtt 127.0.0.1:1883 --mqtt-user openpole-feed "
                                     f"--mqtt-password-file /etc/openpole/mqtt-feed.pw "
                                     f"--public-url https://data.example.city/sta")
    pb.add_argument("--db", required=True, metavar="DSN", help="PostgreSQL as a read-only role")
    pb.add_argument("--mqtt", required=True, metavar="HOST:PORT", help="the public broker, e.g. 127.0.0.1:1883")
    pb.add_argument("--mqtt-user", help="the publisher's user on the broker (the one its ACL lets write v1.1/#)")
    pb.add_argument("--mqtt-password-file", type=Path, help="a file holding that user's password")
    pb.add_argument("--public-url", required=True, metavar="URL",
                    help="the SensorThings API's address, as `city serve --public-url` (links in the payloads)")
    pb.set_defaults(func=run_feed)


def run_feed(args):
    import asyncio

    from .feed import Publisher

    host, port = parse_hostport(args.mqtt, 1883, "--mqtt")
    password = None
    if args.mqtt_password_file:
        try:
            password = args.mqtt_password_file.read_text().strip()
        except OSError as e:
            raise UserError(f"--mqtt-password-file {args.mqtt_password_file}: {e.strerror}") from None
    pub = Publisher(args.db, host, port, args.public_url, args.mqtt_user, password)
    try:
        pub.connect_mqtt()
    except OSError as e:
        raise UserError(f"--mqtt {args.mqtt}: cannot connect to the broker ({e.strerror or e})") from None
    pub.client.loop_stop()
    pub.client.disconnect()
    print(f"publishing new Observations to {host}:{port} under v1.1/", flush=True)
    try:
        asyncio.run(pub.run())
    except KeyboardInterrupt:
        pass
