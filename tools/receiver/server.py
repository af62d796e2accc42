"""The reference city receiver: POST /v1/batches (upstream batch v1, CBOR), GET /v1/latest, GET /v1/stats.

It verifies each batch's structure, de-duplicates and stores it, then answers 200; a malformed
batch gets 400 with the reason and is counted, so the pole quarantines it instead of retrying.
"""

import json
import logging
import threading
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from openpole.wire import batch

from .store import ReceiverStore

MAX_BODY = 8 * 1024 * 1024
log = logging.getLogger("openpole.receiver")


class _Handler(BaseHTTPRequestHandler):
    server_version = "openpole-receiver/1"
    timeout = 30  # seconds a client may take per read or write: a slow or stalled one lets its thread go

    def log_message(self, fmt, *args):
        log.debug("%s %s", self.address_string(), fmt % args)

    def _reply(self, code, obj):
        body = json.dumps(obj).encode()
        try:
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            # The pole went away before our answer (a power cut): it re-sends the same batch id.
            log.info("client %s left before the reply", self.address_string())

    def do_POST(self):
        if self.path.rstrip("/") != "/v1/batches":
            return self._reply(404, {"error": "POST batches to /v1/batches"})
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            return self._reply(411, {"error": "Content-Length required"})
        if not 0 < length <= MAX_BODY:
            return self._reply(413, {"error": f"batch must be 1..{MAX_BODY} bytes"})
        try:
            body = self.rfile.read(length)
        except OSError:  # the client stalled past `timeout` or went away: its pole sends again
            self.close_connection = True
            return
        store = self.server.store
        try:
            if self.headers.get("Content-Encoding", "").lower() == "gzip":
                body = _gunzip(body)
            batch_id, pole, messages, minutes = batch.decode_signed(body, self.server.keys)
        except ValueError as e:
            store.count("batches_rejected")
            return self._reply(400, {"error": str(e)})
        new, dup = store.add_batch(batch_id, pole, body, messages, minutes)
        self._reply(200, {"batch": batch_id.hex(), "stored": new, "duplicates": dup})

    def do_GET(self):
        store = self.server.store
        if self.path == "/v1/latest":
            return self._reply(200, store.latest())
        if self.path == "/v1/stats":
            return self._reply(200, store.stats())
        if self.path == "/healthz":
            return self._reply(200, {"ok": True})
        return self._reply(404, {"error": "GET /v1/latest, /v1/stats or /healthz"})


def _gunzip(data, limit=8 * MAX_BODY):
    """Inflate with a ceiling: a small body must not become gigabytes (zip bomb)."""
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = d.decompress(data, limit)
    except zlib.error as e:
        raise ValueError(f"bad gzip body: {e}") from None
    if d.unconsumed_tail:
        raise ValueError(f"batch inflates past {limit} bytes")
    if not d.eof:
        raise ValueError("gzip body cut short (no end of stream)")
    if d.unused_data:
        raise ValueError(f"{len(d.unused_data)} bytes after the gzip stream")
    return out


class Receiver:
    def __init__(self, host, port, data_dir, keys=None):
        self.store = ReceiverStore(data_dir)
        self.httpd = ThreadingHTTPServer((host, port), _Handler)
        self.httpd.daemon_threads = True
        self.httpd.store = self.store
        self.httpd.keys = keys or {}  # pole id -> key: when set, only signed batches are taken
        self._thread = None

    @property
    def url(self):
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self):
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="openpole-receiver", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self):
        self.httpd.serve_forever()

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.store.close()
