"""Node figures on MicroPython's Unix port: heap (x64 and, given a build, 32-bit), short-of-heap
runs at 56k, lost audio, the worst loop tick and what it was doing, message size, CPU per cycle.

    .venv/bin/python bench/node.py [--cycles 1000] [--micropython VM32] [--frozen-micropython VM32F]
                                   [--runs 20 --jobs 4] [--perf-bench DIR]

The whole node (BME280, PMS5003 and the noise meter on the simulated buses, MQTT to a real
Mosquitto, the console) runs --cycles sampling cycles at a 100 ms interval (the shortest a node
config takes), every sensor due; the diag goes out at boot and every 60 s.
- heap: runs under -X heapsize=56k (an ESP32's starting heap) or not, and the smallest heap that
  runs, in 4k steps, with the most the node held after a collection (target 44 KB); the app in the
  node's filesystem, laid out as on a board (the state directory is the VM's root). On the 32-bit
  VM also --runs runs at 56k (--jobs at once) through boot, console lines typed at boot, diag
  reports, a 20 s broker outage (spill, reconnect, replay): how many had any short-of-heap line
  (target 0 of 20) and the most any held. An ESP32 is 32-bit: its figures come from a 32-bit build
  (--micropython, from ../shared/tools/build-micropython-32bit or MicroPython's ports/unix built
  with -m32); the x64 VM's objects are about twice the size. --frozen-micropython: a VM with
  bench/node_manifest.py frozen in, what a custom firmware carrying the app would give.
- the worst tick: the longest of the loop's ticks (the node's work between two 10 ms audio reads,
  the simulated buses' round trips left out), what it did (commands.KINDS), and an ESP32 estimate:
  that time times how much slower an ESP32 at 160 MHz runs the same bytecode (ESP32_FACTOR, or
  measured now with --perf-bench, a MicroPython checkout's tests/perf_bench, against the ESP32
  scores published in micropython/micropython#7850). Timed on the 32-bit VM when given, at
  real-time priority when the machine allows it (other processes then cannot stretch a tick).
- lost audio: 10 ms blocks the simulated I2S DMA (an ESP32's 52 ms) overwrote unread (target 0).
- bytes per message against the same readings as sensor.community JSON; CPU seconds per cycle.
"""

import argparse
import concurrent.futures
import json
import math
import os
import re
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "firmware" / "lib"))
from helpers import Collector  # noqa: E402

import cbor  # noqa: E402  firmware/lib, as the node encodes
import message  # noqa: E402
from openpole.wire import node_message  # noqa: E402
from openpole.field import appbuild  # noqa: E402
from openpole.sim import node as simnode  # noqa: E402
from openpole.sim.broker import Broker  # noqa: E402
from openpole.sim.world import WorldServer  # noqa: E402

ESP32_TARGET_KB = 56  # MICROPY_GC_INITIAL_HEAP_SIZE on an ESP32 without PSRAM (v1.28)
LIVE_TARGET = 44 * 1024
TICK_TARGET_MS = 40  # the ESP32's I2S DMA holds 52 ms: a tick's work must stay well under it
OLD_SLOWDOWN = 190  # the factor DESIGN.md had (not measured against the same bytecode)
# MicroPython's perf_bench scores (N=100 M=100, higher is faster) on an ESP32 at 160 MHz (the IDF
# default, which the stock ESP32_GENERIC firmware keeps) with the optimisations stock firmware has
# had since v1.18 (VM in IRAM, -O2): dpgeorge in micropython/micropython#7850, "esp32-perf" column.
ESP32_SCORES = {"bm_chaos": 244.00, "bm_fannkuch": 71.63, "bm_fft": 2467.62, "bm_float": 3467.35, "bm_hexiom": 31.12,
                "bm_nqueens": 2232.22, "bm_pidigits": 591.97, "misc_aes": 334.52, "misc_mandel": 1966.91}
