"""The pole page's password, stored only as a hash: scrypt (RFC 7914) from the standard library.

    scrypt$16384$8$1$<salt hex>$<hash hex>

Each check costs 16 MiB (128 * r * N bytes) and about 50 ms on a Raspberry Pi 4, so Checks runs at
most a few at once, on threads of its own: parallel guessers must not push the agent past the
unit's MemoryMax=256M, nor keep the page's event loop from answering.
"""

import asyncio
import hashlib
import hmac
import os
from concurrent.futures import ThreadPoolExecutor

N, R, P = 16384, 8, 1  # about 50 ms on a Raspberry Pi 4: slow for a guesser, fine for a technician
AT_ONCE = 2  # password checks running at once: 32 MiB at most


def hash_password(password, salt=None):
    salt = salt or os.urandom(16)
    dk = hashlib.scrypt(password.encode(), salt=salt, n=N, r=R, p=P, dklen=32)
    return f"scrypt${N}${R}${P}${salt.hex()}${dk.hex()}"


def check_password(password, stored):
    """True when password matches the stored hash; False for anything else, a malformed hash too."""
    try:
        kind, n, r, p, salt, want = stored.split("$")
        if kind != "scrypt":
            return False
        dk = hashlib.scrypt(password.encode(), salt=bytes.fromhex(salt), n=int(n), r=int(r), p=int(p),
                            dklen=len(want) // 2, maxmem=64 * 1024 * 1024)
        return hmac.compare_digest(dk.hex(), want)
    except (AttributeError, ValueError, TypeError):
        return False


class Checks:
    """Password checks for one event loop, at most at_once of them running: past that, check()
    answers None at once (the caller says 429, try again) instead of queueing more scrypt."""

    def __init__(self, at_once=AT_ONCE):
        self.at_once = at_once
        self.running = 0
        self.peak = 0  # the most that ever ran at once: what the page's tests hold to at_once
        self._pool = ThreadPoolExecutor(max_workers=at_once, thread_name_prefix="openpole-password")

    async def check(self, password, stored):
        """True or False, or None when at_once checks are running already."""
        if self.running >= self.at_once:
            return None
        self.running += 1  # only the event loop's thread counts: no lock needed
        self.peak = max(self.peak, self.running)
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, check_password, password, stored)
        finally:
            self.running -= 1

    def close(self):
        self._pool.shutdown(wait=False)
