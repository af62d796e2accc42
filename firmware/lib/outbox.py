# Store and forward: node messages wait here until the pole's agent says they are on its disk.
# RAM first (a preallocated byte FIFO); when it fills during an outage the oldest records move to
# flash, into segment files of one filesystem block each: a spill appends to the newest segment
# while its block has room, then starts the next (LittleFS gives every file a whole 4 KB block, so a
# file per 1 KB spill would take four times the flash it holds). Segments are deleted once replayed
# (LittleFS spreads the wear); at most max_segments of them, sized from the free blocks at boot
# (outbox_setup.py); past that the oldest segment is dropped and counted. Before a deliberate reset
# save() moves what is in RAM to flash. Replay reads flash a record at a time: no segment-sized
# buffer, which a fragmented heap may not have. Replay is in order: flash (oldest) first, then RAM.
# Records keep their (boot, seq), so a record replayed after a reset is de-duplicated upstream; its
# age is then a lower bound.
#
# Record: u16 length | u32 boot | u32 seq | u32 ticks (sampled) | u32 ticks (spilled) | u8 nsamples
#         | per sample: u8 n, CBOR values | u8 n, CBOR status

import os
import struct
import sys
import time

try:
    from micropython import const
except ImportError:  # CPython: the spec site's example messages use the record layout

    def const(x):
        return x

_HDR = ">HIIIIB"
_HDR_LEN = const(19)


