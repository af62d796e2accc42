"""A filesystem that loses, at a power cut, every write not yet fsynced: the fault model of a pole
whose power goes. A FUSE layer over a backing directory: writes stay in this process's memory until
the file is fsynced (fsync, fdatasync), then go to the backing file and its fsync. A power cut
("cut" on its stdin, or PowerCutFS.cut() from a test) throws away what was not synced, as the page
cache of a pole that loses power does. Closing a file syncs nothing.

Namespace changes (create, rename, unlink, mkdir) reach the backing directory at once: what a
journalling filesystem gives after its next commit. The model is therefore kinder than a real cut
on those, and exactly as hard on file data, which is where SQLite's and Mosquitto's promises live.

    python tests/volatile_fs.py BACKING MOUNTPOINT    # "ready" once started; a line "cut" cuts

Needs /dev/fuse and libfuse3 (Debian: fuse3), and mfusepy.
"""

import errno
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

PAGE = 4096


class VolatileOps:
    """The FUSE operations (mfusepy.Operations' names): a passthrough with a write-back overlay.
    POSIX locks (SQLite's) are left to the kernel: no `lock` operation here."""

    use_ns = True  # times in nanoseconds

    def __init__(self, backing):
        self.root = str(backing)
        self.dirty = {}  # path -> {"size": int, "pages": {index: bytearray(PAGE)}}
        self.mutex = threading.Lock()  # not `lock`: that name is FUSE's POSIX-lock operation
        self.cuts = 0
        self.lost_bytes = 0  # unsynced bytes thrown away by cuts, in pages

    def _p(self, path):
        return self.root + path

    # --- the overlay
    def _size(self, path):
        d = self.dirty.get(path)
        return d["size"] if d else os.stat(self._p(path)).st_size

    def _page(self, path, index):
        """The current content of one page (a copy): the overlay's, else the backing file's."""
        d = self.dirty.get(path)
        if d and index in d["pages"]:
            return bytearray(d["pages"][index])
        size = self._size(path)
        out = bytearray(PAGE)
        start = index * PAGE
        if start < size:
            with open(self._p(path), "rb") as f:
                f.seek(start)
                got = f.read(min(PAGE, size - start))
            out[: len(got)] = got
        return out

    def _entry(self, path):
        d = self.dirty.get(path)
        if d is None:
            d = self.dirty[path] = {"size": os.stat(self._p(path)).st_size, "pages": {}}
        return d

    def cut(self):
        """The power goes: every unsynced write is lost."""
        with self.mutex:
            self.lost_bytes += sum(len(d["pages"]) * PAGE for d in self.dirty.values())
            self.dirty.clear()
            self.cuts += 1

    # --- file data
    def read(self, path, size, offset, fh):
        with self.mutex:
            end = min(offset + size, self._size(path))
            out = bytearray()
            pos = offset
            while pos < end:
                index, skip = divmod(pos, PAGE)
                n = min(PAGE - skip, end - pos)
                out += self._page(path, index)[skip : skip + n]
                pos += n
            return bytes(out)

    def write(self, path, data, offset, fh):
        with self.mutex:
            d = self._entry(path)
            pos, i = offset, 0
            while i < len(data):
                index, skip = divmod(pos, PAGE)
                n = min(PAGE - skip, len(data) - i)
                page = self._page(path, index)
                page[skip : skip + n] = data[i : i + n]
                d["pages"][index] = page
                pos += n
                i += n
            d["size"] = max(d["size"], offset + len(data))
            return len(data)

    def truncate(self, path, length, fh=None):
        with self.mutex:
            d = self._entry(path)
            last = length // PAGE
            for index in [k for k in d["pages"] if k * PAGE >= length]:
                del d["pages"][index]
            if length % PAGE and length < d["size"]:
                page = self._page(path, last)
                page[length % PAGE :] = bytes(PAGE - length % PAGE)
                d["pages"][last] = page
            d["size"] = length
        return 0

    def fsync(self, path, datasync, fh):
        with self.mutex:
            d = self.dirty.pop(path, None)
            if d is None:
                return 0
            fd = os.open(self._p(path), os.O_WRONLY)
            try:
                for index, page in sorted(d["pages"].items()):
                    start = index * PAGE
                    if start < d["size"]:
                        os.pwrite(fd, bytes(page[: min(PAGE, d["size"] - start)]), start)
                os.ftruncate(fd, d["size"])
                os.fsync(fd)
            finally:
                os.close(fd)
        return 0

    def flush(self, path, fh):
        return 0  # close(2): no durability promised

    def release(self, path, fh):
        return 0

    # --- files and the namespace, straight to the backing directory
    def getattr(self, path, fh=None):
        with self.mutex:
            st = os.lstat(self._p(path))
            out = {k: getattr(st, k) for k in ("st_mode", "st_nlink", "st_uid", "st_gid", "st_size")}
            out.update(st_atime=st.st_atime_ns, st_mtime=st.st_mtime_ns, st_ctime=st.st_ctime_ns)
            if path in self.dirty:
                out["st_size"] = self.dirty[path]["size"]
            return out

    def access(self, path, amode):
        if not os.access(self._p(path), amode):
            raise OSError(errno.EACCES, path)
        return 0

    def open(self, path, flags):
        if flags & os.O_TRUNC:
            self.truncate(path, 0)
        return 0

    def create(self, path, mode, fi=None):
        fd = os.open(self._p(path), os.O_CREAT | os.O_WRONLY, mode)
        os.close(fd)
        return 0

    def unlink(self, path):
        with self.mutex:
            self.dirty.pop(path, None)
            os.unlink(self._p(path))
        return 0

    def rename(self, old, new):
        with self.mutex:
            os.rename(self._p(old), self._p(new))
            self.dirty.pop(new, None)
            if old in self.dirty:
                self.dirty[new] = self.dirty.pop(old)
        return 0

    def mkdir(self, path, mode):
        os.mkdir(self._p(path), mode)
        return 0

    def rmdir(self, path):
        os.rmdir(self._p(path))
        return 0

    def readdir(self, path, fh):
        return [".", ".."] + os.listdir(self._p(path))

    def chmod(self, path, mode):
        os.chmod(self._p(path), mode)
        return 0

    def chown(self, path, uid, gid):
        os.chown(self._p(path), uid, gid)
        return 0

    def utimens(self, path, times=None):
        os.utime(self._p(path), ns=times) if times else os.utime(self._p(path))
        return 0

    def statfs(self, path):
        st = os.statvfs(self._p(path))
        return {k: getattr(st, k) for k in ("f_bavail", "f_bfree", "f_blocks", "f_bsize", "f_favail", "f_ffree",
                                            "f_files", "f_flag", "f_frsize", "f_namemax")}


