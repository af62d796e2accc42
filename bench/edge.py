"""Edge agent figures, each printed with the command that made it.

    .venv/bin/python bench/edge.py [--messages 40000] [--procs 4] [--realistic-rounds 3] [--soak-kills 20] [--power-cuts 20]

1. throughput: the end-to-end rate (QoS 1 node messages durably queued, acknowledged and delivered
   to the receiver) against the ceiling, mosquitto_sub -q 1 consuming from the same broker under
   the same load generator, side by side;
2. cost per message at a realistic load (1,000 nodes at 1 msg/s): agent CPU against broker CPU in
   the same run (the median of --realistic-rounds), agent RSS, p99 latency from node publish to
   upstream acknowledgement;
3. a soak with SIGKILLs of the agent: zero loss;
4. a pole power-cut soak (tests/powercut.py): real nodes publish while Mosquitto and the agent are
   SIGKILLed together and every unsynced write of theirs is lost (a FUSE layer, tests/volatile_fs.py):
   cuts, readings, lost (target 0), duplicates removed.
Everything runs on loopback, bounded in count and time.
"""

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from powercut import soak as powercut_soak  # noqa: E402

from openpole.receiver.server import Receiver  # noqa: E402
from openpole.field import appbuild  # noqa: E402
from openpole.sim.broker import Broker, free_port  # noqa: E402
from openpole.sim.world import WorldServer  # noqa: E402

OPENPOLE = [sys.executable, "-m", "openpole"]


