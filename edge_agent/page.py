"""The pole's web page: what a technician on a lift or a city engineer sees on the pole's network.

Served by the agent (aiohttp, on a thread and event loop of its own, off unless page.listen is
set): this module is the server (routes, the password guard, actions); page_views.py says what each
page shows and page_templates.py draws it. An open page updates itself every page.refresh_s by
fetching its live part again (a few lines of script).

    /                   the pole: alarms, queue, upstream, disk, clock; each node, problems first
    /node/ID            a node: latest readings, charts of the last hour and day, diag, actions
    /node/ID/diag.json  its last diag report as the node sent it
    /status.json        the agent's /status
    POST /node/ID/action   diag, selftest or interval, with the page password; every one logged
    /updates            over-the-air updates: each rollout, its jobs node by node with their progress
    POST /updates/push     a bundle (multipart upload) to the nodes matching a pattern, with the password
    POST /updates/cancel   a rollout's jobs not yet on trial, with the password

Every request, whatever its method or path, passes the password guard first (page.open_read =
false); a refusal or an error is one line that says what to do, in HTML (JSON on a .json route).
Password checks run at most two at once (password.Checks). Bad input (a node id, a query string, a
form field) is a 400, never a 500. Reads touch only the reader connection of the queue's database
and the agent's in-memory state: nothing on the ingest path waits for the page.
"""

import asyncio
import base64
import hashlib
import json
import logging
import re
import sqlite3
import threading
import time
from http import HTTPStatus

from aiohttp import web

from openpole.wire.node_message import NODE_ID_RE

from . import observe, page_views as views
from .page_templates import error_page, node_live, node_rest, overview_live, page, updates_live, updates_rest
from .password import Checks

log = logging.getLogger("openpole.edge.page")


class _MalformedInOneLine(logging.Filter):
    """aiohttp logs each request its parser refuses (a URL over 8 KB, a broken header: it answers 400)
    with a traceback: anyone on the pole's network could fill the agent's journal. One line instead."""

    def filter(self, record):
        from aiohttp.http_exceptions import HttpProcessingError

        e = record.exc_info[1] if record.exc_info else None
        if isinstance(e, HttpProcessingError):
            record.msg, record.args, record.exc_info, record.exc_text = "the page refused a malformed request: %s", (
                type(e).__name__,), None, None
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


logging.getLogger("aiohttp.server").addFilter(_MalformedInOneLine())
ACTION_WAIT_S = 6.0  # how long an action waits for the node's answer before the page says "sent"
ACTIONS = ("diag", "selftest", "interval")
INTERVAL_S = (1, 86400)
FORM_MAX_BYTES = 16 * 1024
READ_OK_S = 600  # a page refreshing every few seconds: one scrypt in ten minutes
READ_OK_KEPT = 64  # accepted Authorization headers remembered at once
WRONG_PASSWORD_DELAY_S = 1.0  # a guesser gets one try a second per connection
COUNT_EVERY_S = 1.0
NODE_ID_TEXT = "1 to 32 of a-z, 0-9, - and _, starting with a letter or digit"
DECIMAL = re.compile(r"[0-9]{1,6}(\.[0-9]{1,6})?")  # seconds as a technician types them: 60, 0.5, 30.25
HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff",
           "Content-Security-Policy": "default-src 'self'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; "
                                      "img-src 'self' data:"}


class Refusal(Exception):
    """A request the page answers with status and one line (what went wrong and what to do)."""

    def __init__(self, status, text, headers=None):
        super().__init__(text)
        self.status, self.text, self.headers = status, text, headers or {}


def basic_password(header):
    """The password of an `Authorization: Basic` header (any user name), or None."""
    kind, _, token = header.partition(" ")
    if kind.lower() != "basic":
        return None
    try:
        return base64.b64decode(token.strip(), validate=True).decode("utf-8").partition(":")[2]
    except (ValueError, UnicodeError):
        return None


