"""`openpole city serve`: the SensorThings API over HTTP (aiohttp), read-only and bounded.

GET, HEAD and OPTIONS only (anything else 405); each client (by address) has a token bucket (429 with
Retry-After past it); each query runs under a statement timeout in a read-only transaction (503 with
Retry-After when it takes too long); a bad request is a 400 with one line that says what is wrong.
Stateless: any number of processes can serve one database behind a load balancer.
"""

import asyncio
import ipaddress
import json
import logging
import re
import time

from .errors import StaError
from .mapping import build
from .request import Api

log = logging.getLogger("openpole.city.sta")
ALLOW = "GET, HEAD, OPTIONS"
EVENTS = re.compile(r"^/Datastreams\((\d{1,19})\)/Observations/events/?$")
MAX_STREAMS = 100  # server-sent event streams per process
MAX_STREAMS_PER_CLIENT = 4  # of them one client address may hold: one client cannot take them all
KEEPALIVE_S = 15.0


class RateLimit:
    """A token bucket per client: rate requests per second, burst at most."""

    def __init__(self, rate, burst, clients=100_000):
        self.rate, self.burst, self.clients = rate, burst, clients
        self.buckets = {}

    def take(self, who, now=None):
        """-> 0 when allowed, else the seconds until a request would be."""
        if self.rate <= 0:
            return 0
        now = time.monotonic() if now is None else now
        tokens, at = self.buckets.get(who, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.rate)
        if tokens >= 1:
            self.buckets[who] = (tokens - 1, now)
            if len(self.buckets) > self.clients:  # forget the idle ones; a full bucket is the default anyway
                self.buckets = {k: v for k, v in self.buckets.items() if now - v[1] < self.burst / self.rate}
                if len(self.buckets) > self.clients // 2:
                    # this many active at once: keep the latest half, so that the sweep is rare
                    # (each one a pass over them all) however many addresses a client rotates through
                    latest = sorted(self.buckets.items(), key=lambda kv: kv[1][1])[-(self.clients // 2):]
                    self.buckets = dict(latest)
            return 0
        self.buckets[who] = (tokens, now)
        return (1 - tokens) / self.rate


def error_body(status, message):
    return json.dumps({"type": "error", "code": status, "message": message})


class Server:
    def __init__(self, dsn, public_url, rate=20.0, burst=60, timeout_s=10.0, pool_size=4, specs_url=None,
                 trust_forwarded=False):
        self.dsn = dsn
        self.public = public_url.rstrip("/")
        self.base = self.public + "/v1.1"
        self.timeout_s = timeout_s
        self.pool_size = pool_size
        self.limit = RateLimit(rate, burst)
        self.trust_forwarded = trust_forwarded
        self.entities = build(specs_url or (self.public + "/specs/"))
        self.api = Api(self.entities, self.base)
        self.pool = None
        self.streams = 0
        self.streams_of = {}  # client -> its open streams
        self.closing = False  # set at shutdown: live streams end
        self.events_interval_s = 1.0

    async def check(self):
        """One-line UserErrors for a database that cannot be served; -> warnings to print."""
        import psycopg

        from ...common import redact_url
        from ...errors import UserError

        try:
            conn = await psycopg.AsyncConnection.connect(self.dsn, connect_timeout=10, autocommit=True)
        except psycopg.OperationalError as e:
            first = " ".join(str(e).split())[:200]
            raise UserError(f"--db {redact_url(self.dsn)}: cannot connect to PostgreSQL: {first}") from None
        async with conn:
            need = ("things", "thing_poles", "locations", "series", "samples", "hourly", "daily")
            cur = await conn.execute("SELECT " + ", ".join(f"to_regclass('{t}') IS NOT NULL" for t in need))
            have = await cur.fetchone()
            missing = [t for t, ok in zip(need, have) if not ok]
            if missing:
                raise UserError(f"--db: the database has no {', '.join(missing)} table(s) (openpole's city schema 3): "
                                f"run `openpole city init --db DSN` with this openpole, or check the role's search_path")
            cur = await conn.execute("SELECT has_table_privilege('samples', 'INSERT') OR "
                                     "has_table_privilege('samples', 'DELETE')")
            if (await cur.fetchone())[0]:
                return ["warning: --db connects as a role that can write; serve as a read-only role (openpole_reader)"]
        return []

    async def open(self):
        from psycopg.rows import dict_row
        from psycopg_pool import AsyncConnectionPool

        ms = int(self.timeout_s * 1000)

        async def configure(conn):
            await conn.set_autocommit(True)
            await conn.execute("SET TIME ZONE 'UTC'")
            await conn.execute(f"SET statement_timeout = {ms}")
            await conn.execute("SET default_transaction_read_only = on")
            # JIT compiles a plan the planner thinks costly in 100 ms or more: more than these
            # index-bound queries take to run
            await conn.execute("SET jit = off")
            conn.row_factory = dict_row

        # check: a connection a restart or failover cut is replaced before a request gets it
        self.pool = AsyncConnectionPool(self.dsn, min_size=1, max_size=self.pool_size, configure=configure,
                                        check=AsyncConnectionPool.check_connection, open=False,
                                        timeout=self.timeout_s, kwargs={"connect_timeout": 10})
        await self.pool.open(wait=True, timeout=30)

    async def close(self):
        if self.pool is not None:
            await self.pool.close()

    @staticmethod
    def _network(address):
        """An IPv6 client is its /64 (one host holds a whole /64 to pick addresses from), IPv4 its address."""
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return address
        if ip.version == 4:
            return str(ip)
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))

    def client(self, request):
        """Whom the rate limit counts: the peer; behind a trusted proxy, the address that proxy appended
        to X-Forwarded-For, its last entry (the entries before it are whatever the client sent)."""
        if self.trust_forwarded:
            fwd = ",".join(request.headers.getall("X-Forwarded-For", []))
            last = fwd.rsplit(",", 1)[-1].strip()
            if last:
                return self._network(last)
        return self._network(request.remote or "?")

    def app(self):
        from aiohttp import web

        app = web.Application(middlewares=[self._guard])
        app.router.add_route("*", "/v1.1", self.handle)
        app.router.add_route("*", "/v1.1/{tail:.*}", self.handle)
        app.router.add_route("*", "/specs/{tail:.*}", self.specs)
        app.router.add_route("*", "/", self.index)
        app.router.add_route("*", "/{tail:.*}", self.not_found)
        return app

    def _response(self, status, body, ctype, headers=None):
        from aiohttp import web

        h = {"Access-Control-Allow-Origin": "*"}
        h.update(headers or {})
        if body is None:
            return web.Response(status=status, headers=h)
        if not isinstance(body, str):
            body = json.dumps(body, ensure_ascii=False, separators=(",", ":"))
        return web.Response(status=status, text=body, content_type=ctype.split(";")[0], charset="utf-8", headers=h)

    def error(self, status, message, headers=None):
        return self._response(status, error_body(status, message), "application/json", headers)

    async def _guard_impl(self, request, handler):
        from aiohttp import web

        if request.method == "OPTIONS":
            return web.Response(status=204, headers={"Allow": ALLOW, "Access-Control-Allow-Origin": "*",
                                                     "Access-Control-Allow-Methods": ALLOW,
                                                     "Access-Control-Allow-Headers": "*"})
        if request.method not in ("GET", "HEAD"):
            return self.error(405, f"{request.method} is not served: this SensorThings API is read-only "
                                   f"(GET, HEAD, OPTIONS)", {"Allow": ALLOW})
        wait = self.limit.take(self.client(request))
        if wait:
            secs = max(1, int(wait + 0.999))
            return self.error(429, f"too many requests from {self.client(request)}: wait {secs} s, and page with "
                                   f"@iot.nextLink rather than polling", {"Retry-After": str(secs)})
        return await handler(request)

    @property
    def _guard(self):
        from aiohttp import web

        @web.middleware
        async def guard(request, handler):
            return await self._guard_impl(request, handler)
        return guard

    async def index(self, request):
        return self._response(200, {"value": [{"name": "v1.1", "url": self.base}]}, "application/json")

    async def specs(self, request):
        """The spec site's page for a Sensor's metadata or an ObservedProperty's definition, rendered
        from the Markdown `openpole spec build` wrote (docs/specs/, shipped in the package)."""
        from ... import paths
        from ...spec.site import render_html

        rel = request.match_info["tail"]
        root = (paths.DOCS / "specs").resolve()
        md = (root / rel).with_suffix(".md").resolve() if rel.endswith(".html") else None
        if md is None or root not in md.parents or not md.is_file():
            return self.error(404, f"no spec page {rel[:80]!r}: the pages are listed at {self.public}/specs/README.html")
        from aiohttp import web

        return web.Response(text=render_html(str(md.relative_to(root)), md.read_text()), content_type="text/html",
                            charset="utf-8", headers={"Access-Control-Allow-Origin": "*"})

    async def not_found(self, request):
        return self.error(404, f"no such resource: the SensorThings API is at {self.base}")

    async def handle(self, request):
        import psycopg
        from psycopg_pool import PoolTimeout

        # the path and query as sent, each decoded once, by parse.py (segment by segment, pair by
        # pair): %2F inside a segment is no separator, and %2531 is '%31', not 1
        raw = request.rel_url.raw_path
        if not raw.startswith("/v1.1"):
            return self.error(404, f"no such resource: the SensorThings API is at {self.base}")
        path = raw[len("/v1.1"):]
        query = request.rel_url.raw_query_string
        m = EVENTS.match(path)
        if m and request.method == "GET":
            return await self.events(request, int(m.group(1)))
        try:
            async with self.pool.connection() as conn:
                # the timeout bounds the request, not only each statement: a request of many
                # statements ($count, each $expand level) each under it would hold the connection
                # for many times it. Cancelled, psycopg cancels the query on the server.
                status, body, ctype = await asyncio.wait_for(self.api.get(conn, path, query), self.timeout_s)
        except StaError as e:
            return self.error(e.status, e.message, e.headers)
        except PoolTimeout:
            return self.error(503, "the server is busy: try again in a few seconds", {"Retry-After": "5"})
        except (psycopg.errors.QueryCanceled, TimeoutError):
            return self.error(503, f"the query took longer than {self.timeout_s:g} s: narrow it (a time range in "
                                   f"$filter, a smaller $top or $expand)", {"Retry-After": "10"})
        except (psycopg.errors.DataException, psycopg.DataError) as e:
            first = str(e).splitlines()[0][:200]
            return self.error(400, f"the request cannot be evaluated: {first}")
        except psycopg.errors.ProgramLimitExceeded:
            return self.error(400, "the request is too complex: simplify $filter or $expand")
        except psycopg.OperationalError as e:
            log.warning("database unavailable: %s", " ".join(str(e).split())[:200])
            return self.error(503, "the database is not reachable: try again in a minute", {"Retry-After": "30"})
        except Exception:
            log.exception("request %s failed", request.path_qs[:300])
            return self.error(500, "the server failed on this request; it is logged: report the URL to the city")
        if request.method == "HEAD":
            body = None
        headers = {}
        if "Observations" in path:
            headers["Cache-Control"] = "no-cache"
        resp = self._response(status, body, ctype or "application/json", headers)
        if body is not None and len(resp.body or b"") > 1024:
            resp.enable_compression()  # gzip or deflate when the client accepts it, else as it is
        return resp


    async def events(self, request, ds_id):
        """Server-sent events: each new reading of one Datastream as `event: observation`, its data the
        Observation's JSON, its id the Observation's id (a browser's EventSource resumes after it)."""
        from aiohttp import web
        from psycopg_pool import PoolTimeout

        from .live import Feed
        from .mapping import datastream_kind

        if datastream_kind(ds_id) != 0:
            return self.error(400 if datastream_kind(ds_id) else 404,
                              f"live events are for Datastreams of readings; Datastream {ds_id} is not one "
                              f"(hourly and daily means: GET their Observations once an hour)")
        who = self.client(request)
        if self.streams_of.get(who, 0) >= MAX_STREAMS_PER_CLIENT:
            return self.error(429, f"{who} has {MAX_STREAMS_PER_CLIENT} live streams open already: close one, or "
                                   f"follow several Datastreams over MQTT", {"Retry-After": "60"})
        if self.streams >= MAX_STREAMS:
            return self.error(503, "too many live streams on this server: try again later", {"Retry-After": "60"})
        ds = self.entities["Datastream"]
        feed = Feed(self.api)
        try:
            async with self.pool.connection() as conn:
                row = await self.api.fetch_one(conn, ds, self.api._by_id(ds, ds_id), ds_id, None)
                last = request.headers.get("Last-Event-ID", "")
                await feed.start(conn, (int(last) >> 8) if re.fullmatch(r"\d{1,19}", last) else None)
        except StaError as e:
            return self.error(e.status, e.message)
        except PoolTimeout:
            return self.error(503, "the server is busy: try again in a few seconds", {"Retry-After": "5"})
        thing, key = row["k_thing_id"], row["k_key"]

        def where(p):
            return f"e.thing_id = {p(thing, 'bigint')} AND e.key = {p(key, 'int')}"

        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                           "Access-Control-Allow-Origin": "*", "X-Accel-Buffering": "no"})
        await resp.prepare(request)
        self.streams += 1
        self.streams_of[who] = self.streams_of.get(who, 0) + 1
        quiet = time.monotonic()
        try:
            await resp.write(b"retry: 5000\n\n")
            while not self.closing:
                await asyncio.sleep(self.events_interval_s)
                if request.transport is None or request.transport.is_closing():
                    break  # the client went away: its place is free now, not at the next write
                try:
                    async with self.pool.connection() as conn:
                        new = await feed.poll(conn, where)
                except Exception as e:  # the database away for a moment: the stream waits, the client stays
                    log.warning("live events: %s", " ".join(str(e).split())[:200])
                    new = []
                for obs, _, _ in new:
                    await resp.write(f"id: {obs['@iot.id']}\nevent: observation\ndata: "
                                     f"{json.dumps(obs, ensure_ascii=False, separators=(',', ':'))}\n\n".encode())
                    quiet = time.monotonic()
                if time.monotonic() - quiet > KEEPALIVE_S:
                    await resp.write(b": keepalive\n\n")
                    quiet = time.monotonic()
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self.streams -= 1
            self.streams_of[who] -= 1
            if not self.streams_of[who]:
                del self.streams_of[who]
        return resp


async def serve(dsn, host, port, public_url=None, **kw):
    from aiohttp import web

    server = Server(dsn, public_url or f"http://{host}:{port}", **kw)
    for line in await server.check():
        print(line, flush=True)
    await server.open()
    runner = web.AppRunner(server.app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_port=True)
    await site.start()
    return server, runner
