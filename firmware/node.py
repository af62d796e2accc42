# The node: sample the sensors on their intervals, queue node messages in the outbox, publish them
# at QoS 1, answer the console and the command topic, publish diagnostics. One tick scheduler,
# paced by the microphone's 10 ms I2S reads (or a 10 ms sleep without one): no step blocks longer.
# Work that takes longer than a tick's share (a reading and its encoding, a diag report, a replay)
# is done a piece per tick, with the audio read between the pieces (pace()).
# A message leaves the outbox when the pole's agent says it is on the pole's disk (the ack topic),
# not on the broker's PUBACK: a broker keeps its store in RAM between autosaves.
import binascii
import gc
import json
import os
import time

import message
from app import lazy as _lazy
from micropython import const
from outbox import record_fields
from sensors import DEGRADED, STATE_NAMES

VERSION = "0.2.0"
_LOG_LINES = const(12)
# What a tick did, a bit each (Node.did), in the order of commands.KINDS (their names, kept out of
# the running heap): the worst tick of each kind is kept (Node.stats), so the bench can say what the
# longest time away from the audio was spent on.
_SAMPLE = const(1)
_MESSAGE = const(2)
_GC = const(4)
_SEND = const(8)
_REPLAY = const(16)
_SPILL = const(32)
_ACK = const(64)
_CONNECT = const(128)
_DIAG = const(256)
_COMMAND = const(512)
_CONSOLE = const(1024)
# Node.stats, one array for the loop's figures (one field in the node's dict, not six): when this
# tick began and the simulated buses' time then, the longest tick's work (us) and what it did, the
# most heap held after a collection during a connect attempt (its code is loaded then; heap_live
# is the rest of the time), then the longest tick of each kind.
_T0 = const(0)
_SIM = const(1)
_US = const(2)
_WHAT = const(3)
_HEAPC = const(4)
_KIND0 = const(5)
_FREE_MIN = const(4096)  # less heap free than this at a tick's start: collect first
# Ticks kept in Node.stats (32-bit) and subtracted modulo 2**30: the ESP32's ticks period, and the
# largest small int on a 32-bit VM (the x64 Unix port's ticks would not fit the array).
_TICKS_MASK = const(0x3FFFFFFF)