class Page:
    def __init__(self, agent, host, port):
        self.agent, self.host, self.port = agent, host, port
        self.cfg = agent.cfg
        self.loop = None
        self.runner = None
        self.checks = None  # password.Checks, made on the page's loop
        self._read_ok = {}  # sha256 of an accepted Authorization header -> until (monotonic)
        self._counts = {}  # counter -> n, not yet in the store (see _count)
        self._count_timer = None
        self.started = threading.Event()
        self.error = None

    @property
    def url(self):
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"http://{host}:{self.port}/"

    def start(self):
        """Serve on a thread of its own; returns the URL, or raises OSError (the port is taken)."""
        threading.Thread(target=self._serve, name="openpole-page", daemon=True).start()
        self.started.wait(15)
        if self.error:
            raise self.error
        return self.url

    def _serve(self):
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)
        self.checks = Checks()
        app = web.Application(middlewares=[self._guard], client_max_size=FORM_MAX_BYTES)
        node = "/node/{node:[^/]+}"  # aiohttp's default leaves out { and }: every id gets its answer here
        app.add_routes([web.get("/", self.overview), web.get(node, self.node),
                        web.get(node + "/diag.json", self.diag_json), web.get("/status.json", self.status_json),
                        web.post(node + "/action", self.action), web.get("/updates", self.updates),
                        web.post("/updates/push", self.updates_push), web.post("/updates/cancel", self.updates_cancel)])
        self.runner = web.AppRunner(app, access_log=None)
        try:
            self.loop.run_until_complete(self.runner.setup())
            site = web.TCPSite(self.runner, self.host, self.port, reuse_address=True)
            self.loop.run_until_complete(site.start())
            if not self.port:
                self.port = site._server.sockets[0].getsockname()[1]
        except OSError as e:
            self.error = e
            self.started.set()
            return
        self.started.set()
        self.loop.run_forever()

    def stop(self):
        if self.loop and self.runner:
            asyncio.run_coroutine_threadsafe(self._shutdown(), self.loop).result(10)
            self.loop.call_soon_threadsafe(self.loop.stop)

    async def _shutdown(self):
        await self.runner.cleanup()
        if self._count_timer:
            self._count_timer.cancel()
        counts, self._counts = self._counts, {}
        await self.loop.run_in_executor(None, self._store_counts, counts)
        self.checks.close()

    # --- counted and logged off the event loop: a store write waits for the writer's commit ---
    def _count(self, name):
        """Into the agent's counters (so /metrics shows it) at most once a second: a flood of
        guesses must not become a flood of SQLite writes."""
        self._counts[name] = self._counts.get(name, 0) + 1
        if self._count_timer is None:
            self._count_timer = self.loop.call_later(COUNT_EVERY_S, self._flush_counts)

    def _flush_counts(self):
        counts, self._counts, self._count_timer = self._counts, {}, None
        self.loop.run_in_executor(None, self._store_counts, counts)

    def _store_counts(self, counts):
        for name, n in counts.items():
            try:
                self.agent.store.count(name, n)
            except sqlite3.Error as e:
                log.warning("page: %d %s not counted: %s", n, name, e)

    async def _log(self, t_ns, node, act, value, client, outcome):
        log.info("page action %s%s on node %s from %s: %s", act, f" {value}" if value else "", node, client, outcome)
        await self.loop.run_in_executor(None, self.agent.store.log_action, t_ns, node, act, value, client, outcome)

    # --- access ---
    async def _read_allowed(self, request):
        """True, False (no password or a wrong one), or None (too many password checks at once)."""
        if self.cfg.page_open_read or not self.cfg.page_password_hash:
            return True
        header = request.headers.get("Authorization", "")
        key = hashlib.sha256(header.encode("utf-8", "surrogateescape")).hexdigest()
        now = time.monotonic()
        if self._read_ok.get(key, 0) > now:
            return True
        password = basic_password(header)
        if password is None:
            return False  # not sent yet: the browser asks for it, no check is made
        ok = await self.checks.check(password, self.cfg.page_password_hash)
        if ok:
            self._read_ok = {k: t for k, t in self._read_ok.items() if t > now}
            if len(self._read_ok) < READ_OK_KEPT:
                self._read_ok[key] = now + READ_OK_S
        elif ok is False:
            await asyncio.sleep(WRONG_PASSWORD_DELAY_S)
            self._count("page_password_refused")
        return ok

    def _busy(self):
        self._count("page_password_busy")
        return Refusal(429, "Too many password checks at once on this pole: try again in a few seconds.",
                       {"Retry-After": "1"})

    @web.middleware
    async def _guard(self, request, handler):
        try:
            allowed = await self._read_allowed(request)  # every method and path: HEAD and OPTIONS too
            if allowed is None:
                raise self._busy()
            if not allowed:
                raise Refusal(401, "This pole's page needs its password (any user name).",
                              {"WWW-Authenticate": 'Basic realm="openpole pole page"'})
            if request.query_string:
                raise Refusal(400, f"This page takes no query string ({request.query_string[:40]!r}): open "
                                   f"{request.path[:80]} without one.")
            return await handler(request)
        except Refusal as e:
            return self._error(request, e.status, e.text, e.headers)
        except web.HTTPException as e:  # aiohttp's own: no such page, method or size
            if e.status < 400:
                raise
            return self._error(request, e.status, self._framework_text(request, e),
                               {k: v for k, v in e.headers.items() if k in ("Allow", "Retry-After")})
        except Exception:  # never a traceback in the page: one line here, the trace in the agent's log
            log.exception("page %s failed", request.path[:200])
            return self._error(request, 500, "The page could not be made: the agent's log says why.")

    @staticmethod
    def _framework_text(request, e):
        if e.status == 404:
            return "No such page on this pole: the overview (/) lists its nodes."
        if e.status == 405:
            return (f"{request.method[:20]} is not answered here: the pages answer GET and HEAD, a node's actions "
                    f"POST.")
        if e.status == 413:
            return f"The request is larger than {FORM_MAX_BYTES // 1024} KB: send the form from the node's page."
        return f"{e.reason}: open the pole's overview (/) and go from there."

    # --- pages ---
    def _error(self, request, status, text, headers=None):
        headers = {**HEADERS, **(headers or {})}
        resource = request.match_info.route.resource  # None for no route: a 404 or 405
        if resource is not None and resource.canonical.endswith(".json"):
            return web.json_response({"error": text}, status=status, headers=headers)
        return self._html(error_page(f"{status} {HTTPStatus(status).phrase}", text), status, headers)

    def _html(self, body, status=200, headers=HEADERS):
        # A node's string may hold lone surrogates ("\ud800" is valid JSON): replaced, never a 500.
        return web.Response(body=body.encode("utf-8", "replace"), status=status, content_type="text/html",
                            charset="utf-8", headers=headers)

    async def overview(self, request):
        v = views.pole_view(self.agent)
        live = overview_live(v, self.cfg)
        if request.headers.get("X-Partial"):
            return self._html(live)
        return self._html(page(f"openpole pole {self.cfg.pole_id}", self.cfg.pole_id, live,
                               refresh_s=self.cfg.page_refresh_s))

    def _node_id(self, request):
        """The node the URL names: a 400 for an id no node can have, a 404 for one this pole has not heard."""
        node = request.match_info["node"]
        if not NODE_ID_RE.fullmatch(node):
            raise Refusal(400, f"Node id {node[:40]!r}: a node id is {NODE_ID_TEXT}; the overview (/) lists the nodes.")
        if node not in self.agent.nodes and node not in self.agent.node_info:
            raise Refusal(404, f"No node {node!r} on this pole: the overview lists the nodes.")
        return node

    async def node(self, request, flash=None, status=200):
        node = self._node_id(request)
        agent = self.agent
        live = node_live(views.node_view(agent, node, agent.clock()), views.latest_readings(agent, node),
                         views.charts(agent, node), views.counters(agent, node))
        if request.headers.get("X-Partial"):
            return self._html(live)
        rest = node_rest(node, views.diag(agent, node), views.reply(agent, node), views.actions(agent, node),
                         bool(self.cfg.page_password_hash))
        return self._html(page(f"Node {node}", self.cfg.pole_id, live, rest, self.cfg.page_refresh_s, flash), status)

    async def diag_json(self, request):
        node = self._node_id(request)
        report = self.agent.node_info.get(node, {}).get("diag") or {}
        text = views.as_json(report)
        if text is None:
            text = json.dumps({"node": node, "unreadable": "the report holds NaN or infinity, or nests too deeply: "
                                                           "JSON cannot carry it as it is"})
        return web.Response(text=text, content_type="application/json", headers=HEADERS)

    async def status_json(self, request):
        return web.json_response(observe.status(self.agent), headers=HEADERS)

    async def _form(self, request):
        """The action form's fields as text: a 400 for a body that is not a form of text fields."""
        try:
            form = await request.post()
        except web.HTTPException:
            raise
        except Exception:  # whatever the body held, it is the sender's to fix
            raise Refusal(400, "The form could not be read: send it from the node's page.") from None
        fields = {}
        for name in ("action", "value", "password"):
            v = form.get(name, "")
            if not isinstance(v, str):
                raise Refusal(400, f"Form field {name}: text expected, not a file; send the form from the node's page.")
            fields[name] = v
        return fields["action"], fields["value"].strip(), fields["password"]

    async def action(self, request):
        """Validate, check the password, send the command, wait a little for the answer; log it all."""
        node = self._node_id(request)
        client = request.remote or "?"
        act, value, password = await self._form(request)
        if act not in ACTIONS:
            return await self.node(request, (False, "Choose an action: diag, selftest or interval."), 400)
        cmd = {"cmd": act}
        if act == "interval":
            lo, hi = INTERVAL_S
            seconds = float(value) if DECIMAL.fullmatch(value) else None
            if seconds is None or not lo <= seconds <= hi:
                return await self.node(request, (False, f"Interval {value[:20]!r}: give a number of seconds from {lo} "
                                                        f"to {hi}."), 400)
            cmd["value"] = int(seconds) if seconds == int(seconds) else seconds
        else:
            value = ""
        stored = self.cfg.page_password_hash
        if not stored:
            return await self.node(request, (False, "Actions are off: this pole has no page password (openpole pole "
                                                    "init makes one)."), 403)
        ok = await self.checks.check(password, stored)
        if ok is None:
            raise self._busy()
        now = self.agent.clock()
        if not ok:
            await asyncio.sleep(WRONG_PASSWORD_DELAY_S)
            self._count("page_password_refused")
            await self._log(now, node, act, value, client, "refused: wrong password")
            return await self.node(request, (False, "Wrong password: nothing was sent. The action was logged."), 403)
        before = self.agent.node_info.get(node, {}).get("reply_ns")
        sent = self.agent.ingest.command(node, json.dumps(cmd).encode())
        if not sent:
            await self._log(now, node, act, value, client, "not sent: the agent is not connected to the broker")
            return await self.node(request, (False, "Not sent: the agent is not connected to the pole's broker."), 503)
        deadline = time.monotonic() + ACTION_WAIT_S
        reply = None
        while time.monotonic() < deadline:
            info = self.agent.node_info.get(node, {})
            if info.get("reply_ns") != before and (info.get("reply") or {}).get("cmd") == act:
                reply = info["reply"]
                break
            await asyncio.sleep(0.1)
        answered_ok, outcome = views.outcome(reply, ACTION_WAIT_S)
        await self._log(now, node, act, value, client, outcome)
        return await self.node(request, (answered_ok, f"{act} → {node}: {outcome}"))


    # --- over-the-air updates (edge_agent/ota.py) ---
    async def updates(self, request, flash=None, status=200):
        if self.agent.ota is None:
            raise Refusal(404, "Updates are not available on this agent.")
        summary = await self.loop.run_in_executor(None, observe.ota_status, self.agent)
        live = updates_live(summary)
        if request is not None and request.headers.get("X-Partial"):
            return self._html(live)
        return self._html(page("Updates", self.cfg.pole_id, live, updates_rest(bool(self.cfg.page_password_hash)),
                               self.cfg.page_refresh_s, flash), status)

    async def _update_allowed(self, password, what, client):
        """None when the password is right; else the page that says why nothing was done."""
        if not self.cfg.page_password_hash:
            return await self.updates(None, (False, "Updates are off here: this pole has no page password (openpole "
                                                    "pole init makes one)."), 403)
        ok = await self.checks.check(password, self.cfg.page_password_hash)
        if ok is None:
            raise self._busy()
        if not ok:
            await asyncio.sleep(WRONG_PASSWORD_DELAY_S)
            self._count("page_password_refused")
            await self._log(self.agent.clock(), "*", what, "", client, "refused: wrong password")
            return await self.updates(None, (False, "Wrong password: nothing was done. It was logged."), 403)
        return None

    async def updates_push(self, request):
        """A multipart form: bundle (the file), nodes (patterns), canary, max_parallel, password. Read
        as a stream with a cap: the page's other forms stay limited to FORM_MAX_BYTES."""
        from openpole.errors import UserError
        from openpole.ota import bundle as bundle_mod

        from .ota import OtaError

        if self.agent.ota is None:
            raise Refusal(404, "Updates are not available on this agent.")
        fields, data = {}, None
        try:
            reader = await request.multipart()
            while (part := await reader.next()) is not None:
                cap = bundle_mod.BUNDLE_MAX if part.name == "bundle" else 1024
                body = bytearray()
                while chunk := await part.read_chunk(65536):
                    body += chunk
                    if len(body) > cap:
                        raise Refusal(413, f"Form field {part.name[:20]!r} is too large: a bundle is at most "
                                           f"{bundle_mod.BUNDLE_MAX // 2**20} MB.")
                if part.name == "bundle":
                    data = bytes(body)
                elif part.name in ("nodes", "canary", "max_parallel", "password"):
                    fields[part.name] = body.decode("utf-8", "replace")
        except Refusal:
            raise
        except Exception:  # not multipart, truncated: the sender's to fix
            raise Refusal(400, "The upload could not be read: send it from the updates page.") from None
        client = request.remote or "?"
        refused = await self._update_allowed(fields.get("password", ""), "ota push", client)
        if refused is not None:
            return refused
        patterns = fields.get("nodes", "").split()
        try:
            canary = int(fields.get("canary") or 1)
            max_parallel = int(fields["max_parallel"]) if fields.get("max_parallel") else None
        except ValueError:
            return await self.updates(None, (False, "Canary and max parallel are whole numbers."), 400)
        if not data or not patterns:
            return await self.updates(None, (False, "Choose a bundle file and the nodes (e.g. pole17-*)."), 400)
        ota = self.agent.ota

        def push():
            b = bundle_mod.read(data, self.cfg.ota_release_keys, self.cfg.ota_require_signed)
            return b, ota.push(b, ota.match(patterns), canary, max_parallel)

        try:
            b, out = await self.loop.run_in_executor(None, push)
        except (UserError, OtaError) as e:
            await self._log(self.agent.clock(), "*", "ota push", " ".join(patterns)[:200], client, f"refused: {e}")
            return await self.updates(None, (False, f"Nothing pushed: {e}"), 400)
        m = b.manifest
        text = (f"rollout {out['rollout']}: {m['kind']} {m['version']} to {len(out['jobs'])} nodes"
                + (f"; skipped {', '.join(sorted(out['skipped']))}" if out["skipped"] else ""))
        await self._log(self.agent.clock(), "*", "ota push", " ".join(patterns)[:200], client, text)
        return await self.updates(None, (True, text))

    async def updates_cancel(self, request):
        from .ota import OtaError

        if self.agent.ota is None:
            raise Refusal(404, "Updates are not available on this agent.")
        try:
            form = await request.post()
            rollout, password = form.get("rollout", ""), form.get("password", "")
            if not isinstance(rollout, str) or not isinstance(password, str):
                raise ValueError
        except web.HTTPException:
            raise
        except Exception:
            raise Refusal(400, "The form could not be read: send it from the updates page.") from None
        client = request.remote or "?"
        refused = await self._update_allowed(password, "ota cancel", client)
        if refused is not None:
            return refused
        if not rollout.isdigit():
            return await self.updates(None, (False, f"Rollout {rollout[:20]!r}: give its number."), 400)
        try:
            out = await self.loop.run_in_executor(None, self.agent.ota.cancel, None, int(rollout))
        except OtaError as e:
            return await self.updates(None, (False, str(e)), 400)
        text = f"rollout {rollout}: " + (", ".join(f"job {j} {w}" for j, w in sorted(out.items())) or "no such rollout")
        await self._log(self.agent.clock(), "*", "ota cancel", rollout, client, text)
        return await self.updates(None, (bool(out), text))


def serve(agent, listen):
    """Start the page on listen ("HOST:PORT"); returns the Page (its .url)."""
    from openpole.common import parse_hostport

    host, port = parse_hostport(listen, 8080, flag="page.listen")
    p = Page(agent, host, port)
    p.start()
    return p
