# The sensors of a node: each on its interval, its driver made at boot (bringup.py: DRIVERS), its
# faults counted and retried. Readings that take time (a PMS5003 frame, a BME280 conversion) are
# asked for and polled over the loop's ticks; the noise meter is fed from I2S every tick.
import time

from app import lazy
from micropython import const

OK, WARMING, DEGRADED, FAILED = 0, 1, 2, 3
STATE_NAMES = ("ok", "warming", "degraded", "failed")
_PMS_WARMUP_MS = const(30000)  # readings within 30 s of waking the laser are not used (Plantower)
_I2S_BLOCK_MS = const(10)  # audio the loop takes in each tick
I2S_READ = 120  # samples per read, four reads a tick: 2.5 ms at 48 kHz, a 480-byte buffer
_I2S_DMA_MS = const(52)  # what the ESP32's RX DMA holds: ibuf 20000 bytes, 32-bit stereo frames, 2500 at 48 kHz


class Sensor:
    """Made by bringup._sensor() at boot: its fields are set there."""

    duty = False  # sleeps between readings (a PMS5003's laser): set on the one sensor that does

    def fault(self, e):
        self.errors += 1
        self.last_error = str(e)
        self.state = FAILED if self.driver is None else DEGRADED

    def read(self, hw, now):
        """Return {quantity: value} or None; a fault is counted and the node goes on."""
        if self.driver is None:
            lazy("bringup").sensor(self, hw)  # start it (again): boot code, loaded for the call
            if self.driver is None:
                return None
        if self.name == "pms5003":
            if self.awake_since is None:  # asleep (its interval changed): wake it, read after warm-up
                try:
                    self.driver.wake()
                except OSError as e:
                    self.fault(e)
                    return None
                self.awake_since = now
            if time.ticks_diff(now, self.awake_since) < _PMS_WARMUP_MS:
                self.state = WARMING
                return None
        if hasattr(self.driver, "request"):  # PMS5003, BME280: the answer comes in over the next ticks
            try:
                self.driver.request()
            except OSError as e:
                self.fault(e)
                return None
            self.pending = True
            return None
        try:
            values = self.driver.read()
        except (OSError, ValueError) as e:
            self.fault(e)
            return None
        return self._got(values)

    def poll(self):
        """The reading read() asked for (PMS5003, BME280): its values, or None while it is on its way."""
        try:
            values = self.driver.poll()
        except (OSError, ValueError) as e:
            self.pending = False
            self.fault(e)
            return None
        if values is None:
            return None
        self.pending = False
        return self._got(values)

    def _got(self, values):
        if values is None:  # the noise meter's first interval, thrown away
            self.state = WARMING
            return None
        if self.duty:
            self.driver.sleep()  # spare the laser until the next reading
            self.awake_since = None
        self.state = OK
        self.last = values
        return values

    def before(self, now):
        """Wake a duty-cycled PMS5003 30 s before its reading is due."""
        if self.driver is not None and self.awake_since is None and self.duty:
            if time.ticks_diff(self.due, now) <= _PMS_WARMUP_MS:
                try:
                    self.driver.wake()
                    self.awake_since = now
                except OSError as e:
                    self.fault(e)


class NoiseSensor:
    """The noise meter fed continuously from I2S; read() gives the levels since the last read.
    Audio the loop was too late to read is counted: `lost` blocks of 10 ms since boot. Made by
    bringup.sensor() at boot: its fields are set there."""

    def block(self):
        for _ in range(4):  # 10 ms of audio; blocks for it (returns at once when the DMA holds more)
            self.i2s.readinto(self.buf)
            self.meter.process(self.buf, I2S_READ)
        now = time.ticks_ms()
        self.next = now if self.next is None else time.ticks_add(self.next, _I2S_BLOCK_MS)
        # Samples due by elapsed time against samples read: past what the DMA holds, audio was
        # overwritten. Count it, and move on to the audio the DMA still has.
        late = time.ticks_diff(now, self.next) - _I2S_DMA_MS
        if late > 0:
            self.lost += (late + _I2S_BLOCK_MS - 1) // _I2S_BLOCK_MS
            self.next = time.ticks_add(self.next, late)

    def read(self):
        r = self.meter.report()
        if self.first:  # it began with the filters' start-up transient: not a level of the street
            self.first = False
            return None
        if r["laeq"] is None:
            raise ValueError("noise: no audio in the interval")
        return r
