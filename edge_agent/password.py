"""The pole page's password, stored only as a hash: scrypt (RFC 7914) from the standard library.

    scrypt$16384$8$1$<salt hex>$<hash hex>
"""

import hashlib
import hmac
import os

N, R, P = 16384, 8, 1  # about 50 ms on a Raspberry Pi 4: slow for a guesser, fine for a technician


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
