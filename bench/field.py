"""Field tool figures: deploy throughput over a pty, and image build time.

    .venv/bin/python bench/field.py [--rounds 3]

- deploy: the whole app onto a blank simulated node (`openpole sim node --serial-pty --fs-app`,
  the real MicroPython raw REPL), then again with nothing changed (hashes only). A pty has no baud
  rate, so the figure is the protocol's and the VM's ceiling; the bytes that crossed the line give
  the time the same update takes over a 115200-baud USB-UART.
- image: `openpole image build` for an ESP32 board, the app already compiled and from cold
  (mpy-cross for every file), each mounted and checked.
- flash through a virtual board (`openpole sim board`, RFC 2217 on loopback): `openpole flash --sim`
  end to end against esptool's own write-flash of the same firmware and filesystem to the same
  endpoint, side by side, and the time from flash to the node's first message at the broker.
  pyserial's RFC 2217 client renegotiates the port on every esptool timeout change (about 0.2 s a
  command), so these are an RFC 2217 link's figures, not a USB-UART's.
"""

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from openpole.field import deploy as fdeploy  # noqa: E402
from openpole.field import image
from openpole.field import appbuild


def deploy_round(files, tmp):
    state = Path(tempfile.mkdtemp(dir=tmp))
    proc = subprocess.Popen([sys.executable, "-m", "openpole", "sim", "node", "--serial-pty", "--fs-app",
                             "--broker", "127.0.0.1:9", "--state", str(state), "--node-id", "bench-1"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        port = proc.stdout.readline().strip()
        time.sleep(1.0)  # the node boots to its REPL
        full = fdeploy.deploy(port, files, restart=False)
        same = fdeploy.deploy(port, files, restart=False)
        return full, same
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def flash_figures(tmp):
    """openpole flash --sim and a raw esptool write of the same image, each on a fresh virtual board."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from helpers import Collector

    from openpole.sim.board import stand_in_firmware
    from openpole.sim.broker import Broker

    tmp = Path(tmp)
    broker = Broker(tmp / "broker").start()
    fw = stand_in_firmware(tmp / "ESP32_GENERIC.bin")
    cfg = tmp / "node.toml"
    cfg.write_text(f'interval_s = 1\n[broker]\nhost = "{broker.host}"\nport = {broker.port}\n[sensors.bme280]\n')
    board, _ = image.board_info("esp32-devkitc")

    def board_proc(name):
        p = subprocess.Popen([sys.executable, "-m", "openpole", "sim", "board", "--flash", str(tmp / name)],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        return p, p.stdout.readline().strip()

    try:
        fs = tmp / "fs.img"
        r = subprocess.run([sys.executable, "-m", "openpole", "image", "build", "--board", "esp32-devkitc", "--node-id",
                            "raw-1", "--config", str(cfg), "--site", str(tmp / "site"), "--out", str(fs), "--sim"],
                           capture_output=True, text=True, check=True)
        total = fw.stat().st_size + fs.stat().st_size
        proc, url = board_proc("raw.bin")
        t0 = time.perf_counter()
        r = subprocess.run([sys.executable, "-m", "esptool", "--port", url, "write-flash", "0x1000", str(fw),
                            f"0x{board['fs_offset']:x}", str(fs)], capture_output=True, text=True)
        raw_s = time.perf_counter() - t0
        proc.terminate()
        proc.wait(timeout=20)
        if r.returncode:
            print(f"flash: esptool's raw write failed: {r.stdout[-500:]}")
            return
        proc, url = board_proc("flash.bin")
        sub = Collector(broker, "openpole/v1/bench-f1/data")
        t0 = time.perf_counter()
        r = subprocess.run([sys.executable, "-m", "openpole", "flash", "--port", url, "--board", "esp32-devkitc",
                            "--node-id", "bench-f1", "--firmware", str(fw), "--config", str(cfg), "--site",
                            str(tmp / "site"), "--sim"], capture_output=True, text=True)
        flash_s = time.perf_counter() - t0
        msgs = sub.wait_for(lambda m: m, timeout=60)
        first_s = time.perf_counter() - t0
        sub.close()
        proc.terminate()
        proc.wait(timeout=20)
        if r.returncode or not msgs:
            print(f"flash: openpole flash failed: {(r.stdout + r.stderr)[-500:]}")
            return
        print(f"flash through a virtual board, {total // 1024} KB (firmware + filesystem): esptool write-flash "
              f"{raw_s:.1f} s ({total / raw_s / 1024:.0f} KB/s written and verified); openpole flash --sim "
              f"{flash_s:.1f} s ({total / flash_s / 1024:.0f} KB/s, with the chip check, console verdict and "
              f"inventory)")
        print(f"flash to the node's first message at the broker: {first_s:.1f} s")
    finally:
        broker.stop()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-flash", action="store_true", help="leave out the virtual board's flash figures")
    args = ap.parse_args()
    if not args.no_flash:
        with tempfile.TemporaryDirectory() as tmp:
            flash_figures(tmp)
    app = appbuild.build_app(arch="x64", include_sim=True)
    files = appbuild.app_files(app)
    total = sum(map(len, files.values()))
    with tempfile.TemporaryDirectory() as tmp:
        runs = [deploy_round(files, tmp) for _ in range(args.rounds)]
    rate = statistics.median(f.bytes_sent / f.seconds for f, _ in runs)
    full_s = statistics.median(f.seconds for f, _ in runs)
    same_s = statistics.median(s.seconds for _, s in runs)
    wire = runs[0][0].wire_bytes
    print(f"deploy, full app ({len(files)} files, {total} bytes) over a pty: {full_s:.2f} s, {rate / 1000:.0f} kB/s "
          f"of file data (median of {args.rounds})")
    print(f"deploy, nothing changed (one hash listing): {same_s:.2f} s, {runs[0][1].skipped} files skipped")
    print(f"bytes on the line for the full app: {wire} ({wire / total:.2f}x the files: base64 and commands); "
          f"at 115200 baud that is {wire * 10 / 115200:.1f} s")

    board, chip = image.board_info("esp32-devkitc")
    cfg = image.node_config("bench-1", "esp32-devkitc")
    times = []
    for _ in range(args.rounds):
        t0 = time.perf_counter()
        files, _ = image.app_for(chip)
        fs = image.build_fs(board, files, cfg)
        image.verify_fs(fs, files, cfg)
        times.append(time.perf_counter() - t0)
    print(f"image build (esp32-devkitc, {len(fs) // 1024} KB filesystem, app compiled): "
          f"{statistics.median(times) * 1000:.0f} ms, mounted and checked")
    cold = Path(tempfile.mkdtemp())
    try:
        t0 = time.perf_counter()
        app_dir = appbuild.build_app(cold, arch=chip["mpy_arch"], include_sim=False)
        files = appbuild.app_files(app_dir)
        fs = image.build_fs(board, files, cfg)
        image.verify_fs(fs, files, cfg)
        print(f"image build from cold (mpy-cross for {len(files) - 1} files): {time.perf_counter() - t0:.2f} s")
    finally:
        shutil.rmtree(cold)


if __name__ == "__main__":
    main()