def cpu_s(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024
    return 0.0


def load(broker, nodes, messages, procs, rate=0.0, boot=None):
    args = OPENPOLE + ["sim", "load", "--broker", f"{broker.host}:{broker.port}", "--nodes", str(nodes),
                       "--messages", str(messages), "--procs", str(procs), "--boot", str(boot or time.time_ns() // 1000)]
    if rate:
        args += ["--rate", str(rate)]
    return subprocess.Popen(args, stdout=subprocess.PIPE, text=True)


def agent(broker, receiver, state, batch_interval=1.0):
    return subprocess.Popen(OPENPOLE + ["edge", "run", "--broker", f"{broker.host}:{broker.port}", "--upstream", receiver.url,
                                        "--state", str(state), "--pole-id", "bench", "--batch-interval", str(batch_interval)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def wait_unique(receiver, n, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if receiver.store.stats()["unique"] >= n:
            return True
        time.sleep(0.05)
    return False


def throughput(tmp, messages, procs):
    broker = Broker(tmp / "b1", kind="mosquitto").start()
    try:
        # Ceiling: mosquitto_sub at QoS 1, as fast as a C client consumes.
        sub = subprocess.Popen(["mosquitto_sub", "-h", broker.host, "-p", str(broker.port), "-q", "1", "-i", "ceiling",
                                "-t", "openpole/v1/+/data", "-C", str(messages)], stdout=subprocess.DEVNULL)
        time.sleep(0.5)
        t0 = time.monotonic()
        load(broker, 100, messages, procs).wait()
        published_sub = time.monotonic() - t0
        sub.wait(timeout=300)
        ceiling = messages / (time.monotonic() - t0)
        # The agent, same broker, same load.
        receiver = Receiver("127.0.0.1", free_port(), tmp / "r1").start()
        a = agent(broker, receiver, tmp / "e1")
        time.sleep(2)
        t0 = time.monotonic()
        load(broker, 100, messages, procs).wait()
        published_agent = time.monotonic() - t0
        ok = wait_unique(receiver, 3 * messages, 300)
        rate = messages / (time.monotonic() - t0)
        a.terminate()
        a.wait()
        receiver.stop()
    finally:
        broker.stop()
    # How long the load generator itself took beside each: on shared cores what the agent and the
    # receiver use is CPU the generator does not get.
    return ceiling, rate if ok else 0.0, published_sub, published_agent


def realistic(tmp, seconds):
    broker = Broker(tmp / "b2", kind="mosquitto").start()
    receiver = Receiver("127.0.0.1", free_port(), tmp / "r2").start()
    try:
        a = agent(broker, receiver, tmp / "e2", batch_interval=10.0)
        time.sleep(2)
        a0, b0 = cpu_s(a.pid), cpu_s(broker.proc.pid)
        n = 1000 * seconds
        peak_rss = 0.0
        lp = load(broker, 1000, n, 1, rate=1000)
        while lp.poll() is None:
            peak_rss = max(peak_rss, rss_mb(a.pid))
            time.sleep(0.5)
        wait_unique(receiver, 3 * n, 60)
        a1, b1 = cpu_s(a.pid), cpu_s(broker.proc.pid)
        peak_rss = max(peak_rss, rss_mb(a.pid))
        a.terminate()
        a.wait()
        lat = sorted(r["stored_ns"] - r["node_clock_ms"] * 1_000_000 for r in receiver.store.readings()
                     if r["name"] == "temperature")
    finally:
        receiver.stop()
        broker.stop()
    return (a1 - a0) / n * 1e6, (b1 - b0) / n * 1e6, peak_rss, lat


def soak(tmp, kills, rate=800):
    broker = Broker(tmp / "b3", kind="mosquitto").start()
    receiver = Receiver("127.0.0.1", free_port(), tmp / "r3").start()
    try:
        a = agent(broker, receiver, tmp / "e3", batch_interval=0.5)
        time.sleep(2)
        n = int(rate * (kills * 1.5 + 2))
        lp = load(broker, 200, n, 1, rate=rate)
        done = 0
        while done < kills:
            time.sleep(1.2)
            a.send_signal(signal.SIGKILL)
            a.wait()
            done += 1
            a = agent(broker, receiver, tmp / "e3", batch_interval=0.5)
        lp.wait()
        wait_unique(receiver, 3 * n, 120)
        time.sleep(1)
        s = receiver.store.stats()
        a.terminate()
        a.wait()
    finally:
        receiver.stop()
        broker.stop()
    return n, s, kills


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=40000)
    ap.add_argument("--procs", type=int, default=4, help="publishing processes of the load generator")
    ap.add_argument("--realistic-seconds", type=int, default=30)
    ap.add_argument("--realistic-rounds", type=int, default=3, help="realistic-load rounds (the median ratio is reported)")
    ap.add_argument("--soak-kills", type=int, default=20)
    ap.add_argument("--power-cuts", type=int, default=20, help="pole power cuts (0: skip; needs fuse3)")
    ap.add_argument("--rounds", type=int, default=5, help="throughput rounds (the median is reported)")
    if shutil.which("mosquitto_sub") is None:
        sys.exit("bench/edge.py measures against mosquitto_sub: apt-get install -y mosquitto-clients")
    args = ap.parse_args()
    print(f"command: python bench/edge.py --messages {args.messages} --procs {args.procs} "
          f"--realistic-seconds {args.realistic_seconds} --realistic-rounds {args.realistic_rounds} "
          f"--soak-kills {args.soak_kills} --power-cuts {args.power_cuts} "
          f"--rounds {args.rounds}   "
          f"({os.cpu_count()} cores)")
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        # The ceiling and the agent share two cores with the load generator: one round swings by
        # +-5 points, so the figure is the median of --rounds.
        rounds = [throughput(tmp / f"t{i}", args.messages, args.procs) for i in range(args.rounds)]
        for ceiling, rate, pub_sub, pub_agent in rounds:
            print(f"throughput round: ceiling (mosquitto_sub -q 1) {ceiling:,.0f} msg/s; agent end to end "
                  f"{rate:,.0f} msg/s = {rate / ceiling * 100:.0f} % (the load generator published for "
                  f"{pub_sub:.1f} s beside mosquitto_sub, {pub_agent:.1f} s beside the agent)")
        ratio = sorted(r[1] / r[0] for r in rounds)[len(rounds) // 2]
        print(f"throughput: median {ratio * 100:.0f} % of the ceiling over {len(rounds)} rounds (target >= 90 %)")
        # CPU figures swing by +-0.1x from one run to the next on shared cores: the median of rounds.
        runs = [realistic(tmp / f"real{i}", args.realistic_seconds) for i in range(args.realistic_rounds)]
        for agent_us, broker_us, _, _ in runs:
            print(f"realistic load round: agent {agent_us:.0f} us CPU/msg, broker {broker_us:.0f} us CPU/msg: "
                  f"{agent_us / broker_us:.2f}x")
        agent_us, broker_us, _, _ = sorted(runs, key=lambda r: r[0] / r[1])[len(runs) // 2]
        rss = max(r[2] for r in runs)
        lat = sorted(x for r in runs for x in r[3])
        n, p50, p99 = len(lat), lat[len(lat) // 2] / 1e6, lat[int(len(lat) * 0.99)] / 1e6
        print(f"realistic load (1,000 nodes at 1 msg/s, {args.realistic_seconds} s): median of {len(runs)} rounds: agent "
              f"{agent_us:.0f} us CPU/msg, broker {broker_us:.0f} us CPU/msg: {agent_us / broker_us:.2f}x (target <= 1.5x)")
        print(f"  agent RSS peak {rss:.0f} MB (target <= 60 MB)")
        print(f"  latency node publish -> upstream acknowledged, {n} messages: p50 {p50:.0f} ms, p99 {p99:.0f} ms "
              f"(target <= batch interval 10 s + 250 ms)")
        pi = agent_us * 5
        print(f"  on a Raspberry Pi (about 5x slower): {pi:.0f} us/msg, so one core carries about {1e6 / pi:,.0f} msg/s: "
              f"a pole's dozen nodes use {12 / (1e6 / pi) * 100:.2f} % of a core; a district gateway at 1,000 nodes "
              f"at 1 msg/s needs {1000 / (1e6 / pi) * 100:.0f} % of one core")
        n, s, kills = soak(tmp, args.soak_kills)
        lost = 3 * n - s["unique"]
        print(f"soak: {kills} SIGKILLs of the agent during {n} messages ({3 * n} readings): {s['unique']} stored, "
              f"{lost} lost, {s['duplicates']} duplicates delivered and de-duplicated by the receiver")
        if args.power_cuts:
            world = WorldServer()
            try:
                nodes, cycles = 4, int((args.power_cuts * 2.5 + 10) / 0.2)
                r = powercut_soak(appbuild.build_app(), world, tmp / "cuts", nodes=nodes, cycles=cycles, cuts=args.power_cuts)
            finally:
                world.close()
            print(f"power cuts: {r['cuts']} cuts of the pole (broker and agent SIGKILLed, {r['lost_bytes'] // 1024} KB of "
                  f"unsynced writes thrown away) while {nodes} nodes took {r['readings']} readings: {r['unique']} stored, "
                  f"{r['readings'] - r['unique']} lost (target 0), {r['duplicates']} duplicates removed by the receiver")
    return 0


if __name__ == "__main__":
    sys.exit(main())
