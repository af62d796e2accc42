"""systemd's notify protocol (sd_notify(3)): READY=1 once the agent runs, then WATCHDOG=1 while its
writer and sender are alive. A datagram to $NOTIFY_SOCKET; nothing at all outside systemd."""

import os
import socket


def notify(message, env=os.environ):
    """Send one notification ("READY=1", "WATCHDOG=1", "STATUS=..."); False when not under systemd."""
    path = env.get("NOTIFY_SOCKET")
    if not path:
        return False
    if path.startswith("@"):
        path = "\0" + path[1:]  # an abstract socket
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        try:
            s.connect(path)
            s.sendall(message.encode())
        except OSError:
            return False
    return True


def watchdog_interval_s(env=os.environ):
    """Half of WatchdogSec= (from $WATCHDOG_USEC), or None when systemd does not watch us."""
    usec = env.get("WATCHDOG_USEC")
    try:
        return int(usec) / 2e6 if usec else None
    except ValueError:
        return None
