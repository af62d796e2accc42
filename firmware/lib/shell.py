# The serial diagnostics console: lines typed on the USB serial port while the node keeps sampling.
# help, status, diag (one JSON line), sensors, config get/set, log, selftest, monitor, reboot.
# Unknown input gets one error line; Ctrl-C still interrupts to the REPL (nothing catches it).
# Loaded by console.LazyConsole at the first byte typed.
import json
import sys

from console import CRASH_FILE, PROMPT
from app import lazy as _lazy
from sensors import STATE_NAMES


class Console:
    def __init__(self, node, poller):
        self.node = node
        self.poller = poller
        self.line = bytearray(160)
        self.n = 0
        self.ch = bytearray(1)
        self.stdin = getattr(sys.stdin, "buffer", sys.stdin)
        self.commands = {
            "help": (self.help, "this list"),
            "status": (self.status, "a short human summary"),
            "diag": (self.diag, "everything, as one JSON line (secrets redacted)"),
            "sensors": (self.sensors, "each sensor's state, errors and last values"),
            "config": (self.config, "config get KEY | config set KEY VALUE"),
            "log": (self.log, "recent log lines and the last crash"),
            "selftest": (self.selftest, "check each sensor is present and plausible"),
            "monitor": (self.monitor, "a line per reading until Enter is pressed"),
            "reboot": (self.reboot, "restart the node"),
        }

    def prompt(self):
        sys.stdout.write(PROMPT)

    def poll(self):
        """Take whatever was typed; run complete lines. Never blocks."""
        for _ in self.poller.ipoll(0):
            if not self.stdin.readinto(self.ch):
                return
            c = self.ch[0]
            if c == 3:  # Ctrl-C: on an ESP32 the UART driver raises this; on a pty the byte comes here
                raise KeyboardInterrupt
            if c in (10, 13):
                if self.node.watch:
                    self.node.watch = False
                    print("monitor: stopped")
                if self.n:
                    text = bytes(self.line[: self.n]).decode("utf-8", "replace")
                    self.n = 0
                    self.run(text)
                self.prompt()
            elif c in (8, 127):
                self.n = max(0, self.n - 1)
            elif self.n < len(self.line):
                self.line[self.n] = c
                self.n += 1

    def run(self, text):
        words = text.split()
        if not words:
            return
        entry = self.commands.get(words[0])
        if entry is None:
            print("error: unknown command %r: type help for the list" % words[0][:20])
            return
        try:
            entry[0](words[1:])
        except Exception as e:  # a console command must never stop the node
            print("error: %s failed: %s" % (words[0], e))

    def help(self, args):
        for name, (_, text) in self.commands.items():
            print("  %-9s %s" % (name, text))

    def status(self, args):
        n = self.node
        d = n.diag()
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

    def diag(self, args):
        print(json.dumps(self.node.diag()))

    def sensors(self, args):
        for s in self.node.sensors:
            print("%s: %s, %d errors, last %s" % (s.name, STATE_NAMES[s.state], s.errors, json.dumps(s.last)))

    def config(self, args):
        if len(args) == 2 and args[0] == "get":
            print(json.dumps(_lazy("config").get(self.node.cfg, args[1])))
        elif len(args) >= 3 and args[0] == "set":
            self.node.cfg = _lazy("config").set(self.node.cfg, args[1], " ".join(args[2:]))
            print("ok: %s saved; it takes effect at the next reboot" % args[1])
        else:
            print("error: usage: config get KEY | config set KEY VALUE")

    def log(self, args):
        for line in self.node.lines:
            print(line)
        try:
            with open(CRASH_FILE) as f:
                print("last crash:")
                print(f.read().rstrip())
        except OSError:
            print("no crash recorded")

    def selftest(self, args):
        result = self.node.selftest()
        for name, verdict in result.items():
            print("%s: %s" % (name, verdict))
        print("selftest: %s" % ("PASS" if all(v == "ok" for v in result.values()) else "FAIL"))

    def monitor(self, args):
        print("monitor: a line per reading (reading SENSOR {values}); press Enter to stop")
        self.node.watch = True

    def reboot(self, args):
        print("rebooting")
        self.node.reset()
