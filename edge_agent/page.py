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

Reads touch only the reader connection of the queue's database and the agent's in-memory state:
nothing on the ingest path waits for the page.
"""

import asyncio
import base64
import hashlib
import json
import logging
import math
import threading
import time

from aiohttp import web

from openpole.wire.node_message import NODE_ID_RE

from . import observe, page_views as views
from .page_templates import node_live, node_rest, overview_live, page
from .password import check_password

log = logging.getLogger("openpole.edge.page")
ACTION_WAIT_S = 6.0  # how long an action waits for the node's answer before the page says "sent"


class Page:
    def __init__(self, agent, host, port):
        self.agent, self.host, self.port = agent, host, port
        self.cfg = agent.cfg
        self.loop = None
        self.runner = None
        self._read_ok = {}  # sha256 of an accepted Authorization header -> until (monotonic)
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
        app = web.Application(middlewares=[self._guard], client_max_size=16 * 1024)
        app.add_routes([web.get("/", self.overview), web.get("/node/{node}", self.node),
                        web.get("/node/{node}/diag.json", self.diag_json), web.get("/status.json", self.status_json),
                        web.post("/node/{node}/action", self.action)])
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
            asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
            self.loop.call_soon_threadsafe(self.loop.stop)

    # --- access ---
    def _read_allowed(self, request):
        if self.cfg.page_open_read or not self.cfg.page_password_hash:
            return True
        header = request.headers.get("Authorization", "")
        key = hashlib.sha256(header.encode()).hexdigest()
        if self._read_ok.get(key, 0) > time.monotonic():
            return True
        try:
            kind, _, token = header.partition(" ")
            password = base64.b64decode(token).decode().partition(":")[2] if kind.lower() == "basic" else None
        except (ValueError, UnicodeDecodeError):
            password = None
        if password is not None and check_password(password, self.cfg.page_password_hash):
            self._read_ok[key] = time.monotonic() + 600  # a page refreshing every few seconds: one scrypt in ten minutes
            return True
        return False

    @web.middleware
    async def _guard(self, request, handler):
        if request.method == "GET" and not self._read_allowed(request):
            return web.Response(status=401, text="This pole's page needs its password (any user name).",
                                headers={"WWW-Authenticate": 'Basic realm="openpole pole page"'})
        try:
            return await handler(request)
        except web.HTTPException:
            raise
        except Exception:  # never a traceback in the page: one line in the agent's log
            log.exception("page %s failed", request.path)
            return web.Response(status=500, text="The page could not be made: the agent's log says why.")

    # --- pages ---
    def _html(self, body, status=200):
        return web.Response(text=body, status=status, content_type="text/html",
                            headers={"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff",
                                     "Content-Security-Policy": "default-src 'self'; style-src 'unsafe-inline'; "
                                                                "script-src 'unsafe-inline'; img-src 'self' data:"})

    async def overview(self, request):
        v = views.pole_view(self.agent)
        live = overview_live(v, self.cfg)
        if request.headers.get("X-Partial"):
            return self._html(live)
        return self._html(page(f"openpole pole {self.cfg.pole_id}", self.cfg.pole_id, live,
                               refresh_s=self.cfg.page_refresh_s))

    def _known(self, node):
        return NODE_ID_RE.match(node or "") and (node in self.agent.nodes or node in self.agent.node_info)

    async def node(self, request, flash=None, status=200):
        node = request.match_info["node"]
        if not self._known(node):
            raise web.HTTPNotFound(text=f"No node {node[:64]!r} on this pole: the overview lists the nodes.")
        agent = self.agent
        live = node_live(views.node_view(agent, node, agent.clock()), views.latest_readings(agent, node),
                         views.charts(agent, node), views.counters(agent, node))
        if request.headers.get("X-Partial"):
            return self._html(live)
        rest = node_rest(node, views.diag(agent, node), views.reply(agent, node), views.actions(agent, node),
                         bool(self.cfg.page_password_hash))
        return self._html(page(f"Node {node}", self.cfg.pole_id, live, rest, self.cfg.page_refresh_s, flash), status)

    async def diag_json(self, request):
        node = request.match_info["node"]
        if not self._known(node):
            raise web.HTTPNotFound(text=f"No node {node[:64]!r} on this pole.")
        return web.json_response(self.agent.node_info.get(node, {}).get("diag") or {})

    async def status_json(self, request):
        return web.json_response(observe.status(self.agent))

    async def action(self, request):
        """Validate, check the password, send the command, wait a little for the answer; log it all."""
        node = request.match_info["node"]
        client = request.remote or "?"
        if not self._known(node):
            raise web.HTTPNotFound(text=f"No node {node[:64]!r} on this pole.")
        form = await request.post()
        act, value, password = form.get("action", ""), str(form.get("value", "")).strip(), str(form.get("password", ""))
        if act not in ("diag", "selftest", "interval"):
            return await self.node(request, (False, "Choose an action: diag, selftest or interval."), 400)
        cmd = {"cmd": act}
        if act == "interval":
            try:
                seconds = float(value)
                if not (math.isfinite(seconds) and 1 <= seconds <= 86400):
                    raise ValueError
            except ValueError:
                return await self.node(request, (False, f"Interval {value[:20]!r}: give a number of seconds from 1 to "
                                                        f"86400."), 400)
            cmd["value"] = int(seconds) if seconds == int(seconds) else seconds
        else:
            value = ""
        stored = self.cfg.page_password_hash
        if not stored:
            return await self.node(request, (False, "Actions are off: this pole has no page password (openpole pole "
                                                    "init makes one)."), 403)
        ok = await asyncio.get_running_loop().run_in_executor(None, check_password, password, stored)
        now = self.agent.clock()
        if not ok:
            await asyncio.sleep(1.0)  # a guesser gets one try a second per connection
            self.agent.store.count("page_password_refused")
            self._log(now, node, act, value, client, "refused: wrong password")
            return await self.node(request, (False, "Wrong password: nothing was sent. The action was logged."), 403)
        before = self.agent.node_info.get(node, {}).get("reply_ns")
        sent = self.agent.ingest.command(node, json.dumps(cmd).encode())
        if not sent:
            self._log(now, node, act, value, client, "not sent: the agent is not connected to the broker")
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
        self._log(now, node, act, value, client, outcome)
        return await self.node(request, (answered_ok, f"{act} → {node}: {outcome}"))

    def _log(self, t_ns, node, act, value, client, outcome):
        log.info("page action %s%s on node %s from %s: %s", act, f" {value}" if value else "", node, client, outcome)
        self.agent.store.log_action(t_ns, node, act, value, client, outcome)


def serve(agent, listen):
    """Start the page on listen ("HOST:PORT"); returns the Page (its .url)."""
    from openpole.common import parse_hostport

    host, port = parse_hostport(listen, 8080, flag="page.listen")
    p = Page(agent, host, port)
    p.start()
    return p
