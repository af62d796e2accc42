"""Is the pole's clock synchronised? Asked of systemd-timesyncd or chrony, cached for a minute.
True or False when one of them can tell; None when neither is there (then nothing is flagged)."""

import subprocess
import time

_cache = {"at": -1e9, "value": None}


def _ask():
    for cmd, parse in (
        (["timedatectl", "show", "-p", "NTPSynchronized", "--value"], lambda out: out.strip() == "yes"),
        (["chronyc", "-n", "tracking"], lambda out: "Leap status     : Normal" in out),
    ):
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=2)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if r.returncode == 0 and r.stdout.strip():
            return parse(r.stdout)
    return None


def clock_synced(now=time.monotonic):
    if now() - _cache["at"] > 60:
        _cache["value"], _cache["at"] = _ask(), now()
    return _cache["value"]
