# The serial console's resident part: gathers what is typed on stdin, a byte at a time, never
# blocking the loop. A complete line is run by the shell (lib/shell.py), or for status, sensors and
# diag by diag.py, loaded for that line and dropped after it, so the heap holds the console's
# commands only while one runs.
import select
import sys

from app import lazy
from micropython import const

CRASH_FILE = "crash.txt"
PROMPT = "openpole> "
DIAG_WORDS = ("status", "sensors", "diag")  # answered by diag.py alone: the heap holds one module for them
_CONSOLE = const(1024)  # commands.KINDS: "console"


class LazyConsole:
    def __init__(self, node):
        self.node = node
        self.poller = select.poll()
        self.poller.register(sys.stdin, select.POLLIN)
        self.line = bytearray(160)
        self.n = 0
        self.ch = bytearray(1)
        self.stdin = getattr(sys.stdin, "buffer", sys.stdin)

    def poll(self):
        """Take whatever was typed; run complete lines (True when one ran). Never blocks."""
        ran = False
        for _ in self.poller.ipoll(0):
            if not self.stdin.readinto(self.ch):
                return ran  # end of input (a closed pipe): nothing more will come
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
                    ran = True
                sys.stdout.write(PROMPT)
            elif c in (8, 127):
                self.n = max(0, self.n - 1)
            elif self.n < len(self.line):
                self.line[self.n] = c
                self.n += 1
        return ran

    def run(self, text):
        """Run a typed line. A failing command, one that finds too little heap included, prints one
        error line; the node goes on."""
        words = text.split() or [""]
        name = words[0][:20]  # made now: the heap may have no room left for it below
        try:
            if len(words) == 1 and name in DIAG_WORDS:
                m = lazy("diag")
                self.node.pace(_CONSOLE)  # loading it was this tick's work
                m.console(self.node, name)
            else:
                m = lazy("shell")
                self.node.pace(_CONSOLE)
                m.run(self.node, text)
        except MemoryError:
            self.node.short_of_heap += 1
            print("error: ", name, ": not enough heap free now; try again in a moment", sep="")  # allocates nothing
        except Exception as e:
            print("error: %s failed: %s" % (name, e))