class Node:
    """Made by bringup.node() at boot: its fields are set there."""

    def log(self, line):
        print(line)
        self.lines.append(line)
        if len(self.lines) > _LOG_LINES:
            self.lines.pop(0)

    def sample(self, now):
        """Read every sensor that is due, take in readings on their way (PMS5003); queue one
        message with the samples once none is pending. Each reading and its encoding takes a tick
        of its own, and so does queuing the message: all sensors due at once is no longer tick."""
        samples = self.samples
        pending = False
        for s in self.sensors:
            s.before(now)
            was = s.state
            if s.pending:
                values = s.poll()
            elif time.ticks_diff(now, s.due) >= 0:
                s.due = time.ticks_add(s.due, s.interval_ms)
                if time.ticks_diff(now, s.due) >= 0:
                    s.due = time.ticks_add(now, s.interval_ms)  # fell behind: no burst of catch-up reads
                values = s.read(self.hw, now)
            else:
                continue
            self.did |= _SAMPLE
            pending = pending or s.pending
            if values is not None:
                samples.append(message.encode_values(values))
                if self.watch:
                    print("reading %s %s" % (s.name, json.dumps(values)))
                self.pace()
            elif s.state >= DEGRADED and was < DEGRADED:
                self.log("sensor %s: %s (%s)" % (s.name, STATE_NAMES[s.state], s.last_error))
                self.diag_due = now  # tell the pole now, not at the next diag interval
        if not samples or pending:
            return False
        spilled = self.outbox.spilled
        self.outbox.put(self.boot, self.seq, time.ticks_ms(), samples, message.encode_status(self.sensors))
        self.did |= _MESSAGE if spilled == self.outbox.spilled else _MESSAGE | _SPILL
        self.samples = []
        self.seq += 1
        self.cycles += 1
        return True

    def _online(self):
        self.mqtt.publish(self.status_topic, b"online", qos=0, retain=True)
        self._rewind()  # what was in flight on the old connection may be lost: send it again

    def _on_message(self, topic, payload):
        if topic.endswith(b"/ack"):
            self._pole_acked(payload)
        elif topic.endswith(b"/ota"):
            self.ota_in(payload)
        elif len(self.commands) < 8:  # a burst from one read; more waits for the sender to ask again
            self.commands.append(payload)

    def ota_in(self, payload):
        """A ticket, chunk or cancel of an app update (otajob.py, loaded while a job is under way)."""
        try:
            if self.ota is None:
                gc.collect()  # the job's code wants blocks of its own size: room made first
                self.ota = _lazy("otajob").Job(self)
            self.ota.message(payload)
        except MemoryError:
            self.short_of_heap += 1
            self.ota = None
            if payload is None:
                self.ota_resume = True  # tried again at the next tick
            else:
                self.log("ota: no heap for an update message: dropped, asked for again")
        except (OSError, ValueError, TypeError, KeyError, IndexError, AttributeError) as e:
            self.ota_rejected += 1
            self.log("ota: an update message failed: %r" % e)

    def _pole_acked(self, payload):
        """The agent's ack, CBOR [[boot, first seq, last seq], ...]: what it has on disk. The outbox
        frees from its oldest record while that one is covered; the rest waits for a re-send."""
        try:
            ranges = message.decode_ack(payload)
            while True:
                rec = self.outbox.peek()
                if rec is None:
                    return
                boot, seq = record_fields(rec[0], rec[1])[:2]
                for r in ranges:
                    if r[0] == boot and r[1] <= seq <= r[2]:
                        break
                else:
                    return
                self._freed()
        except ValueError:
            self.log("mqtt: unreadable ack from the pole ignored")

    def _freed(self, pid=None):
        """The oldest record is safe (at the pole, or at the broker with "ack": "broker")."""
        if self.outbox.peek() is None:
            return
        self.outbox.pop()
        self.delivered += 1
        self.inflight = max(0, self.inflight - 1)
        self.sent_before = max(0, self.sent_before - 1)
        self.ack_wait = time.ticks_ms()

    def _rewind(self):
        """Send everything unacknowledged again from the oldest, flagged DUP."""
        self.sent_before = max(self.sent_before, self.inflight)
        self.resent += self.inflight
        self.inflight = 0
        self.ack_wait = time.ticks_ms()

    def flush(self):
        """Send the oldest message not yet sent, never waiting for an ack: up to the transport's
        window are in flight. One a tick: a replay after an outage goes out at up to 100 a second,
        the audio read between them. Each connect step is a tick's work too. A node on a Pi's USB
        ("uplink": "serial") prints each as an OPMSG line, which has no acknowledgement."""
        serial = self.cfg["uplink"] == "serial"
        if not len(self.outbox):
            return
        if not serial:
            if not self.hw.network_up():
                return
            m = self.mqtt
            if not m.connected:
                self.did |= _CONNECT
                errors = m.errors
                m.ensure(self._online)
                if m.errors != errors and m.last_error == "connect: out of heap":
                    self.short_of_heap += 1  # no room to load the connect code: tried again after a backoff
                return  # connected or not, this tick's share is spent
        if self.inflight and time.ticks_diff(time.ticks_ms(), self.ack_wait) > self.ack_timeout_ms:
            self._rewind()
        rec = self.outbox.peek() if serial else self.outbox.nth(self.inflight)
        if rec is None or not serial and len(self.mqtt.unacked) >= self.mqtt.window:  # the window is full
            return
        self.did |= _SEND if rec[0] is self.outbox.ram else _REPLAY
        payload = message.encode_record(self.node_id, rec[0], rec[1], time.ticks_ms(), self.boot,
                                         time.ticks_diff(time.ticks_ms(), self.t0))
        if self.key:
            payload = self.sign(payload, self.key)
        if serial:
            print("OPMSG " + binascii.b2a_base64(payload).decode().strip())
            self.outbox.pop()
            self.delivered += 1
        elif not self.mqtt.publish(self.topic, payload, dup=self.inflight < self.sent_before):
            self.log("mqtt: publish failed (%s); %d message(s) kept" % (self.mqtt.last_error, len(self.outbox)))
            return
        else:
            if not self.inflight:
                self.ack_wait = time.ticks_ms()
            if self.inflight >= self.sent_before:
                self.published += 1
            self.inflight += 1
        self.last_publish = time.ticks_ms()

    def housekeeping(self, now):
        if self.healthy_due is not None and (self.delivered or time.ticks_diff(now, self.healthy_due) >= 0):
            self.healthy_due = None  # running well: the next crash starts main.py's delays afresh
            try:
                os.remove("crashes.txt")
            except OSError:
                pass
        # A command or report that finds too little heap (one block of it) is skipped and counted:
        # sampling goes on, and the pole asks again or gets the next report.
        try:
            while self.commands:
                commands = _lazy("commands")
                self.pace(_COMMAND)  # loading it was this tick's work
                commands.command(self, self.commands.pop(0))
                self.did |= _COMMAND
            # Not in the tick that connected: that tick's share is spent, and the oldest message goes first.
            if time.ticks_diff(now, self.diag_due) >= 0 and self.mqtt.connected and not self.did & _CONNECT:
                self.diag_due = time.ticks_add(now, int(self.cfg["diag_interval_s"] * 1000))
                diag = _lazy("diag")
                self.pace(_DIAG)  # loading it was this tick's work
                diag.publish(self)
                self.did |= _DIAG
        except MemoryError:
            self.short_of_heap += 1

    def pace(self, did=0, collect=True):
        """End this tick (what it did: commands.KINDS bits) and read the next 10 ms of audio: the
        longest time away from the audio is one tick's work. Work that takes longer is done a piece
        per tick, with pace() between the pieces. A simulated board's bus round trips (hw.sim_us)
        are not the node's work and are left out of the work timed; tick_max_ms is the time as it
        passed. collect: a heap nearly full is collected in a tick of its own first."""
        hw, tk = self.hw, self.stats
        did |= self.did
        wall = (time.ticks_us() - tk[_T0]) & _TICKS_MASK
        if wall // 1000 > self.tick_max_ms:
            self.tick_max_ms = wall // 1000  # the loop's longest time away from the audio
        work = wall - ((hw.sim_us - tk[_SIM]) & _TICKS_MASK)
        if work > tk[_US]:
            tk[_US], tk[_WHAT] = work, did
        k = _KIND0
        while did:
            if did & 1 and work > tk[k]:
                tk[k] = work
            did >>= 1
            k += 1
        hw.feed()
        if self.noise is not None:
            self.noise.block()  # the pace: 10 ms of audio
        else:
            time.sleep_ms(10)
        self.did = 0
        tk[_SIM] = hw.sim_us & _TICKS_MASK
        tk[_T0] = time.ticks_us() & _TICKS_MASK
        if collect and gc.mem_free() < _FREE_MIN:
            # Collect in a tick of its own before a piece of work runs out of heap in the middle of
            # its tick (a replay makes 2 KB of garbage a tick): that tick would take the collection too.
            gc.collect()
            self.pace(_GC, False)  # (a heap this full after it too: no second collection)

    def run(self, cycles=None):
        self.stats[_T0] = time.ticks_us() & _TICKS_MASK
        while cycles is None or self.cycles < cycles:
            self.pace()
            now = time.ticks_ms()
            if self.sample(now):
                self.pace()
                gc.collect()  # a message's garbage out of the way: in a tick of its own
                held = gc.mem_alloc()
                if self.mqtt.conn is None:
                    self.heap_live = max(self.heap_live, held)
                elif held > self.stats[_HEAPC]:
                    self.stats[_HEAPC] = held  # the connect code loaded: a peak of its own
                self.heap_min_free = min(self.heap_min_free, gc.mem_free())
                self.pace(_GC)
            self.flush()
            delivered = self.delivered
            self.mqtt.poll()
            if delivered != self.delivered:
                self.did |= _ACK
            self.housekeeping(now)
            if self.ota is not None:
                if not self.ota.step(now):
                    self.ota = None  # the job is over: its code leaves the heap
            elif self.ota_resume and self.cycles:
                self.ota_resume = False
                self.ota_in(None)  # what an update left on flash: resumed after the first message
            if self.console.poll():
                self.did |= _CONSOLE
        _lazy("commands").stop(self)
        return self.cycles