# How much slower that ESP32 runs the same bytecode than this machine's VMs: the geometric mean over
# ESP32_SCORES of (score here / score there), measured at real-time priority, best of 10 runs each,
# with --perf-bench (see the README's Benchmarks). By the VM's architecture.
ESP32_FACTOR = {"x86": 65, "x64": 87}


# Typed at the node's console as it boots: the console and its commands are loaded once in each run.
CONSOLE_INPUT = "help\nstatus\nsensors\ndiag\n"


def install(app, state):
    """Put the app in the node's own filesystem, as a flashed board has it (simnode.start then makes
    it the VM's root): module paths, interned for good, are "/lib/noise.mpy", a board's."""
    if app is not None:
        simnode.install(app, state)


def _realtime():
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
    except (AttributeError, OSError):
        pass


def realtime_ok():
    """Can this machine run a process at real-time priority (root, or CAP_SYS_NICE)?"""
    code = "import os; os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))"
    return subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0


DONE = re.compile(r"done cycles=(\d+) published=(\d+) delivered=(\d+) queued=(\d+) dropped=(\d+) spilled=(\d+) "
                  r"heap_live=(\d+) tick_max_ms=(\d+) audio_lost=(\d+) short_of_heap=(\d+) tick_us=(\d+) "
                  r"tick_what=(\S+) tick_kinds=(\S+) heap_connect=(\d+)")
SHORT = re.compile(r"not enough heap|MemoryError")


def run(app, world, broker, cycles, heap, tmp, vm=None, node_id="bench-1", console=CONSOLE_INPUT, rt=False,
        broker_down=None):
    """One node run; (figures, None) or (None, what went wrong). A run with any short-of-heap line
    (a report, command or console line skipped, or a MemoryError) is a failure: figures["short"].
    broker_down: (after_s, for_s), a broker outage mid-run (the broker is stopped, and a new one
    started on its port)."""
    state = Path(tempfile.mkdtemp(dir=tmp))
    cfg = simnode.node_config(node_id, broker.host, broker.port, interval_s=0.1, cycles=cycles,
                              world=f"{world.host}:{world.port}", ack="broker")
    simnode.write_config(state, cfg)
    install(app, state)
    again, trouble = [], []
    outage = None
    if broker_down:
        def down():
            time.sleep(broker_down[0])
            broker.stop()
            time.sleep(broker_down[1])
            try:
                again.append(Broker(Path(tmp) / f"{node_id}-broker-2", port=broker.port).start())
            except Exception as e:  # the bench's own trouble (the port taken meanwhile), not the node's
                trouble.append(f"the broker did not come back on port {broker.port}: {e}")

        outage = threading.Thread(target=down, daemon=True)
        outage.start()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    try:
        p = simnode.start(state, None, heap=f"{heap}k", vm=vm, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, preexec_fn=_realtime if rt else None)
        out, _ = p.communicate(console, timeout=1200)
    finally:
        if outage is not None:
            outage.join()
        for b in again:
            b.stop()
    wall = time.monotonic() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    m = DONE.search(out)
    short = SHORT.findall(out)
    if p.returncode != 0 or not m:
        err = [line for line in out.splitlines() if "Error" in line]
        return None, {"short": len(short), "error": (err[-1] if err else out.strip().splitlines()[-1:])}
    g = m.groups()
    names = re.search(r"n_qstr=(\d+)", out)
    res = {"cycles": int(g[0]), "published": int(g[1]), "delivered": int(g[2]), "queued": int(g[3]),
           "dropped": int(g[4]), "spilled": int(g[5]), "heap_live": int(g[6]), "tick_max_ms": int(g[7]),
           "audio_lost": int(g[8]), "short": int(g[9]) + len(short), "tick_us": int(g[10]), "tick_what": g[11],
           "tick_kinds": {k: int(v) for k, v in (kv.split(":") for kv in g[12].split(","))},
           "heap_connect": int(g[13]),
           "names": int(names.group(1)) if names else 0,
           "cpu": cpu, "wall": wall, "out": out}
    if res["short"]:
        return None, {"short": res["short"], "heap_live": res["heap_live"],
                      "error": f"{res['short']} report(s), command(s), console line(s) or connect attempt(s) short of heap"}
    if trouble:
        return None, {"short": 0, "error": trouble[0]}
    return res, None


