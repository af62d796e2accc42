# The node: sample the sensors on their intervals, queue node messages in the outbox, publish them
# at QoS 1, answer the console and the command topic, publish diagnostics. One tick scheduler,
# paced by the microphone's 10 ms I2S reads (or a 10 ms sleep without one): no step blocks longer.
# A message leaves the outbox when the pole's agent says it is on the pole's disk (the ack topic),
# not on the broker's PUBACK: a broker keeps its store in RAM between autosaves.
import binascii
import gc
import json
import os
import time

import cbor
import message
from app import lazy as _lazy
from outbox import record_fields
from sensors import DEGRADED, STATE_NAMES

VERSION = "0.2.0"
LOG_LINES = 12


class Node:
    """Made by bringup.node() at boot: its fields are set there."""

    def log(self, line):
        print(line)
        self.lines.append(line)
        if len(self.lines) > LOG_LINES:
            self.lines.pop(0)

    def uptime_ms(self):
        return time.ticks_diff(time.ticks_ms(), self.t0)

    def sample(self, now):
        """Read every sensor that is due, take in readings on their way (PMS5003); queue one
        message with the samples once none is pending."""
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
            pending = pending or s.pending
            if values is not None:
                samples.append(message.encode_values(values))
                if self.watch:
                    print("reading %s %s" % (s.name, json.dumps(values)))
            elif s.state >= DEGRADED and was < DEGRADED:
                self.log("sensor %s: %s (%s)" % (s.name, STATE_NAMES[s.state], s.last_error))
                self.diag_due = now  # tell the pole now, not at the next diag interval
        if not samples or pending:
            return False
        self.outbox.put(self.boot, self.seq, now, samples, cbor.dumps(self.status()))
        self.samples = []
        self.seq += 1
        self.cycles += 1
        return True

    def status(self):
        """{sensor: [state, errors]} for the message; the noise meter adds its lost audio blocks."""
        out = {}
        for s in self.sensors:
            out[s.name] = [s.state, s.errors]
            if s.name == "noise" and s.driver is not None and s.driver.lost:
                out[s.name].append(s.driver.lost)
        return out

    def _online(self):
        self.mqtt.publish(self.status_topic, b"online", qos=0, retain=True)
        self._rewind()  # what was in flight on the old connection may be lost: send it again

    def _on_message(self, topic, payload):
        if topic.endswith(b"/ack"):
            self._pole_acked(payload)
        elif len(self.commands) < 8:  # a burst from one read; more waits for the sender to ask again
            self.commands.append(payload)

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

    def flush(self, budget=8, max_ms=50):
        """Send queued messages oldest first, a few per tick (at most max_ms of the loop's time),
        never waiting for an ack: up to the transport's window are in flight. A node on a Pi's USB
        ("uplink": "serial") prints each as an OPMSG line, which has no acknowledgement."""
        serial = self.cfg["uplink"] == "serial"
        if not len(self.outbox) or not serial and (not self.hw.network_up() or not self.mqtt.ensure(self._online)):
            return
        now = time.ticks_ms()
        if self.inflight and time.ticks_diff(now, self.ack_wait) > self.ack_timeout_ms:
            self._rewind()
        for _ in range(budget):
            if time.ticks_diff(time.ticks_ms(), now) > max_ms:
                return
            rec = self.outbox.peek() if serial else self.outbox.nth(self.inflight)
            if rec is None or not serial and not self.mqtt.can_publish():
                return
            payload = message.encode_record(self.node_id, rec[0], rec[1], time.ticks_ms(), self.boot, self.uptime_ms())
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

    def drain(self):
        """Before a planned stop (the simulator's --cycles): send and take in acks for a while."""
        max_ms = max(10000, self.ack_timeout_ms + 5000)  # time for one re-send
        t0 = time.ticks_ms()
        while len(self.outbox) and time.ticks_diff(time.ticks_ms(), t0) < max_ms:
            self.flush()
            self.mqtt.poll()
            if not self.mqtt.connected and self.mqtt.errors:
                return
            time.sleep_ms(5)

    def reset(self):
        """A deliberate reset: the outbox goes to flash first, so nothing queued is lost."""
        self.outbox.save()
        self.hw.reset()

    def selftest(self):
        """Each sensor present and plausible: {name: "ok" or the problem}."""
        return _lazy("commands").selftest(self)

    def command(self, raw):
        """A command from the MQTT command topic: JSON {"cmd": ..., "value": ...}."""
        _lazy("commands").command(self, raw)

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
                self.command(self.commands.pop(0))
            if time.ticks_diff(now, self.diag_due) >= 0 and self.mqtt.connected:
                self.diag_due = time.ticks_add(now, int(self.cfg["diag_interval_s"] * 1000))
                _lazy("diag").publish(self)
        except MemoryError:
            self.short_of_heap += 1

    def run(self, cycles=None):
        self.console.prompt()
        while cycles is None or self.cycles < cycles:
            self.hw.feed()
            if self.noise is not None:
                self.noise.block()  # the pace: 10 ms of audio
            else:
                time.sleep_ms(10)
            now = time.ticks_ms()
            if self.sample(now):
                gc.collect()
                self.heap_live = max(self.heap_live, gc.mem_alloc())
                self.heap_min_free = min(self.heap_min_free, gc.mem_free())
            self.flush()
            self.mqtt.poll()
            self.housekeeping(now)
            self.console.poll()
            work = time.ticks_diff(time.ticks_ms(), now)
            if work > self.tick_max_ms:
                self.tick_max_ms = work  # the loop's longest time away from the audio
        self.drain()
        self.mqtt.publish(self.status_topic, b"offline", qos=0, retain=True)
        self.mqtt.close()
        return self.cycles