class PowerCutFS:
    """A mounted VolatileOps in its own process: .path is where the services keep their files;
    cut() loses what is unsynced and returns (cuts, lost bytes) so far."""

    def __init__(self, workdir):
        self.backing = Path(workdir) / "backing"
        self.path = Path(workdir) / "mnt"
        self.backing.mkdir(parents=True, exist_ok=True)
        self.path.mkdir(parents=True, exist_ok=True)
        self.proc = None

    def start(self, timeout_s=15):
        self.proc = subprocess.Popen([sys.executable, __file__, str(self.backing), str(self.path)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=open(self.backing.parent / "volatile_fs.log", "w"), text=True)
        line = self.proc.stdout.readline()
        if line.strip() != "ready":
            self.proc.kill()
            log = (self.backing.parent / "volatile_fs.log").read_text()[-500:]
            raise RuntimeError(f"volatile_fs did not start: {line.strip()} {log}")
        deadline = time.monotonic() + timeout_s
        while not os.path.ismount(self.path):
            if time.monotonic() > deadline:
                raise RuntimeError("volatile_fs: mount did not appear")
            time.sleep(0.05)
        return self

    def cut(self):
        self.proc.stdin.write("cut\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline().split()  # "cut N LOST"
        return int(line[1]), int(line[2])

    def stop(self):
        if self.proc is None:
            return
        subprocess.run(["fusermount3", "-u", "-z", str(self.path)], capture_output=True)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def main(backing, mountpoint):
    import mfusepy

    ops = type("Fs", (VolatileOps, mfusepy.Operations), {})(os.path.abspath(backing))

    def control():
        # A thread of its own: the FUSE loop waits in C (the GIL released) when nothing is asked of it.
        for line in sys.stdin:
            if line.strip() == "cut":
                ops.cut()
                print(f"cut {ops.cuts} {ops.lost_bytes}", flush=True)

    threading.Thread(target=control, daemon=True).start()
    print("ready", flush=True)
    # No kernel caching of attributes or entries: after a cut, sizes come from here again.
    mfusepy.FUSE(ops, mountpoint, foreground=True, nothreads=True, attr_timeout=0, entry_timeout=0,
                 negative_timeout=0, default_permissions=True, allow_other=True)


if __name__ == "__main__":
    main(*sys.argv[1:3])
