# The serial diagnostics console: lines typed on the USB serial port while the node keeps sampling.
# help, status, diag (one JSON line), sensors, config get/set, log, selftest, monitor, reboot.
# Unknown input gets one error line; Ctrl-C still interrupts to the REPL (nothing catches it).
# console.LazyConsole gathers a line and loads this module to run it, then drops it; status,
# sensors and diag go straight to diag.py, so the heap never holds both modules for them.
import json

from app import lazy as _lazy
from console import CRASH_FILE


def run(node, text):
    """Run one console line; a failing command prints one error line, the node goes on."""
    words = text.split()
    if not words:
        return
    for name, fn, _ in COMMANDS:
        if name == words[0]:
            break
    else:
        print("error: unknown command %r: type help for the list" % words[0][:20])
        return
    try:
        if fn is None:  # answered by diag.py (the console sends these there itself)
            _lazy("diag").console(node, name)
        else:
            fn(node, words[1:])
    except Exception as e:  # a console command must never stop the node
        print("error: %s failed: %s" % (words[0], e))


def help(node, args):
    for name, _, text in COMMANDS:
        print("  %-9s %s" % (name, text))


def config(node, args):
    if len(args) == 2 and args[0] == "get":
        print(json.dumps(_lazy("config").get(node.cfg, args[1])))
    elif len(args) >= 3 and args[0] == "set":
        node.cfg = _lazy("config").set(node.cfg, args[1], " ".join(args[2:]))
        print("ok: %s saved; it takes effect at the next reboot" % args[1])
    else:
        print("error: usage: config get KEY | config set KEY VALUE")


def log(node, args):
    for line in node.lines:
        print(line)
    try:
        with open(CRASH_FILE) as f:
            print("last crash:")
            print(f.read().rstrip())
    except OSError:
        print("no crash recorded")


def selftest(node, args):
    result = _lazy("commands").selftest(node)
    for name, verdict in result.items():
        print("%s: %s" % (name, verdict))
    print("selftest: %s" % ("PASS" if all(v == "ok" for v in result.values()) else "FAIL"))


def monitor(node, args):
    print("monitor: a line per reading (reading SENSOR {values}); press Enter to stop")
    node.watch = True


def reboot(node, args):
    print("rebooting")
    _lazy("commands").reset(node)


COMMANDS = (
    ("help", help, "this list"),
    ("status", None, "a short human summary"),
    ("diag", None, "everything, as one JSON line (secrets redacted)"),
    ("sensors", None, "each sensor's state, errors and last values"),
    ("config", config, "config get KEY | config set KEY VALUE"),
    ("log", log, "recent log lines and the last crash"),
    ("selftest", selftest, "check each sensor is present and plausible"),
    ("monitor", monitor, "a line per reading until Enter is pressed"),
    ("reboot", reboot, "restart the node"),
)
