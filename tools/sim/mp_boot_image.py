# Runs under the MicroPython Unix port: boot a node's filesystem image as an ESP32 would.
# argv: IMAGE_FILE [FIRMWARE_LIB_DIR]. The image is mounted with VfsLfs2 on a block device whose writes
# stay in RAM (the file is never changed), at /flash; the node runs from there with sys.path as
# on a board ('', then FIRMWARE_LIB_DIR for the modules frozen into a firmware, then /lib).
# A virtual board (`openpole sim board`) sets OPENPOLE_FS=OFFSET:SIZE: the filesystem is that
# partition of its flash file, and writes go to the file, as they go to a board's flash. A partition
# with no filesystem is formatted, as MicroPython's first boot does, and the board stays at the REPL.
# OPENPOLE_FS_CUT=N cuts the power before the N-th flash operation (tests of power cuts).
import os
import sys
import vfs

BLOCK = 4096
ERASED = b"\xff" * BLOCK  # made once: a board's flash erase takes none of the node's heap


class RAMOverlay:
    """A block device over an image file: reads from the file, writes kept in RAM."""

    def __init__(self, path, offset=0, size=None, through=False):
        self.f = open(path, "r+b" if through else "rb")
        self.f.seek(0, 2)
        self.base = offset
        self.count = (size or self.f.tell() - offset) // BLOCK
        self.written = {}
        self.through = through
        # OPENPOLE_FS_CUT=N: the power goes before the N-th flash operation (a program or an erase)
        self.cut = int(os.getenv("OPENPOLE_FS_CUT") or 0)
        self.ops = 0

    def _op(self):
        self.ops += 1
        if self.ops == self.cut:
            os.system("kill -9 $PPID")  # the VM, at once: nothing after this reaches the flash

    def _block(self, n):
        b = self.written.get(n)
        if b is None:
            self.f.seek(self.base + n * BLOCK)
            b = self.written[n] = bytearray(self.f.read(BLOCK))
        return b

    def readblocks(self, n, buf, off=0):
        b = self.written.get(n)
        if b is None:
            self.f.seek(self.base + n * BLOCK + off)
            self.f.readinto(buf)
        else:
            buf[:] = memoryview(b)[off: off + len(buf)]

    def writeblocks(self, n, buf, off=None):
        off = off or 0
        self._op()
        if self.through:
            self.f.seek(self.base + n * BLOCK + off)
            self.f.write(buf)
            self.f.flush()
            return
        self._block(n)[off: off + len(buf)] = buf

    def ioctl(self, op, arg):
        if op == 4:  # block count
            return self.count
        if op == 5:  # block size
            return BLOCK
        if op == 6:  # erase
            self._op()
            if self.through:
                self.writeblocks(arg, ERASED)
            else:
                self.written[arg] = bytearray(ERASED)
            return 0
        return 0


part = os.getenv("OPENPOLE_FS")
if part:
    offset, size = (int(x) for x in part.split(":"))
    dev = RAMOverlay(sys.argv[1], offset, size, through=True)
else:
    dev = RAMOverlay(sys.argv[1])
try:
    vfs.mount(vfs.VfsLfs2(dev), "/flash")
except OSError:
    if not part:
        raise
    print("Performing initial setup")  # what MicroPython prints as it formats a blank partition
    vfs.VfsLfs2.mkfs(dev)
    vfs.mount(vfs.VfsLfs2(dev), "/flash")
os.chdir("/flash")
sys.path[:] = ["", ".frozen"] + sys.argv[2:3] + ["/flash/lib"]  # as an ESP32's ['', '.frozen', '/lib']
if "main.py" in os.listdir():
    import main  # noqa: F401  (MicroPython boots main.py)
