# Node message v1 (sensor_specs/node_message.cddl), encoded with the node's CBOR item heads.
# Samples are queued pre-encoded (lib/outbox.py); each sample's age is computed at send time, so a
# replayed message still dates its samples: sample time = receive time - age at the pole.
# The items a node message holds are few (unsigned integers, the node id, the readings' numbers,
# the status map), so they are written here with cbor.head(): the general encoder (cbor.dumps)
# is not in a running node's heap.
import struct
import time

from cbor import half_bits, head
from outbox import record_fields
from registry import DIGITS, KEYS

FLAG_AGE_LOWER_BOUND = 1  # sampled before a reset: the ages leave out how long the node was down


def _number(out, v):
    """A reading: an integer as one; a float as a half float when that is exact, else a single
    (5 bytes: every registry quantity's range and resolution fit its 7 digits; receivers round
    back to the resolution). NaN and infinities as half floats, as cbor.dumps writes them."""
    if isinstance(v, int):
        if v >= 0:
            head(out, 0, v)
        else:
            head(out, 1, -1 - v)
        return
    h = (0x7E00 if v != v else 0x7C00 if v > 0 else 0xFC00) if v - v != 0.0 else half_bits(v)
    if h is None:
        out.append(0xFA)
        out.extend(struct.pack(">f", v))
    else:
        out.append(0xF9)
        out.extend(struct.pack(">H", h))


def encode_values(readings):
    """{quantity name: value} -> CBOR map {key: value}, each value rounded to the registry
    resolution: integers as integers, the rest as _number() writes floats."""
    out = bytearray()
    n = 0
    for name, value in readings.items():
        key = KEYS.get(name)
        if key is None or value is None:
            continue
        head(out, 0, key)
        d = DIGITS[key]
        _number(out, int(round(value)) if d == 0 else round(value, d))
        n += 1
    first = bytearray()
    head(first, 5, n)
    return bytes(first + out)


def encode_status(sensors):
    """The status map {sensor name: [state, errors(, lost audio blocks)]} for sensors (sensors.py):
    the noise meter adds its lost blocks once there are some."""
    out = bytearray()
    head(out, 5, len(sensors))
    for s in sensors:
        head(out, 3, len(s.name))  # sensor names are ASCII: characters are bytes
        out.extend(s.name.encode())
        lost = s.driver.lost if s.name == "noise" and s.driver is not None else 0
        head(out, 4, 3 if lost else 2)
        head(out, 0, s.state)
        head(out, 0, s.errors)
        if lost:
            head(out, 0, lost)
    return bytes(out)


def encode(node_id, boot, seq, samples, status, flags=0):
    """samples: [(age_ms, values CBOR)]; status: CBOR bytes -> bytes of the node message."""
    out = bytearray()
    out.append(0xA7 if flags else 0xA6)  # v, node, boot, seq, samples, status (+ flags)
    out.extend(b"\x00\x01\x01")
    head(out, 3, len(node_id))  # node ids are ASCII (config.py checks): characters are bytes
    out.extend(node_id.encode())
    out.append(0x02)
    head(out, 0, boot)
    out.append(0x03)
    head(out, 0, seq)
    out.append(0x04)
    head(out, 4, len(samples))
    for age, values in samples:
        out.append(0x82)
        head(out, 0, age if age > 0 else 0)
        out.extend(values)
    out.append(0x05)
    out.extend(status)
    if flags:
        out.append(0x07)
        head(out, 0, flags)
    return bytes(out)


def encode_record(node_id, buf, off, now, boot_now, uptime_ms):
    """The message for an outbox record, with ages as of now (ticks_ms)."""
    boot, seq, ticks, spilled, n, p = record_fields(buf, off)
    if boot == boot_now:
        age, flags = time.ticks_diff(now, ticks), 0
    else:  # from before a reset: known age at the spill, plus this boot's uptime
        age, flags = time.ticks_diff(spilled, ticks) + uptime_ms, FLAG_AGE_LOWER_BOUND
    samples = []
    for _ in range(n):
        ln = buf[p]
        samples.append((age, bytes(buf[p + 1 : p + 1 + ln])))
        p += 1 + ln
    ln = buf[p]
    return encode(node_id, boot, seq, samples, bytes(buf[p + 1 : p + 1 + ln]), flags)


def _uint(b, i):
    """The CBOR unsigned integer at b[i]: (value, next index)."""
    info = b[i] & 31
    if b[i] >> 5 or info > 27:
        raise ValueError("ack: not an unsigned integer")
    if info < 24:
        return info, i + 1
    n = 1 << (info - 24)
    v = 0
    for k in range(i + 1, i + 1 + n):
        v = (v << 8) | b[k]
    return v, i + 1 + n


def decode_ack(b):
    """The pole's ack (sensor_specs/node_ack.cddl), CBOR [[boot, first seq, last seq], ...], read by
    hand: the node carries no general CBOR decoder. A list of (boot, first, last); ValueError."""
    try:
        n, i = b[0] & 31, 1
        if b[0] >> 5 != 4 or n > 24:
            raise ValueError("ack: not an array")
        if n == 24:
            n, i = b[1], 2
        out = []
        for _ in range(n):
            if b[i] != 0x83:
                raise ValueError("ack: each run is [boot, first, last]")
            boot, i = _uint(b, i + 1)
            first, i = _uint(b, i)
            last, i = _uint(b, i)
            out.append((boot, first, last))
        if i != len(b):
            raise ValueError("ack: trailing bytes")
        return out
    except IndexError:
        raise ValueError("ack: truncated")
