# The serial diagnostics console: lines typed on the USB serial port while the node keeps sampling.
# help, status, diag (one JSON line), sensors, config get/set, log, selftest, monitor, reboot.
# Unknown input gets one error line; Ctrl-C still interrupts to the REPL (nothing catches it).
# console.LazyConsole gathers a line and loads this module to run it, then drops it.
import json

from app import lazy as _lazy
from console import CRASH_FILE
from sensors import STATE_NAMES


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
        fn(node, words[1:])
    except Exception as e:  # a console command must never stop the node
        print("error: %s failed: %s" % (words[0], e))


def help(node, args):
    for name, _, text in COMMANDS:
        print("  %-9s %s" % (name, text))


def status(node, args):
    d = node.diag()
    print("node %s on %s, firmware %s, up %d s, boot %d (reset: %s)" % (
        d["node"], d["board"], d["fw"], d["uptime_s"], d["boot"], d["reset_cause"]))
    m = d["mqtt"]
    print("mqtt %s, %d published, last %s s ago, %d errors%s" % (
        "connected" if m["connected"] else "DOWN", m["published"], m["last_publish_age_s"], m["errors"],
        "" if not m["last_error"] else " (last: %s)" % m["last_error"]))
    q = d["queue"]
    print("queue %d (ram %d, flash %d), %d dropped; heap free %d (min %d)" % (
        q["depth"], q["ram"], q["flash"], q["dropped"], d["heap_free"], d["heap_min_free"]))
    for name, s in d["sensors"].items():
        print("sensor %-8s %s, %d errors%s" % (name, s["state"], s["errors"], "" if not s["last_error"] else ": " + s["last_error"]))


def diag(node, args):
    print(json.dumps(node.diag()))


def sensors(node, args):
    for s in node.sensors:
        print("%s: %s, %d errors, last %s" % (s.name, STATE_NAMES[s.state], s.errors, json.dumps(s.last)))


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
    result = node.selftest()
    for name, verdict in result.items():
        print("%s: %s" % (name, verdict))
    print("selftest: %s" % ("PASS" if all(v == "ok" for v in result.values()) else "FAIL"))


def monitor(node, args):
    print("monitor: a line per reading (reading SENSOR {values}); press Enter to stop")
    node.watch = True


def reboot(node, args):
    print("rebooting")
    node.reset()


COMMANDS = (
    ("help", help, "this list"),
    ("status", status, "a short human summary"),
    ("diag", diag, "everything, as one JSON line (secrets redacted)"),
    ("sensors", sensors, "each sensor's state, errors and last values"),
    ("config", config, "config get KEY | config set KEY VALUE"),
    ("log", log, "recent log lines and the last crash"),
    ("selftest", selftest, "check each sensor is present and plausible"),
    ("monitor", monitor, "a line per reading until Enter is pressed"),
    ("reboot", reboot, "restart the node"),
)
