# The serial console's doorman: a poller on stdin. The console itself (lib/shell.py) is loaded at
# the first byte typed, so a node nobody talks to spends no heap on it.
import select
import sys

CRASH_FILE = "crash.txt"
PROMPT = "openpole> "


class LazyConsole:
    def __init__(self, node):
        self.node = node
        self.poller = select.poll()
        self.poller.register(sys.stdin, select.POLLIN)
        self.shell = None

    def prompt(self):
        sys.stdout.write(PROMPT)

    def poll(self):
        if self.shell is not None:
            return self.shell.poll()
        for _ in self.poller.ipoll(0):
            from shell import Console

            self.shell = Console(self.node, self.poller)
            return self.shell.poll()
