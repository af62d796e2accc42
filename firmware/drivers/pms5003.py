# Plantower PMS5003 particle sensor on a UART (9600 8N1), used in passive mode.
# Usage: PMS5003(uart, set_pin=None, reset_pin=None).read() -> {"pm2_5": ug/m3, ..., "pc0_3": n/0.1L}
# Frames (manual appendix I): 0x42 0x4D, length 28, 13 big-endian words, checksum = byte sum.
# The node asks with request() and takes the frame in with poll() over its loop ticks, never
# blocking its audio; read() does both for tools. Warm-up: the scheduler duty-cycles the laser.

import time

from micropython import const

_CMD_PASSIVE = b"\x42\x4d\xe1\x00\x00\x01\x70"
_CMD_READ = b"\x42\x4d\xe2\x00\x00\x01\x71"
_CMD_SLEEP = b"\x42\x4d\xe4\x00\x00\x01\x73"
_CMD_WAKE = b"\x42\x4d\xe4\x00\x01\x01\x74"
_FRAME = const(32)
_BUF = const(96)  # a frame plus the command acks and line noise that may precede it
# Word order in the frame (manual): CF=1 mass, atmospheric mass, then counts per 0.1 L.
_KEYS = ("pm1_cf1", "pm2_5_cf1", "pm10_cf1", "pm1", "pm2_5", "pm10", "pc0_3", "pc0_5", "pc1", "pc2_5", "pc5", "pc10")


class PMS5003:
    def __init__(self, uart, set_pin=None, reset_pin=None, timeout_ms=1500):
        self.uart = uart
        self.set_pin = set_pin
        self.reset_pin = reset_pin
        self.timeout_ms = timeout_ms
        self._buf = bytearray(_BUF)
        self._mv = memoryview(self._buf)
        self._n = 0
        self.bad_frames = 0  # damaged or truncated frames skipped since start
        self._t0 = self._last = 0
        self._requests = 0
        if reset_pin is not None:
            reset_pin(1)
        self.wake()

    def sleep(self):
        """Stop the fan and laser (about 8,000 h of life: keep them off between readings)."""
        if self.set_pin is not None:
            self.set_pin(0)
        else:
            self.uart.write(_CMD_SLEEP)

    def wake(self):
        """Start fan and laser; readings are valid about 30 s later (the scheduler waits). Passive
        mode is asked for again: a sensor whose power was cut starts in active mode."""
        if self.set_pin is not None:
            self.set_pin(1)
        else:
            self.uart.write(_CMD_WAKE)
        self.uart.write(_CMD_PASSIVE)

    def _drop(self, k):
        # Shift the unread bytes down by k (in place: no allocation).
        b = self._buf
        for i in range(self._n - k):
            b[i] = b[i + k]
        self._n -= k

    def _frame(self):
        """Parse a frame from the buffer; resynchronise past damage. Returns the frame start or -1."""
        b = self._buf
        while self._n >= 2:
            if b[0] != 0x42 or b[1] != 0x4D:
                self._drop(1)
                continue
            if self._n < 4:
                return -1
            if b[2] != 0 or b[3] != 28:  # a command ack (length 4) or a damaged header
                if b[2] != 0 or b[3] != 4:
                    self.bad_frames += 1
                self._drop(2)
                continue
            if self._n < _FRAME:
                return -1
            s = 0
            for i in range(30):
                s += b[i]
            if s & 0xFFFF == (b[30] << 8) | b[31] and self._plausible():
                return 0
            self.bad_frames += 1
            self._drop(2)  # the next header may already be in the buffer
        return -1

    def _plausible(self):
        # The byte-sum checksum misses some slips (a lost byte can still sum right). Masses are
        # cumulative (PM1 <= PM2.5 <= PM10) and counts are of particles beyond each size, so they
        # fall with size: a real frame obeys both, a misaligned one almost never does.
        # Words 0-2 and 3-5 rise, 6-11 fall; read in place (no list a frame).
        b = self._buf
        last = 0
        for i in range(12):
            w = (b[4 + 2 * i] << 8) | b[5 + 2 * i]
            if i != 0 and i != 3 and i != 6 and (w < last if i < 6 else w > last):
                return False
            last = w
        return True

    def request(self):
        """Ask for one frame; poll() takes it in over the next loop ticks. Passive mode is asked for
        again each time: a sensor that lost power or reset since is back in active mode."""
        uart = self.uart
        while uart.any():  # stale bytes (acks, frames from before) would date the reading wrong
            uart.readinto(self._buf)
        self._n = 0
        uart.write(_CMD_PASSIVE)
        uart.write(_CMD_READ)
        self._t0 = self._last = time.ticks_ms()
        self._requests = 1

    def poll(self):
        """The frame asked for by request(), as {quantity: value}, or None while it is on its way
        (33 ms at 9600 baud); OSError when none came in timeout_ms. Never waits."""
        uart = self.uart
        while self._n < _BUF and uart.any():
            got = uart.readinto(self._mv[self._n :], _BUF - self._n)
            self._n += got or 0
            self._last = time.ticks_ms()
            if self._frame() == 0:
                b = self._buf
                out = {}
                for i in range(12):
                    out[_KEYS[i]] = (b[4 + 2 * i] << 8) | b[5 + 2 * i]
                self._drop(_FRAME)
                return out
            if self._n >= _BUF:
                self._drop(self._n - 1)
        now = time.ticks_ms()
        if time.ticks_diff(now, self._t0) > self.timeout_ms:
            raise OSError("PMS5003: no valid frame in %d ms (%d damaged)" % (self.timeout_ms, self.bad_frames))
        # 100 ms of silence ends an answer. Count what was cut short and ask once more (passive
        # mode too: the silence may be a sensor that reset), so one glitch costs one frame.
        if self._requests == 1 and time.ticks_diff(now, self._last) > 100:
            if self._n and self._buf[0] == 0x42:  # a frame cut short (not the tail of a command ack)
                self.bad_frames += 1
                self._n = 0
            uart.write(_CMD_PASSIVE)
            uart.write(_CMD_READ)
            self._requests = 2
            self._last = now
        return None

    def read(self):
        """request() and poll() until the frame is in: blocks up to timeout_ms (for tools and tests;
        the node polls over its loop ticks instead)."""
        self.request()
        while True:
            out = self.poll()
            if out is not None:
                return out
            time.sleep_ms(5)
