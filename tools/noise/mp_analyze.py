# Runs under the MicroPython Unix port: the firmware's noise meter over raw samples.
# argv: RAW_FILE MIC INTERVAL_SAMPLES (0: whole file). RAW_FILE holds little-endian 32-bit I2S
# words (mono, left-aligned). Prints one JSON report per interval, then {"done": samples}.
import json
import sys

from mics import MICS
from noise import NoiseMeter

BLOCK = 4800  # 100 ms per read

path, mic, interval = sys.argv[1], sys.argv[2], int(sys.argv[3])
meter = NoiseMeter(MICS[mic])
buf = bytearray(BLOCK * 4)
mv = memoryview(buf)
done = 0
in_interval = 0
with open(path, "rb") as f:
    while True:
        want = BLOCK if not interval else min(BLOCK, interval - in_interval)
        got = f.readinto(mv[: want * 4]) or 0
        n = got // 4
        if n == 0:
            break
        meter.process(buf, n)
        done += n
        in_interval += n
        if interval and in_interval == interval:
            r = meter.report(3)
            r["start_s"] = (done - in_interval) / 48000
            print(json.dumps(r))
            in_interval = 0
if in_interval or not interval:
    r = meter.report(3)
    r["start_s"] = (done - in_interval) / 48000
    print(json.dumps(r))
print(json.dumps({"done": done}))
