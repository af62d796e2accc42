"""The noise kernel is 32-bit safe: its own source, run on CPython with every intermediate checked
against int32 over full-scale worst cases, computes bit for bit what the viper kernel computes
under MicroPython. So the ESP32's 32-bit viper gives the same numbers as this 64-bit machine."""

import json

import numpy as np
import pytest
from scipy import signal

import int32check
from int32check import Ptr
from openpole.noise import design

int32check.install_viper_shims()
import noise  # noqa: E402  firmware/lib/noise.py, after the shims
import noise_setup  # noqa: E402
from mics import MICS  # noqa: E402

FS_WORD = (1 << 31) - 1
N = 3000


def stage_responses():
    """Impulse response from the input to each intermediate signal of the quantised chain."""
    _, chain = design.quantise(design.design())
    x = np.zeros(N)
    x[0] = 1.0
    out = []
    for p in [chain.p_dc] + chain.p_hp:
        x = signal.lfilter([1.0, -1.0], [1.0, -p], x)
        out.append(x)
    cz, qz, cp, qp = noise_setup._eq(MICS["inmp441"])  # the microphone equalisation, as quantised
    x = signal.lfilter([1.0, -(1 - cz / 2**qz)], [1.0, -(1 - cp / 2**qp)], x)
    out.append(x)
    for p in chain.p_lp:
        x = signal.lfilter([1.0], [1.0, -p], x)
        out.append(x)
    out.append(signal.lfilter(chain.b, [1.0], x))
    return out


def worst_cases():
    cases = {}
    for k, h in enumerate(stage_responses()):
        # The input that drives stage k to its largest possible value at the last sample.
        cases[f"L1-worst for stage {k}"] = np.where(h[::-1] >= 0, FS_WORD, -FS_WORD - 1)
        cases[f"L1-worst for stage {k}, negated"] = np.where(h[::-1] >= 0, -FS_WORD - 1, FS_WORD)
    n = np.arange(N)
    for f in (24000, 12000, 4000, 1000, 100, 20):
        cases[f"full-scale square {f} Hz"] = np.where((n * 2 * f // 48000) % 2 == 0, FS_WORD, -FS_WORD - 1)
    cases["full-scale step"] = np.where(n < N // 2, -FS_WORD - 1, FS_WORD)
    rng = np.random.default_rng(1)
    cases["full-scale noise"] = rng.integers(-(2**31), 2**31, N)
    return cases


def run_checked(words):
    m = noise.NoiseMeter(MICS["inmp441"])
    st, hist = Ptr(m.st), Ptr(m.hist, bits=16)
    noise._kernel(Ptr(words), len(words), st, hist)
    return st.signed(), hist.signed()


MP_RUN = """
import json
from mics import MICS
from noise import NoiseMeter
with open(PATH, "rb") as f:
    data = f.read()
n = 3000
for k in range(len(data) // (4 * n)):
    m = NoiseMeter(MICS["inmp441"])
    buf = bytearray(data[4 * n * k : 4 * n * (k + 1)])
    m.process(buf, n)
    print(json.dumps([list(m.st), list(m.hist)]))
"""


def test_kernel_is_32_bit_safe_and_matches_the_viper_build(mp, tmp_path):
    cases = worst_cases()
    checked = {}
    for name, x in cases.items():
        try:
            checked[name] = run_checked([int(v) for v in x])
        except int32check.Overflow as e:
            pytest.fail(f"{name}: {e}")
    raw = tmp_path / "cases.raw"
    raw.write_bytes(b"".join(np.asarray(x, dtype="<i4").tobytes() for x in cases.values()))
    got = [json.loads(line) for line in mp.run(f"PATH = {str(raw)!r}\n" + MP_RUN, heap="4m").splitlines()]
    assert len(got) == len(cases)
    for (name, (st, hist)), (mst, mhist) in zip(checked.items(), got):
        assert st == mst, f"{name}: viper state differs from the checked run"
        assert hist == mhist, name


def test_the_checker_catches_a_32_bit_overflow():
    a = int32check.I(1 << 20)
    with pytest.raises(int32check.Overflow):
        a * (1 << 12)
    with pytest.raises(int32check.Overflow):
        (1 << 12) * a
    with pytest.raises(int32check.Overflow):
        a << 11
    sx = 1 << 31
    assert (Ptr([-5])[0] ^ sx) - sx == -5  # the sign-extension idiom is allowed
