"""Noise meter DSP cost on the MicroPython Unix port: real-time factor and heap per block.

    .venv/bin/python bench/noise.py [--seconds 20]

Real-time factor = processing seconds per second of 48 kHz audio (wall time of the single-threaded
VM on an idle machine). Heap per block is measured with the GC disabled across many blocks.
"""

import argparse
import json
import subprocess
import sys

from openpole.field import appbuild
from openpole.sim import node as simnode

SNIPPET = """
import gc, time, struct, json
from mics import MICS
from noise import NoiseMeter
SECONDS = %d
N = 4800  # 100 ms blocks, as the node reads I2S
m = NoiseMeter(MICS["inmp441"])
buf = bytearray(4 * N)
seed = 12345
for i in range(N):  # 70-ish dB noise: a 31-bit LCG, top bits as the sample
    seed = (seed * 1103515245 + 12345) & 0x7FFFFFFF
    struct.pack_into("<i", buf, 4 * i, (seed - 0x40000000) >> 9)
m.process(buf, N)
blocks = SECONDS * 10
k = 0
t0 = 0
dt = 0
before = 0
after = 0
gc.collect()
gc.disable()
before = gc.mem_alloc()
t0 = time.ticks_us()
while k < blocks:
    m.process(buf, N)
    k += 1
dt = time.ticks_diff(time.ticks_us(), t0)
after = gc.mem_alloc()
gc.enable()
print(json.dumps({"rtf": dt / 1e6 / SECONDS, "bytes_per_block": (after - before) / blocks, "blocks": blocks}))
"""

# ESP32 (240 MHz in-order Xtensa LX6) against this machine for native/viper code: about 50x
# (clock x instructions per cycle); DESIGN.md's field note measured about 190x for interpreted code.
SLOWDOWN_NATIVE = 50
SLOWDOWN_INTERPRETED = 190


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=int, default=20, help="seconds of audio to process")
    args = ap.parse_args()
    app = appbuild.build_app()
    r = subprocess.run([simnode.micropython(), "-X", "heapsize=256k", "-c", SNIPPET % args.seconds],
                       env=simnode.node_env(app), capture_output=True, text=True, check=True)
    res = json.loads(r.stdout.strip().splitlines()[-1])
    print(f"command: {' '.join(['python', 'bench/noise.py'] + sys.argv[1:])}")
    print(f"audio processed: {args.seconds} s at 48 kHz in {res['blocks']} blocks of 100 ms (MicroPython Unix port, viper, x64)")
    print(f"real-time factor: {res['rtf']:.5f} CPU s per s of audio (target <= 0.005)")
    print(f"heap allocated per block in steady state: {res['bytes_per_block']:.1f} bytes (target 0)")
    print(f"ESP32 estimate: {res['rtf'] * SLOWDOWN_NATIVE:.3f} at {SLOWDOWN_NATIVE}x slower for native code, "
          f"{res['rtf'] * SLOWDOWN_INTERPRETED:.3f} at the {SLOWDOWN_INTERPRETED}x measured for interpreted code: "
          "below 1 means real time on one core")


if __name__ == "__main__":
    main()
