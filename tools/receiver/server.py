"""The reference city receiver: POST /v1/batches (upstream batch v1, CBOR), GET /v1/latest, GET /v1/stats.

It verifies each batch's structure, de-duplicates and stores it, then answers 200; a malformed
batch gets 400 with the reason and is counted, so the pole quarantines it instead of retrying; a
fault of the receiver's own (its database locked or full) gets 500, counted, and the pole retries.
"""

import json
import logging
import re
import threading
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from openpole.wire import batch, sign

from .store import ReceiverStore

MAX_BODY = 8 * 1024 * 1024
TAKING_AT_ONCE = 8  # batches read and decoded at once (each up to MAX_BODY, and its decoded form)
_DIGITS = re.compile(r"[0-9]{1,10}")
log = logging.getLogger("openpole.receiver")


class _Handler(BaseHTTPRequestHandler):
    server_version = "openpole-receiver/1"
    timeout = 30  # seconds a client may take per read or write: a slow or stalled one lets its thread go

    def log_message(self, fmt, *args):
        log.debug("%s %s", self.address_string(), fmt % args)

    def _reply(self, code, obj, headers=None):
        body = json.dumps(obj).encode()
        try:
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            # The pole went away before our answer (a power cut): it re-sends the same batch id.
            log.info("client %s left before the reply", self.address_string())

    def do_POST(self):
        if self.path.rstrip("/") != "/v1/batches":
            return self._reply(404, {"error": "POST batches to /v1/batches"})
        lengths = self.headers.get_all("Content-Length") or []
        if len(lengths) != 1 or not _DIGITS.fullmatch(lengths[0].strip()):
            self.close_connection = True  # the body's end is not known: the connection cannot be reused
            return self._reply(411 if not lengths else 400, {"error": "one Content-Length of decimal digits required"})
        length = int(lengths[0])
        if length > MAX_BODY:
            self.close_connection = True
            return self._reply(413, {"error": f"batch must be 1..{MAX_BODY} bytes"})
        # A bounded number of batches are read and decoded at once: each may take MAX_BODY of memory.
        if not self.server.taking.acquire(blocking=False):
            self.close_connection = True
            return self._reply(503, {"error": "the receiver is busy with other batches; send this one again shortly"},
                               {"Retry-After": "1"})
        try:
            self._take(length)
        finally:
            self.server.taking.release()

    def _take(self, length):
        try:
            body = self.rfile.read(length)
        except OSError:  # the client stalled past `timeout` or went away: its pole sends again
            self.close_connection = True
            return
        store = self.server.store
        try:
            if not body:
                raise ValueError("an empty body: POST one upstream batch (CBOR)")
            if self.headers.get("Content-Encoding", "").lower() == "gzip":
                body = _gunzip(body)
            # What is kept is the batch itself, unwrapped from its signature once verified: what
            # export, stats and latest read back.
            body, (batch_id, pole, messages, minutes) = batch.open_signed(body, self.server.keys)
        except TooLarge as e:
            return self._reply(413, {"error": str(e)})
        except (sign.Unauthorized, ValueError) as e:
            unauthorized = isinstance(e, sign.Unauthorized)
            try:
                store.count("batches_unauthorized" if unauthorized else "batches_rejected")
            except Exception as fault:  # not counted: the pole is told to send it again
                return self._failed(fault)
            # A matter of keys (403) keeps the batch at the pole until the city puts them right;
            # a malformed batch (400) is quarantined there.
            return self._reply(403 if unauthorized else 400, {"error": str(e)[:300]})
        except Exception as e:  # a fault of the receiver's, not of the batch
            return self._failed(e)
        try:
            new, dup = store.add_batch(batch_id, pole, body, messages, minutes)
        except Exception as e:
            return self._failed(e)
        self._reply(200, {"batch": batch_id.hex(), "stored": new, "duplicates": dup})

    def _failed(self, e):
        """500 with the reason: the pole sends the batch again. Counted in memory (the database may
        be what fails) and logged in one line the first time each kind of fault is met, not at every
        retry (the traceback at debug level)."""
        kind = f"{type(e).__name__}: {e}"[:300]
        srv = self.server
        with srv.faults_lock:
            srv.batches_failed += 1
            first = kind not in srv.faults and len(srv.faults) < 100
            if first:
                srv.faults.add(kind)
        if first:
            log.error("could not take a batch (%s); answering 500, the pole will send it again", kind)
            log.debug("where the receiver failed", exc_info=e)
        return self._reply(500, {"error": f"the receiver could not store the batch ({kind}); send it again later"})

    def do_GET(self):
        store = self.server.store
        if self.path == "/v1/latest":
            return self._reply(200, store.latest())
        if self.path == "/v1/stats":
            return self._reply(200, {**store.stats(), "batches_failed": self.server.batches_failed})
        if self.path == "/healthz":
            return self._reply(200, {"ok": True})
        return self._reply(404, {"error": "GET /v1/latest, /v1/stats or /healthz"})


class TooLarge(ValueError):
    """A body that inflates past MAX_BODY: 413, so the pole sends smaller batches."""


def _gunzip(data, limit=MAX_BODY):
    """Inflate with a ceiling, the same as a plain body's: a small body must not become gigabytes
    (zip bomb), and what inflates past MAX_BODY could not be taken anyway."""
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = d.decompress(data, limit)
    except zlib.error as e:
        raise ValueError(f"bad gzip body: {e}") from None
    if d.unconsumed_tail:
        raise TooLarge(f"batch inflates past {limit} bytes: send smaller batches")
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
        self.httpd.faults = set()  # the kinds of fault already logged
        self.httpd.faults_lock = threading.Lock()
        self.httpd.batches_failed = 0  # answered 500
        self.httpd.taking = threading.BoundedSemaphore(TAKING_AT_ONCE)
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
