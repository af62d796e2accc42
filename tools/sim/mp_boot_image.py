# Runs under the MicroPython Unix port: boot a node's filesystem image as an ESP32 would.
# argv: IMAGE_FILE [FIRMWARE_LIB_DIR]. The image is mounted with VfsLfs2 on a block device whose writes
# stay in RAM (the file is never changed), at /flash; the node runs from there with sys.path as
# on a board ('', then FIRMWARE_LIB_DIR for the modules frozen into a firmware, then /lib).
import os
import sys
import vfs

BLOCK = 4096


class RAMOverlay:
    """A block device over an image file: reads from the file, writes kept in RAM."""

    def __init__(self, path):
        self.f = open(path, "rb")
        self.f.seek(0, 2)
        self.count = self.f.tell() // BLOCK
        self.written = {}

    def _block(self, n):
        b = self.written.get(n)
        if b is None:
            self.f.seek(n * BLOCK)
            b = self.written[n] = bytearray(self.f.read(BLOCK))
        return b

    def readblocks(self, n, buf, off=0):
        b = self.written.get(n)
        if b is None:
            self.f.seek(n * BLOCK + off)
            self.f.readinto(buf)
        else:
            buf[:] = memoryview(b)[off: off + len(buf)]

    def writeblocks(self, n, buf, off=None):
        off = off or 0
        self._block(n)[off: off + len(buf)] = buf

    def ioctl(self, op, arg):
        if op == 4:  # block count
            return self.count
        if op == 5:  # block size
            return BLOCK
        if op == 6:  # erase
            self.written[arg] = bytearray(b"\xff" * BLOCK)
            return 0
        return 0


vfs.mount(vfs.VfsLfs2(RAMOverlay(sys.argv[1])), "/flash")
os.chdir("/flash")
sys.path[:] = ["", ".frozen"] + sys.argv[2:3] + ["/flash/lib"]  # as an ESP32's ['', '.frozen', '/lib']
import main  # noqa: E402,F401  (MicroPython boots main.py)