OUTAGE_CYCLES = 1000  # 100 s at 100 ms: diag reports at boot and at 60 s, the outage from 15 s to 35 s


def stress_line(label, app, world, vm, tmp, runs, jobs, cycles=OUTAGE_CYCLES, down_after_s=15, down_s=20):
    """`runs` node runs at the ESP32's 56 KB, `jobs` at once, each through boot, the console lines
    typed at boot, diag reports (at boot and every 60 s) and a broker outage: the broker stops
    mid-run and a new one starts on its port down_s later, so the node spills to flash, reconnects
    (its connect code loaded again) and replays. Long enough for a reconnect after the longest
    backoff a 20 s outage builds (32 s, jittered). Prints how many runs had any short-of-heap line."""
    def one(i):
        broker = Broker(Path(tmp) / f"stress-{i}").start()
        try:
            return run(app, world, broker, cycles, ESP32_TARGET_KB, tmp, vm, f"bench-s{i}", broker_down=(down_after_s, down_s))
        finally:
            broker.stop()

    with concurrent.futures.ThreadPoolExecutor(max(1, jobs)) as pool:
        results = list(pool.map(one, range(runs)))
    ok = [r for r, _ in results if r]
    short = [e for r, e in results if e and e.get("short")]
    failed = [e for r, e in results if e and not e.get("short")]
    live = max([r["heap_live"] for r in ok] + [e.get("heap_live", 0) for e in short] or [0])
    connect = max([r["heap_connect"] for r in ok] or [0])
    print(f"heap, {label}, {runs} runs at -X heapsize={ESP32_TARGET_KB}k ({jobs} at once) through boot, console lines, "
          f"diag reports and a {down_s} s broker outage (spill, reconnect, replay): {len(short)} of {runs} had a "
          f"short-of-heap line (target 0), {len(failed)} failed otherwise; most held after a collection {live} bytes "
          f"({'within' if live <= LIVE_TARGET else 'over'} the {LIVE_TARGET} B target), {connect} while its connect "
          f"code was loaded (a connect attempt)")
    if ok:
        spilled = min(r["spilled"] for r in ok)
        short_of = [(r["delivered"], r["queued"], r["dropped"]) for r in ok
                    if r["delivered"] != r["cycles"] or r["queued"] or r["dropped"]]
        print(f"heap, {label}: every complete run delivered all its {cycles} messages: "
              f"{'yes' if not short_of else 'no: (delivered, queued, dropped) ' + str(short_of)}; "
              f"at least {spilled} messages spilled to flash and replayed in each; the most interned names "
              f"{max(r['names'] for r in ok)} (the 6th pool holds 620: crossing it costs 4.5 KB)")
    for r in [r for r in ok if r["delivered"] != r["cycles"]][:2]:
        print(f"heap, {label}: a run that did not deliver all, its last lines: {r['out'].strip().splitlines()[-8:]}")
    for e in (short + failed)[:3]:
        print(f"heap, {label}: a failing run: {e['error']}")


