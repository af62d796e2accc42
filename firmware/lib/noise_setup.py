# The noise meter's set-up: the filter coefficients, the microphone equalisation, the Fast-step
# terms and the two level tables, written into a NoiseMeter's state array. Boot-only: NoiseMeter
# loads this module for it and lets it go, so the running node's heap does not hold this code.
# The offsets are the layout in noise.py (the kernel's numbers); tests/test_noise.py checks they agree.

import math
import sys

from micropython import const
from aweight import (BLOCK, FAST_A_UDB, FAST_B_UDB, FIR, GAIN_1K_DB, HIGH_PASS, HIST_BINS, HIST_LOW_DB,
                     HIST_SHIFT, LOW_PASS, PERCENTILE_EVERY)

sys.modules.pop("aweight", None)  # read once, here

FULL_SCALE_BITS = 25  # samples are the top 26 bits of the 32-bit I2S slot: full scale = 2^25
SETTLE_BLOCKS = 250  # 250 ms: the high-pass sections' start-up transient has died away
NEG = -(1 << 29)  # the level of no energy at all (micro-dB)
_TF_SHIFT = const(18)
_TF_N = const(184)
_LF = const(12)
_HOFF = const(21)
_CLIP = const(22)
_COEF = const(23)
_WARM = const(36)
_EQ = const(37)
_TL = const(92)
_TF = const(157)
_K = const(_TF + _TF_N + 1)
_SIZE = const(_K + 4)


def _q15(c):
    """(round(c * 2^Q), Q) with the largest Q that keeps the product under 2^15 (Q >= 15)."""
    q = 15
    while round(c * 2 ** (q + 1)) < 32768 and q < 29:
        q += 1
    return round(c * 2**q), q


def _eq(mic):
    """cz, qz, cp, qp of the shelf undoing the mic's first-order roll-off at eq_highpass_hz,
    its boost limited to 20 dB (the pole ten times lower), matched-z; zeros: no equalisation."""
    fc = mic.get("eq_highpass_hz")
    if not fc:
        return (0, 0, 0, 0)
    cz = 1 - math.exp(-2 * math.pi * fc / 48000)
    cp = 1 - math.exp(-2 * math.pi * fc / 10 / 48000)
    return _q15(cz) + _q15(cp)


def _put(st, at, values):
    for k, v in enumerate(values):
        st[at + k] = v


def fill(st, mic):
    """Set up a zeroed state array for mic (a profile from mics.MICS); returns the calibration,
    dB SPL = micro-dB / 1e6 + cal."""
    if mic["alignment"] != "left":
        # The kernel takes the top 26 bits of each 32-bit slot: right-aligned data would read
        # tens of dB low. No profile needs it yet.
        raise ValueError("noise: right-aligned microphones are not supported")
    # The kernel is written for 1 ms blocks (48 slots, the 10 log10(48) term), 2^17 bins, this layout.
    if BLOCK != 48 or HIST_SHIFT != 17 or _K != 342 or len(st) != _SIZE:
        raise ValueError("noise: aweight.py no longer matches the kernel (BLOCK 48, HIST_SHIFT 17)")
    hp = HIGH_PASS
    _put(st, _COEF, (hp[0][0], hp[0][1], hp[1][0], hp[1][1], hp[2][0], hp[2][1], hp[3][0], hp[3][1],
                     hp[4][0], hp[4][1], LOW_PASS, FIR[0], FIR[1]))
    _put(st, _EQ, _eq(mic))
    _put(st, _K, (FAST_A_UDB, FAST_B_UDB, PERCENTILE_EVERY, HIST_BINS - 1))
    # 10 log10(1 + i/64), and the log-add 10 log10(1 + 10^(-d/10)) at d = i * 2^18, in micro-dB
    _put(st, _TL, (round(10 * math.log10(1 + i / 64) * 1e6) for i in range(65)))
    _put(st, _TF, (round(10 * math.log10(1 + 10 ** (-(i << _TF_SHIFT) / 1e7)) * 1e6) for i in range(_TF_N + 1)))
    # A full-scale sine (peak 2^25) at 1 kHz is (94 - sensitivity) dB SPL.
    cal = 94.0 - mic["sensitivity_dbfs"] - (10 * math.log10(2.0 ** (2 * FULL_SCALE_BITS) / 2) + GAIN_1K_DB)
    st[_HOFF] = round((HIST_LOW_DB - cal) * 1e6)
    st[_CLIP] = int(2**FULL_SCALE_BITS * 10 ** (-0.5 / 20))
    st[_LF] = NEG
    st[_WARM] = SETTLE_BLOCKS
    return cal
