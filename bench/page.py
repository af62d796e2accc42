"""The pole page's figures, each printed with the command that made it.

    .venv/bin/python bench/page.py [--rate 500] [--window-s 15] [--windows 4] [--loads 10]

1. page weight (bytes) and time to first render (first contentful paint, Debian's chromium,
   headless) of the overview and of a node page, on a simulated pole (real firmware nodes under
   MicroPython, real Mosquitto, the agent), side by side with the agent's /metrics served alone;
2. the agent's CPU per message under a steady load (`openpole sim load --rate`), in alternating
   windows of the same run: no page open, then the node page open in the browser and refreshing
   itself every second (page.refresh_s = 1). Target: within 10 %.
Everything on loopback, bounded in time.
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from edge import cpu_s  # noqa: E402
from test_page import browser  # noqa: E402

from openpole.receiver.server import Receiver  # noqa: E402
from openpole.sim.broker import Broker, free_port  # noqa: E402

OPENPOLE = [sys.executable, "-m", "openpole"]


def status(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=5) as r:
        return json.load(r)


def start_pole(root, broker, receiver, nodes):
    page, metrics = free_port(), free_port()
    cfg = root / "agent.toml"
    cfg.write_text(f'[pole]\nid = "bench"\n[broker]\nhost = "{broker.host}"\nport = {broker.port}\n'
                   f'[upstream]\nurl = "{receiver.url}"\nbatch_interval_s = 1.0\n[state]\ndir = "{root / "edge"}"\n'
                   f'[metrics]\nport = {metrics}\n[page]\nlisten = "127.0.0.1:{page}"\nrefresh_s = 1.0\n')
    agent = subprocess.Popen(OPENPOLE + ["edge", "run", "--config", str(cfg)], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    procs = [subprocess.Popen(OPENPOLE + ["sim", "node", "--broker", f"{broker.host}:{broker.port}", "--node-id", n,
                                          "--interval", "1", "--state", str(root / n)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL) for n in nodes]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if len(status(metrics)["nodes"]) >= len(nodes):
                break
        except OSError:
            pass
        time.sleep(0.2)
    time.sleep(5)  # a few minutes' worth is not needed: the charts draw the open minute too
    return agent, procs, page, metrics


def render_figures(b, url, loads):
    """(bytes, median ms to first contentful paint, median ms to DOMContentLoaded)."""
    fcp, dcl = [], []
    with urllib.request.urlopen(url, timeout=10) as r:
        size = len(r.read())
    for _ in range(loads):
        b.get(url)
        nav = b.execute_script("var n = performance.getEntriesByType('navigation')[0]; "
                               "var p = performance.getEntriesByName('first-contentful-paint')[0]; "
                               "return [n.domContentLoadedEventEnd, p ? p.startTime : null];")
        dcl.append(nav[0])
        if nav[1] is not None:
            fcp.append(nav[1])
    return size, statistics.median(fcp) if fcp else float("nan"), statistics.median(dcl)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rate", type=float, default=500.0, help="messages/s of the steady load")
    ap.add_argument("--window-s", type=float, default=15.0)
    ap.add_argument("--windows", type=int, default=4, help="alternating windows: off, on, off, on, ...")
    ap.add_argument("--loads", type=int, default=10, help="page loads per render figure (median)")
    args = ap.parse_args()
    print(f"$ python bench/page.py {' '.join(sys.argv[1:])}")
    root = Path(tempfile.mkdtemp(prefix="openpole-page-bench-"))
    broker = Broker(root / "broker", kind="mosquitto").start()
    receiver = Receiver("127.0.0.1", free_port(), root / "receiver").start()
    agent, nodes, page, metrics = start_pole(root, broker, receiver, ["n1", "n2", "n3"])
    b = browser(1280, 900)
    load = None
    try:
        for name, url in (("overview", f"http://127.0.0.1:{page}/"), ("node page", f"http://127.0.0.1:{page}/node/n1"),
                          ("/metrics alone", f"http://127.0.0.1:{metrics}/metrics")):
            size, fcp, dcl = render_figures(b, url, args.loads)
            paint = "none (plain text is not painted as content)" if fcp != fcp else f"{fcp:.0f} ms"
            print(f"{name}: {size} bytes, first contentful paint {paint}, DOMContentLoaded {dcl:.0f} ms "
                  f"(median of {args.loads})")
        b.get("about:blank")
        total = int(args.rate * args.window_s * (args.windows + 1))
        load = subprocess.Popen(OPENPOLE + ["sim", "load", "--broker", f"{broker.host}:{broker.port}", "--nodes", "50",
                                            "--messages", str(total), "--rate", str(args.rate)],
                                stdout=subprocess.DEVNULL)
        time.sleep(args.window_s / 2)  # the load settles
        per = {False: [], True: []}
        for w in range(args.windows):
            open_ = w % 2 == 1
            b.get(f"http://127.0.0.1:{page}/node/n1" if open_ else "about:blank")
            c0, m0 = cpu_s(agent.pid), status(metrics)["counters"].get("messages_accepted", 0)
            time.sleep(args.window_s)
            c1, m1 = cpu_s(agent.pid), status(metrics)["counters"].get("messages_accepted", 0)
            per[open_].append((c1 - c0) / max(1, m1 - m0) * 1e6)
            print(f"window {w + 1}, page {'open, refreshing every 1 s' if open_ else 'closed'}: {m1 - m0} messages, "
                  f"agent CPU {c1 - c0:.2f} s = {per[open_][-1]:.0f} µs per message")
        off, on = statistics.mean(per[False]), statistics.mean(per[True])
        print(f"agent CPU per message: {off:.0f} µs without the page, {on:.0f} µs with it open -> "
              f"{100 * (on - off) / off:+.1f} % (target within 10 %)")
    finally:
        b.quit()
        if load and load.poll() is None:
            load.terminate()
        for p in nodes + [agent]:
            p.terminate()
            p.wait(timeout=30)
        receiver.stop()
        broker.stop()


if __name__ == "__main__":
    main()
