# The outbox's set-up (outbox.py): its RAM queue, the flash segments' size and number from the
# filesystem itself, and what an earlier boot left in flash. Boot code: Outbox() loads this module
# for it and lets it go, so the running node's heap does not hold it.
import os


def setup(ob, ram_bytes, spill_dir, seg_bytes, max_segments, share):
    ob.ram = bytearray(ram_bytes)
    ob.mv = memoryview(ob.ram)
    ob.start = 0  # first byte of the oldest RAM record
    ob.end = 0
    ob.ram_records = 0
    ob.dir = spill_dir
    ob.seg_loaded = None  # the oldest flash segment, once its size is known
    ob.seg_pos = 0  # where its replay has got to
    ob.seg_len = 0
    ob.tail = None  # bytes in the newest segment while spills may append to it (this boot's)
    ob.spilled = 0  # records written to flash
    ob.dropped = 0  # records lost: flash full, or too big to keep
    try:
        os.mkdir(spill_dir)
    except OSError:
        pass
    # Segments are files numbered first..next-1 (a number each, not a list of names: a day's
    # outage is dozens of files). Those left by an earlier boot are replayed first.
    ob.first = ob.next = 0
    ob.flash_records = 0
    for name in os.listdir(spill_dir):
        if name.endswith(".tmp"):
            os.remove(spill_dir + "/" + name)  # a spill cut short by a reset (firmware before 0.2.1)
            continue
        try:
            n = int(name)
        except ValueError:
            continue  # not a segment
        ob.first = n if not ob.next else min(ob.first, n)
        ob.next = max(ob.next, n + 1)
        ob.flash_records += ob._count(n)
    block, free = flash(spill_dir)
    ob.seg_bytes = seg_bytes or block
    # A segment takes whole blocks (one, at the default size: a spill never crosses it). The
    # segments' share: of the blocks free now and of those the segments already hold.
    per = -(-ob.seg_bytes // block)
    ob.max_segments = max_segments or (16 if free is None else max(1, int((free + (ob.next - ob.first) * per) * share) // per))


def flash(path="."):
    """(block size, blocks free) of the filesystem holding path: a board's LittleFS has 4096-byte
    blocks. A filesystem that cannot say: (4096, None)."""
    try:
        st = os.statvfs(path)
        return st[0] or 4096, st[4]  # f_bsize, f_bavail
    except (OSError, AttributeError):
        return 4096, None
