"""`openpole noise analyze FILE.wav --mic inmp441`: the node's own noise meter, run under the
MicroPython Unix port on a recording. 48 kHz, 16/24/32-bit PCM, mono or the left channel."""

import json
import subprocess
import sys
import tempfile
import wave
from array import array
from pathlib import Path

from ..errors import UserError

KEYS = ("laeq", "lamax", "lamin", "la10", "la50", "la90")
RUNNER = Path(__file__).with_name("mp_analyze.py")


def read_wav(path):
    """-> (array('i') of left-aligned 32-bit samples, duration s). UserError for anything else."""
    try:
        w = wave.open(str(path), "rb")
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except (wave.Error, EOFError) as e:
        raise UserError(f"{path}: not a PCM WAV file ({e}); convert it to 48 kHz 16/24/32-bit PCM") from None
    with w:
        rate, width, channels = w.getframerate(), w.getsampwidth(), w.getnchannels()
        if rate != 48000:
            raise UserError(f"{path}: sample rate is {rate} Hz; the meter needs 48000 Hz (resample it, e.g. sox in.wav -r 48000 out.wav)")
        if width not in (2, 3, 4):
            raise UserError(f"{path}: {8 * width}-bit samples; the meter takes 16-, 24- or 32-bit PCM")
        if channels not in (1, 2):
            raise UserError(f"{path}: {channels} channels; the meter takes mono or stereo (left channel)")
        data = w.readframes(w.getnframes())
    if width == 2:
        src = array("h", data)
        out = array("i", (v << 16 for v in src[::channels]))
    elif width == 4:
        out = array("i", data)[::channels]
    else:
        step = 3 * channels
        out = array("i", (int.from_bytes(data[i : i + 3], "little", signed=True) << 8 for i in range(0, len(data) - 2, step)))
    if sys.byteorder != "little":
        out.byteswap()
    return out, len(out) / 48000


def run_meter(samples, mic="inmp441", interval_s=0.0, heap="512k"):
    """Feed samples (array('i') of I2S words) to the firmware's meter under MicroPython."""
    from .. import paths
    from ..field import appbuild
    from ..sim import node as simnode
    from ..spec import model

    mics = model.load(paths.SENSOR_SPECS, paths.BOARD_DEFS).mics
    if mic not in mics:
        raise UserError(f"unknown microphone {mic!r} (known: {', '.join(sorted(mics))})")
    app = appbuild.build_app()
    with tempfile.TemporaryDirectory(prefix="openpole-noise-") as tmp:
        raw = Path(tmp) / "samples.raw"
        raw.write_bytes(samples.tobytes())
        interval = round(interval_s * 48000)
        r = subprocess.run(
            [simnode.micropython(), "-X", f"heapsize={heap}", str(RUNNER), str(raw), mic, str(interval)],
            env=simnode.node_env(app), capture_output=True, text=True, timeout=600,
        )
    if r.returncode != 0:
        raise UserError(f"the noise meter failed under MicroPython: {(r.stderr or r.stdout).strip().splitlines()[-1]}")
    lines = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    return [x for x in lines if "done" not in x]


def register(sub):
    p = sub.add_parser("noise", help="the node's noise meter on recordings")
    nsub = p.add_subparsers(dest="noise_command", metavar="ACTION", required=True)
    a = nsub.add_parser("analyze", help="LAeq, LAFmax, LAFmin, LA10/50/90 of a WAV file")
    a.add_argument("file", type=Path, help="48 kHz WAV: 16/24/32-bit PCM, mono or stereo (left channel)")
    a.add_argument("--mic", default="inmp441", help="microphone profile (sensor_specs/mics/), default inmp441")
    a.add_argument("--interval", type=float, default=0.0, help="report every S seconds (default: the whole file)")
    a.add_argument("--json", action="store_true", help="JSON: one object for the file, or one line per interval")
    a.set_defaults(func=analyze)


def analyze(args):
    if args.interval < 0:
        raise UserError("--interval must be positive")
    samples, duration = read_wav(args.file)
    if not samples:
        raise UserError(f"{args.file}: no samples")
    reports = run_meter(samples, args.mic, args.interval)
    if args.json:
        for r in reports:
            out = {k: None if r[k] is None else round(r[k], 1) for k in KEYS}  # the registry's 0.1 dB
            out.update(overload=r["overload"], below_floor=r["below_floor"])
            if args.interval:
                out["start_s"] = r["start_s"]
            print(json.dumps(out))
        return 0
    print(f"{args.file}: {duration:.1f} s, microphone {args.mic}")
    print(f"{'start s':>8} " + " ".join(f"{k:>6}" for k in KEYS) + "  flags")
    for r in reports:
        flags = " ".join(f for f in ("overload", "below_floor") if r[f])
        cells = " ".join(f"{r[k]:6.1f}" if r[k] is not None else f"{'-':>6}" for k in KEYS)
        print(f"{r['start_s']:8.1f} {cells}  {flags}")
    return 0