def tick_line(label, runs, factor, how):
    """The worst tick of `runs` (the same run repeated), what it did, and the ESP32 estimate. Each
    kind's worst is the least of its worsts in the runs: a hiccup of this machine (a page fault,
    the other core's load) lands in one run, the node's own longest work in every one."""
    kinds = {k: min(r["tick_kinds"][k] for r in runs) for k in runs[0]["tick_kinds"]}
    worst = max(kinds.values())
    what = "+".join(k for k, v in kinds.items() if v == worst)
    est = worst * factor / 1000
    raw = ", ".join(f"{r['tick_us']} us ({r['tick_what']})" for r in runs)
    print(f"worst tick, {label}: {worst} us of the node's work here ({what}; the worst of each run: {raw}); an ESP32 "
          f"at 160 MHz runs the same bytecode about {factor:.0f}x slower ({how}): about {est:.1f} ms "
          f"({'under' if est < TICK_TARGET_MS else 'OVER'} the {TICK_TARGET_MS} ms target, the DMA holds 52 ms; with the "
          f"old x{OLD_SLOWDOWN}, {worst * OLD_SLOWDOWN / 1000:.0f} ms)")
    listed = ", ".join(f"{k} {v} ({v * factor / 1000:.0f} ms)" for k, v in sorted(kinds.items(), key=lambda kv: -kv[1]) if v)
    print(f"worst tick, {label}, by what the tick did (us here, ms on an ESP32): {listed}; a board's I2C transfers "
          f"come on top (a BME280 reading: about 1.4 ms at 100 kHz)")


PERF_SCRIPT = b"import sys\nsys.path.remove('')\n\n"


def calibrate(vm, perf_bench, rt, repeats=10):
    """How much slower an ESP32 at 160 MHz runs MicroPython's perf_bench programs than `vm` here:
    the geometric mean of (score here / ESP32_SCORES), the best of `repeats` runs each."""
    d = Path(perf_bench)
    ratios = {}
    for name, esp in ESP32_SCORES.items():
        script = PERF_SCRIPT + (d / f"{name}.py").read_bytes() + (d / "benchrun.py").read_bytes() + b"bm_run(100, 100)\n"
        best = 0
        for _ in range(repeats):
            out = subprocess.run([vm], input=script, capture_output=True, timeout=300,
                                 preexec_fn=_realtime if rt else None).stdout.split()
            best = max(best, 1e6 * int(out[1]) / int(out[0]))
        ratios[name] = best / esp
    factor = math.exp(sum(math.log(r) for r in ratios.values()) / len(ratios))
    print(f"calibration: {Path(vm).name} ({simnode.vm_arch(vm)}) runs perf_bench (N=100 M=100) "
          f"{', '.join(f'{k} {v:.0f}x' for k, v in ratios.items())} faster than an ESP32 at 160 MHz "
          f"(micropython/micropython#7850): geometric mean {factor:.1f}x")
    return factor


