"""OTA figures, the node's side: a whole app update of the real firmware under MicroPython (on a
directory laid out as a board's filesystem; --lfs: a LittleFS partition in a file, whose flash
device is Python code in the VM's heap, tests/ota_node.py), the noise meter and a BME280 sampling throughout,
served by a test publisher speaking the agent's side of the contract over a real Mosquitto.

    .venv/bin/python bench/ota_node.py [--micropython /work/mp32/micropython] [--heap 56k] [--pace-ms 20] [--lfs]

Prints, for the transfer (ticket to "staged"): bytes, seconds, bytes/s; the least heap free while
chunks were written (the node's own gc.mem_free() after each write); audio blocks lost (target 0);
short-of-heap lines in the node's console (target 0); and whether the update confirmed. On the
32-bit VM at 56k the heap figures stand for an ESP32's. node_update() is for bench/ota.py (the
agent's figures) to call.
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from ota_node import Board, Bundle, Publisher, app_with, mpy_of  # noqa: E402

from openpole.field import appbuild  # noqa: E402
from openpole.sim import node as simnode  # noqa: E402
from openpole.sim.broker import Broker  # noqa: E402
from openpole.sim.world import WorldServer  # noqa: E402


def node_update(vm=None, heap="56k", pace_ms=20, workdir=None, lfs=False):
    """One whole app update; returns its figures as a dict."""
    arch = simnode.vm_arch(vm)
    work = Path(workdir or tempfile.mkdtemp(prefix="openpole-bench-ota-"))
    app = appbuild.build_app(work / "app", arch=arch)
    world = WorldServer()
    try:
        with Broker(work / "broker", kind="mosquitto") as broker:
            board = Board(work / "board", app, broker, world, heap=heap, vm=vm,
                          config={"sensors": {"bme280": {}, "noise": {}}}, posix=not lfs)
            pub = Publisher(broker, board.node_id)
            try:
                bundle = Bundle(app_with(app, work / "new", arch=arch), mpy=mpy_of(vm))
                pub.bundle, pub.job = bundle, 1
                board.boot()
                try:
                    pub.wait_online(120)
                except AssertionError:
                    raise SystemExit("the node did not come online:\n" + board.output()[-3000:]) from None
                start, seq = time.monotonic(), 0
                while not pub.reports and time.monotonic() - start < 120:  # as the agent: again until heard of
                    seq += 1
                    t0 = time.monotonic()
                    pub.send(bundle.ticket(board.node_id, 1, seq, pace_ms=pace_ms, trial_s=300))
                    while not pub.reports and time.monotonic() - t0 < 15:
                        time.sleep(0.05)
                try:
                    staged = pub.wait_state("staged", job=1, timeout=600)
                except AssertionError as e:
                    raise SystemExit(f"{e}\n{board.output()[-3000:]}") from None
                secs = time.monotonic() - t0
                confirmed = pub.wait_state("confirmed", job=1, timeout=300)
                out = board.output()
            finally:
                board.stop()
                pub.close()
    finally:
        world.close()
    return {"vm": vm or "x64", "heap": heap, "fs": "littlefs" if lfs else "directory", "bytes": bundle.total, "objects": len(bundle.objects),
            "requests": len(pub.requests), "seconds": round(secs, 1), "bytes_per_s": round(bundle.total / secs),
            "heap_min_free": staged.get("heap_min_free"), "audio_lost_blocks": staged.get("audio_lost_blocks"),
            "tickets_sent": seq, "short_of_heap_lines": out.count("not enough heap") + out.count("no heap"),
            "confirmed": confirmed["app"] == bundle.version}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--micropython", help="the VM (default: the venv's x64 Unix port)")
    ap.add_argument("--heap", default="56k")
    ap.add_argument("--pace-ms", type=int, default=20)
    ap.add_argument("--lfs", action="store_true", help="the node's filesystem LittleFS in a file")
    a = ap.parse_args()
    print(json.dumps(node_update(a.micropython, a.heap, a.pace_ms, lfs=a.lfs), indent=1))


if __name__ == "__main__":
    main()