class Outbox:
    def __init__(self, ram_bytes=1024, spill_dir="spill", seg_bytes=None, max_segments=None, flash_share=0.5):
        """ram_bytes of RAM queue; segments of seg_bytes (default: the filesystem's block) in
        spill_dir, at most max_segments (default: flash_share of the free blocks). The set-up (and
        the scan of what an earlier boot left in flash) is boot code, loaded for it and let go."""
        try:
            __import__("outbox_setup").setup(self, ram_bytes, spill_dir, seg_bytes, max_segments, flash_share)
        finally:
            sys.modules.pop("outbox_setup", None)

    def __len__(self):
        return self.ram_records + self.flash_records

    def _path(self, n):
        return "%s/%08d" % (self.dir, n)

    def _count(self, num, pos=0):
        n = 0
        try:
            with open(self._path(num), "rb") as f:
                f.seek(pos)
                while True:
                    h = f.read(2)
                    if len(h) < 2:
                        return n
                    ln = (h[0] << 8) | h[1]
                    if ln < _HDR_LEN:
                        return n  # a torn tail: stop here
                    f.seek(ln - 2, 1)
                    n += 1
        except OSError:
            return n

    def put(self, boot, seq, ticks, samples, status):
        """Queue one message: samples is a list of CBOR-encoded value maps, status CBOR bytes."""
        size = _HDR_LEN + sum(1 + len(s) for s in samples) + 1 + len(status)
        if size > len(self.ram) or size > self.seg_bytes or len(samples) > 255:
            self.dropped += 1
            return False
        while len(self.ram) - self.end < size:
            if self.start:
                n = self.end - self.start  # compact: move the queue to the front (no allocation)
                self.mv[0:n] = self.mv[self.start : self.end]
                self.start, self.end = 0, n
            else:
                self._spill()
        m = self.mv
        e = self.end
        struct.pack_into(_HDR, m, e, size, boot, seq, ticks, 0, len(samples))
        e += _HDR_LEN
        for s in samples + [status]:
            m[e] = len(s)
            m[e + 1 : e + 1 + len(s)] = s
            e += 1 + len(s)
        self.end = e
        self.ram_records += 1
        return True

    def save(self):
        """Move every RAM record to flash: called before a deliberate reset."""
        while self.ram_records:
            self._spill()

    def _spill(self):
        """Move the oldest RAM records to flash: appended to the newest segment (one of this boot,
        whose block has room for them), else into a new one. A LittleFS file is whole or not at
        all after a power cut; a torn tail (a host's filesystem) is read as the segment's end."""
        room = self.seg_bytes - self.tail if self.tail is not None else 0
        if (self.ram[self.start] << 8) | self.ram[self.start + 1] > room:  # not even the oldest fits: a new segment
            if self.next - self.first >= self.max_segments:
                self._lose_first()
            if self.next == self.first:
                self.first = self.next = self.next or 1
            self.next += 1
            self.tail = 0
            room = self.seg_bytes
        end, n, now = self.start, 0, time.ticks_ms()  # the n records that fit end at end
        while end < self.end:
            ln = (self.ram[end] << 8) | self.ram[end + 1]
            if end + ln - self.start > room:
                break
            struct.pack_into(">I", self.ram, end + 14, now)  # when it left RAM: dates it after a reset
            end += ln
            n += 1
        try:
            with open(self._path(self.next - 1), "ab") as f:
                f.write(self.mv[self.start : end])
            self.tail += end - self.start
            if self.seg_loaded == self.next - 1:
                self.seg_len += end - self.start  # its replay reads on into what came now
            self.flash_records += n
            self.spilled += n
        except OSError:  # a full or failing flash: these records are lost and counted, the node goes on
            self.dropped += n
            self.tail = None  # and that file is not appended to again
        self.ram_records -= n
        self.start = end
        if self.start == self.end:
            self.start = self.end = 0

    def _lose_first(self):
        """Drop the oldest segment; what it still held from its replay point is counted lost."""
        lost = self._count(self.first, self.seg_pos if self.seg_loaded == self.first else 0)
        self.dropped += lost
        self.flash_records -= lost
        self._drop_first()

    def _drop_first(self):
        try:
            os.remove(self._path(self.first))
        except OSError:
            pass  # gone already (removed by hand, or a spill that never wrote it)
        if self.seg_loaded == self.first:
            self.seg_loaded = None
        self.first += 1
        if self.first == self.next:
            self.flash_records = 0  # flash is empty: a torn record counted at boot is gone too
            self.tail = None  # the segment spills appended to went with it

    def _load(self):
        """The oldest segment's size, for its replay; empty or unreadable segments are dropped."""
        while self.next != self.first and self.seg_loaded != self.first:
            try:
                self.seg_len = os.stat(self._path(self.first))[6]
            except OSError:
                self.seg_len = 0
            self.seg_loaded, self.seg_pos = self.first, 0
            if self.seg_len < _HDR_LEN:
                self._drop_first()

    def _flash(self, i, read=True):
        """Record i from the replay point of the oldest segment: its bytes (read) or its length;
        None past the segment's end, at a torn record, or when the file cannot be read."""
        try:
            with open(self._path(self.first), "rb") as f:
                pos = self.seg_pos
                while True:
                    f.seek(pos)
                    h = f.read(2)
                    ln = (h[0] << 8) | h[1] if len(h) == 2 else 0
                    if ln < _HDR_LEN or pos + ln > self.seg_len:
                        return None
                    if not i:
                        break
                    pos += ln
                    i -= 1
                if not read:
                    return ln
                f.seek(pos)
                rec = f.read(ln)
                return rec if len(rec) == ln else None
        except OSError:
            return None

    def peek(self):
        """The oldest record as (buffer, offset), or None when empty."""
        while self.next != self.first:
            self._load()
            if self.next == self.first:
                break
            rec = self._flash(0)
            if rec is not None:
                return rec, 0
            self._lose_first()  # torn or unreadable from here on
        if self.ram_records:
            return self.ram, self.start
        return None

    def nth(self, i):
        """Record i from the oldest, as (buffer, offset), within the oldest region (the first flash
        segment, or RAM when nothing is in flash); None past it: a send window never spans regions."""
        rec = self.peek()
        if rec is None or not i:
            return rec
        if rec[0] is not self.ram:
            rec = self._flash(i)
            return None if rec is None else (rec, 0)
        off = rec[1]
        while i:
            off += (self.ram[off] << 8) | self.ram[off + 1]
            if off + _HDR_LEN > self.end:
                return None
            i -= 1
        return self.ram, off

    def pop(self):
        """Drop the oldest record: the pole has it."""
        if self.next != self.first:
            self._load()
            ln = self._flash(0, read=False)
            if ln is None:  # (peek() found the record: only a failing flash gets here)
                self._lose_first()
                return
            self.flash_records -= 1
            self.seg_pos += ln
            if self.seg_pos + _HDR_LEN > self.seg_len:
                self._drop_first()
            return
        ln = (self.ram[self.start] << 8) | self.ram[self.start + 1]
        self.start += ln
        self.ram_records -= 1
        if not self.ram_records:
            self.start = self.end = 0


def record_fields(buf, off):
    """(boot, seq, ticks, spilled_ticks, nsamples, offset of the first sample) of a record."""
    _, boot, seq, ticks, spilled, n = struct.unpack_from(_HDR, buf, off)
    return boot, seq, ticks, spilled, n, off + _HDR_LEN