def smallest_heap(app, world, broker, cycles, tmp, vm, jobs, lo=32, hi=160):
    """The smallest heap (4k steps) that runs the node, and that run: a search that tries `jobs`
    sizes at once (a node mostly waits for audio) and narrows to the gap between the largest
    failing and the smallest working size. lo is taken to fail; hi is tried first."""
    runs = {}

    def trial(sizes):
        with concurrent.futures.ThreadPoolExecutor(max(1, len(sizes))) as pool:
            for k, r in zip(sizes, pool.map(lambda k: run(app, world, broker, cycles, k, tmp, vm, f"bench-h{k}"), sizes)):
                runs[k] = r

    trial([hi])
    if runs[hi][0] is None:
        return None, runs[hi][1]
    while hi - lo > 4:
        step = max(4, (hi - lo) // (jobs + 1) // 4 * 4)
        sizes = [k for k in range(lo + step, hi, step)][:jobs]
        trial(sizes)
        ok = [k for k in sizes if runs[k][0]]
        bad = [k for k in sizes if not runs[k][0]]
        hi = min(ok + [hi])
        lo = max([k for k in bad if k < hi] + [lo])
    return hi, runs[hi][0]


MODULES_SCRIPT = """
import gc, sys
gc.collect()
a = gc.mem_alloc()
import app, node, console, transport, outbox, hw.sim, drivers.bme280, drivers.pms5003, noise
gc.collect()
print("MODULES", gc.mem_alloc() - a, len(sys.modules))
"""


def module_bytes(app, vm=None):
    """Heap the modules a running node holds take once imported (from .mpy, or frozen when app is
    None), laid out as on a board; the boot, config, diag and console-command modules come and go."""
    with tempfile.TemporaryDirectory() as fs:
        install(app, Path(fs))
        (Path(fs) / "main.py").write_text(MODULES_SCRIPT)
        r = subprocess.run([simnode.micropython(vm), "-X", "heapsize=512k", "-c", simnode._board_boot(fs)], cwd=fs,
                           env=simnode.board_env(), capture_output=True, text=True, timeout=60)
    m = re.search(r"MODULES (\d+)", r.stdout)
    return int(m.group(1)) if m else None


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


def heap_lines(label, vm, app, world, broker, args, tmp):
    """Print a VM's heap figures; returns the run at the smallest heap (or None)."""
    target, why = run(app, world, broker, args.cycles, ESP32_TARGET_KB, tmp, vm, "bench-t")
    small, res = smallest_heap(app, world, broker, args.cycles, tmp, vm, args.jobs)
    if small is None:
        print(f"heap, {label}: does not run {args.cycles} cycles in up to 160k: {res['error']}")
        return None
    mods = module_bytes(app, vm)
    verdict = "runs" if target else "does NOT run"
    print(f"heap, {label}: {verdict} {args.cycles} cycles under -X heapsize={ESP32_TARGET_KB}k (target); smallest heap "
          f"that runs them {small}k; most held after a collection {res['heap_live']} bytes "
          f"({'within' if res['heap_live'] <= LIVE_TARGET else 'over'} the {LIVE_TARGET} B target; "
          f"{res['heap_connect']} while connecting); {res['names']} interned names")
    if not target:
        print(f"heap, {label}: at {ESP32_TARGET_KB}k: {why['error']}")
    if mods:
        print(f"heap, {label}: of that, the modules take {mods} bytes, the node's data and buffers {res['heap_live'] - mods}")
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cycles", type=int, default=1000, help="sampling cycles (>= 600: the diag goes out at 60 s)")
    ap.add_argument("--micropython", metavar="VM32", help="a 32-bit MicroPython Unix port: the ESP32-sized figures")
    ap.add_argument("--frozen-micropython", metavar="VM32F", help="a 32-bit build with bench/node_manifest.py frozen in")
    ap.add_argument("--jobs", type=int, default=4, help="heap runs at once (default 4)")
    ap.add_argument("--runs", type=int, default=1, help="runs at 56k through an outage, on the 32-bit VM (default 1)")
    ap.add_argument("--perf-bench", metavar="DIR", help="MicroPython's tests/perf_bench: measure the ESP32 factor now")
    ap.add_argument("--tick-runs", type=int, default=3, help="timed runs on the 32-bit VM (default 3)")
    ap.add_argument("--no-x64", action="store_true", help="leave out the x64 VM's figures")
    args = ap.parse_args()
    cmd = "python bench/node.py --cycles %d" % args.cycles
    cmd += f" --micropython {args.micropython}" if args.micropython else ""
    cmd += f" --frozen-micropython {args.frozen_micropython}" if args.frozen_micropython else ""
    cmd += f" --runs {args.runs} --jobs {args.jobs}" if args.runs != 1 or args.jobs != 4 else ""
    cmd += f" --perf-bench {args.perf_bench}" if args.perf_bench else ""
    cmd += f" --tick-runs {args.tick_runs}" if args.tick_runs != 3 else ""
    cmd += " --no-x64" if args.no_x64 else ""
    print(f"command: {cmd}")
    rt = realtime_ok()
    how_rt = "at real-time priority" if rt else "NOT at real-time priority (other processes may stretch a tick)"
    t0 = time.monotonic()
    msgs, res = [], None
    with tempfile.TemporaryDirectory() as tmp:
        world = WorldServer()
        broker = Broker(Path(tmp) / "broker").start()
        sub = Collector(broker, "openpole/v1/bench-1/data")
        try:
            if args.micropython:
                vm = simnode.micropython(args.micropython)
                arch = simnode.vm_arch(vm)
                app32 = appbuild.build_app(Path(tmp) / "app32", arch=arch)
                label = f"32-bit ({arch}, app as .mpy in the filesystem)"
                heap_lines(label, vm, app32, world, broker, args, tmp)
                stress_line(label, app32, world, vm, tmp, args.runs, args.jobs)
                # The worst tick: a run alone, through diag reports and a broker outage (reconnect,
                # replay), no console lines (a technician's, timed apart below).
                factor, how = ESP32_FACTOR[arch], "ESP32_FACTOR, measured with --perf-bench"
                if args.perf_bench:
                    factor, how = calibrate(vm, args.perf_bench, rt), "measured now"
                truns = []
                for i in range(args.tick_runs):
                    tbroker = Broker(Path(tmp) / f"tick-broker-{i}").start()
                    try:
                        tres, terr = run(app32, world, tbroker, OUTAGE_CYCLES, ESP32_TARGET_KB, tmp, vm, f"bench-tick{i}",
                                         console="", rt=rt, broker_down=(15, 20))
                    finally:
                        tbroker.stop()
                    if tres is None:
                        print(f"worst tick, {label}: a run failed: {terr['error']}")
                    else:
                        truns.append(tres)
                if truns:
                    tick_line(f"{label}, {how_rt}, {len(truns)} runs, every sensor due, diag reports, a 20 s outage",
                              truns, factor, how)
                    cres, _ = run(app32, world, broker, 300, ESP32_TARGET_KB, tmp, vm, "bench-con", rt=rt)
                    if cres:
                        print(f"worst tick, {label}, with the console lines typed at boot ({CONSOLE_INPUT.split()}): "
                              f"{cres['tick_us']} us ({cres['tick_what']}), about "
                              f"{cres['tick_us'] * factor / 1000:.1f} ms on an ESP32 (a UART console's own "
                              f"115200 baud come on top: 11 characters a ms)")
            if args.frozen_micropython:
                heap_lines("32-bit, app frozen into the VM (a custom firmware)", args.frozen_micropython, None, world,
                           broker, args, tmp)
            if not args.no_x64:
                app = appbuild.build_app()
                heap_lines("x64 (the venv's VM; objects about twice an ESP32's)", None, app, world, broker, args, tmp)
                # The timing figures from a run alone on the machine: a loaded machine is a late loop.
                res, err = run(app, world, broker, args.cycles, 256, tmp, rt=rt)
                if res is None:
                    print(f"run failed: {err['error']}")
                    return 1
                lost_world = world.world("bench-1").mic.lost / 480
                print(f"audio: {res['audio_lost']} blocks of 10 ms lost by the node's count, {lost_world:.0f} by the "
                      f"simulated DMA's (target 0), over {res['cycles']} cycles with every sensor due ({how_rt})")
                tick_line(f"x64, {how_rt}, console lines at boot", [res], ESP32_FACTOR["x64"], "ESP32_FACTOR")
                print(f"cpu: {res['cpu'] / res['cycles'] * 1000:.2f} ms per sampling cycle "
                      f"({res['cpu'] / res['wall'] * 100:.1f} % of one core; noise DSP at 48 kHz included)")
                msgs = sub.wait_for(lambda m: len(m) >= res["published"], timeout=10)
        finally:
            sub.close()
            broker.stop()
            world.close()
    full = [(len(p), node_message.decode(p)) for _, p, _ in msgs]
    full = [(n, m) for n, m in full if {r.name for r in m.readings} >= {"temperature", "pm2_5", "laeq"}]
    print(f"(bench took {time.monotonic() - t0:.0f} s)")
    if not full:
        print("message size: no message carried all three sensors (PMS5003 still warming?)")
        return 0
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
