"""Node figures on the MicroPython Unix port: heap, message size, CPU per sampling cycle.

    .venv/bin/python bench/node.py [--cycles 1000]

The whole node (BME280, PMS5003 and the noise meter on the simulated buses, MQTT to a real
Mosquitto, the serial console) runs --cycles sampling cycles at a 100 ms interval (the shortest
a node config takes).
- heap: first under -X heapsize=48k (the design target), then the smallest heap that completes,
  found by bisection, with the most heap the node held after a collection;
- bytes per message against the same readings as sensor.community JSON;
- CPU seconds per cycle (the noise DSP runs the whole time, at the audio rate).
"""

import argparse
import json
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "firmware" / "lib"))
from helpers import Collector  # noqa: E402

import cbor  # noqa: E402  firmware/lib, as the node encodes
import message  # noqa: E402
from openpole.edge_agent import decode  # noqa: E402
from openpole.sim import node as simnode  # noqa: E402
from openpole.sim.broker import Broker  # noqa: E402
from openpole.sim.world import WorldServer  # noqa: E402


def run(app, world, broker, cycles, heap, tmp, vm=None):
    state = Path(tempfile.mkdtemp(dir=tmp))
    cfg = simnode.node_config("bench-1", broker.host, broker.port, interval_s=0.1, cycles=cycles,
                              world=f"{world.host}:{world.port}", ack="broker")
    simnode.write_config(state, cfg)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    p = simnode.start(state, app, heap=f"{heap}k", vm=vm, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out, _ = p.communicate(timeout=600)
    wall = time.monotonic() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    m = re.search(r"done cycles=(\d+) published=(\d+) .* heap_live=(\d+)", out)
    if p.returncode != 0 or not m:
        err = [line for line in out.splitlines() if "Error" in line]
        return None, (err[-1] if err else out.strip().splitlines()[-1:])
    return {"cycles": int(m.group(1)), "published": int(m.group(2)), "heap_live": int(m.group(3)), "cpu": cpu, "wall": wall}, None


MODULES_SCRIPT = """
import gc, sys
gc.collect()
a = gc.mem_alloc()
import umqtt.simple
gc.collect()
b = gc.mem_alloc()
import app, hw.sim, drivers.bme280, drivers.pms5003, noise, mics
gc.collect()
print("MODULES", b - a, gc.mem_alloc() - b, len(sys.modules))
"""


def module_bytes(app):
    """Heap the node's modules take once imported from .mpy: (umqtt.simple, the app's own)."""
    r = subprocess.run([simnode.micropython(), "-X", "heapsize=512k", "-c", MODULES_SCRIPT], env=simnode.node_env(app),
                       capture_output=True, text=True, timeout=60)
    m = re.search(r"MODULES (\d+) (\d+)", r.stdout)
    return (int(m.group(1)), int(m.group(2))) if m else (None, None)


def romfs_image(app):
    """The compiled app (umqtt.simple included) as a ROMFS image (MicroPython >= 1.25, mpremote's writer)."""
    from mpremote.romfs import VfsRomWriter

    w = VfsRomWriter()

    def add(d):
        for p in sorted(d.iterdir()):
            if p.is_dir():
                w.opendir(p.name)
                add(p)
                w.closedir()
            elif p.suffix == ".mpy":
                w.mkfile(p.name, p.read_bytes())

    add(Path(app))
    return w.finalise()


ROMFS_SCRIPT = """
import gc, sys, vfs
f = open(sys.argv[1], 'rb')
img = f.read()
f.close()
vfs.mount(vfs.VfsRom(memoryview(img)), '/rom')
sys.path[:] = ['/rom', '/rom/lib']
gc.collect()
a = gc.mem_alloc()
import umqtt.simple, app, hw.sim, drivers.bme280, drivers.pms5003, noise, mics
gc.collect()
print("ROMFS", gc.mem_alloc() - a, len(img))
"""


def romfs_module_bytes(app, tmp):
    """Heap the same modules take imported from a ROMFS image: bytecode and constants stay in the
    image (memory-mapped flash on a board; here a bytes object, not counted): (heap, image bytes)."""
    img = Path(tmp) / "app.romfs"
    img.write_bytes(romfs_image(app))
    script = Path(tmp) / "romfs_modules.py"
    script.write_text(ROMFS_SCRIPT)
    r = subprocess.run([simnode.micropython(), "-X", "heapsize=512k", str(script), str(img)], capture_output=True, text=True,
                       timeout=60)
    m = re.search(r"ROMFS (\d+) (\d+)", r.stdout)
    return (int(m.group(1)), int(m.group(2))) if m else (None, r.stderr.strip()[-200:])


SC_NAMES = ("temperature", "humidity", "pressure", "pm1", "pm2_5", "pm10", "laeq", "lamin", "lamax")


def sensor_community_json(readings):
    """The same readings as sensor.community firmware sends them: one JSON body per sensor."""
    names = {"temperature": "BME280_temperature", "humidity": "BME280_humidity", "pressure": "BME280_pressure",
             "pm10": "PMS_P1", "pm2_5": "PMS_P2", "pm1": "PMS_P0", "laeq": "noise_LAeq", "lamin": "noise_LA_min",
             "lamax": "noise_LA_max"}
    groups = {}
    for r in readings:
        if r.name in names:
            v = r.value * 100 if r.name == "pressure" else r.value  # they send Pa
            groups.setdefault(names[r.name].split("_")[0], []).append({"value_type": names[r.name], "value": f"{v:.2f}"})
    return sum(len(json.dumps({"software_version": "NRZ-2024-135", "sensordatavalues": vals})) for vals in groups.values())


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cycles", type=int, default=1000, help="sampling cycles (>= 400: the PMS5003 warms up for 30 s)")
    args = ap.parse_args()
    print(f"command: python bench/node.py --cycles {args.cycles}")
    t0 = time.monotonic()
    app = simnode.build_app()
    with tempfile.TemporaryDirectory() as tmp:
        world = WorldServer()
        broker = Broker(Path(tmp) / "broker").start()
        sub = Collector(broker, "openpole/v1/bench-1/data")
        try:
            res, err = run(app, world, broker, args.cycles, 48, tmp)
            if res:
                print(f"heap: runs {res['cycles']} cycles under -X heapsize=48k; most held after a collection {res['heap_live']} bytes")
            else:
                print(f"heap: does NOT run under -X heapsize=48k (target): {err}")
                lo, hi = 48, 192  # lo fails, hi must work
                while hi - lo > 4:
                    mid = (lo + hi) // 2 // 4 * 4
                    # every cycle: the PMS5003 reads after 30 s and the diag goes out every 60 s
                    r, _ = run(app, world, broker, args.cycles, mid, tmp)
                    if r:
                        hi = mid
                    else:
                        lo = mid
                res, err = run(app, world, broker, args.cycles, hi, tmp)
                if not res:
                    print(f"heap: failed at {hi}k too: {err}")
                    return 1
                print(f"heap: smallest heap that runs {res['cycles']} cycles: {hi}k (4k steps); "
                      f"most held after a collection {res['heap_live']} bytes")
            umqtt_b, app_b = module_bytes(app)
            if app_b:
                print(f"heap: of what the node holds, its modules loaded from .mpy take {app_b} bytes (umqtt.simple "
                      f"{umqtt_b} more); the rest, {res['heap_live'] - app_b - umqtt_b} bytes, is the node's data")
            rom_b, img_b = romfs_module_bytes(app, tmp)
            if rom_b is not None:
                print(f"heap: the same modules imported from a ROMFS image ({img_b} bytes, flash on a board) take "
                      f"{rom_b} bytes instead of {app_b + umqtt_b}: functions, dicts and interned names stay in RAM")
            else:
                print(f"heap: ROMFS figure failed: {img_b}")
            print("heap: this is the x64 Unix port: 8-byte pointers and 32-byte heap blocks; an ESP32 has 4 and 16")
            print(f"cpu: {res['cpu'] / res['cycles'] * 1000:.2f} ms per sampling cycle "
                  f"({res['cpu'] / res['wall'] * 100:.1f} % of one core; noise DSP at 48 kHz included)")
            msgs = sub.wait_for(lambda m: len(m) >= res["published"], timeout=10)
        finally:
            sub.close()
            broker.stop()
            world.close()
    full = [(len(p), decode.decode(p)) for _, p, _ in msgs]
    full = [(n, m) for n, m in full if {r.name for r in m.readings} >= {"temperature", "pm2_5", "laeq"}]
    if not full:
        print("message size: no message carried all three sensors (PMS5003 still warming?)")
        return 0
    print(f"(bench took {time.monotonic() - t0:.0f} s)")
    n, m = full[-1]
    sc = sensor_community_json(m.readings)
    same = [r for r in m.readings if r.name in SC_NAMES]
    ours_same = len(message.encode(m.node, m.boot, m.seq, [(same[0].age_ms, message.encode_values({r.name: r.value for r in same}))],
                                   cbor.dumps(m.status)))
    print(f"message: {n} bytes for all {len(m.readings)} readings (BME280, PMS5003, noise) as node message v1 CBOR")
    print(f"the same {len(same)} readings sensor.community has names for: ours {ours_same} bytes, "
          f"sensor.community JSON {sc} bytes: {ours_same / sc * 100:.0f} % (target <= 50 %)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
