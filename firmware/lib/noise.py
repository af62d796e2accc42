# Noise meter for an I2S MEMS microphone: A-weighted LAeq, LAFmax, LAFmin, LA10/50/90.
# Usage: m = NoiseMeter(MICS["inmp441"]); m.process(buf, n) for each block of 32-bit I2S samples
# (mono, little-endian words); m.report() once per interval -> levels in dB(A) re 20 uPa, then resets.
#
# The per-sample path is one @micropython.viper kernel in 32-bit fixed point that allocates nothing.
# Viper ints are 32-bit on the ESP32 and 64-bit on x86-64, so no intermediate may need more than
# 31 bits: tests run this same function on CPython with every value range-checked (tests/noise_int32).
# Energies are kept as levels in micro-dB (integers): a table log, and a table log-add for sums.

import math
import sys
from array import array

import micropython
from micropython import const
from aweight import HIST_BINS, HIST_LOW_DB, HIST_SHIFT

sys.modules.pop("aweight", None)  # its constants are ours now: on a node, the module's heap goes back

NEG = -(1 << 29)  # the level of no energy at all (micro-dB)
_TF_SHIFT = const(18)  # log-add table step: 2^18 micro-dB (0.26 dB; linear between entries, < 0.002 dB off)
_TF_N = const(184)  # covers differences up to 48 dB; beyond, the smaller term adds < 0.07 micro-dB
_SECOND = const(1000)  # blocks folded into the interval sum at once: keeps every log-add difference small

# Layout of the state array (int32), shared with the kernel (which uses the numbers) and with
# noise_setup.py (boot-only: it fills the coefficients and tables; a test checks the two agree).
_X = const(0)  # previous input sample
_Y = const(1)  # outputs of the 5 high-pass sections (1..5), 2 low-pass (6, 7), FIR inputs (8, 9)
_J = const(10)  # samples in the current block
_MAX = const(11)  # largest |y| in the current block
_LF = const(12)  # Fast level
_LSEC = const(13)  # log-sum of block energies in the current second
_NSEC = const(14)  # blocks in the current second
_LINT = const(15)  # log-sum of the interval's completed seconds
_NINT = const(16)  # blocks in the interval's completed seconds
_FMAX = const(17)
_FMIN = const(18)
_PCNT = const(19)  # blocks since the last percentile sample
_OVER = const(20)  # samples within 0.5 dB of full scale
_HOFF = const(21)  # level of histogram bin 0
_CLIP = const(22)  # |x| counted as overload
_COEF = const(23)  # c0 q0 c1 q1 c2 q2 c3 q3 c4 q4 p4 b1 b2
_WARM = const(36)  # blocks left before extremes and percentiles count (the filters settle)
_EQ = const(37)  # microphone equalisation: cz qz cp qp (all 0: none)
_EQ_Y = const(41)  # its state: previous input, previous output
_YB = const(44)  # the current block's output samples
_TL = const(92)  # 65 entries: 10 log10(1 + i/64) in micro-dB (linear between entries, < 0.0002 dB off)
_TF = const(157)  # log-add table: 10 log10(1 + 10^(-d/10)), d = i * 2^18 micro-dB
_K = const(_TF + _TF_N + 1)  # from aweight.py: Fast step terms, percentile spacing, last histogram bin
_SIZE = const(_K + 4)


@micropython.viper
def _kernel(buf: ptr32, n: int, st: ptr32, hist: ptr16) -> int:
    # (v ^ sx) - sx sign-extends a 32-bit word on 32- and 64-bit viper alike. Built at run time:
    # a folded 1 << 31 is no small int on the ESP32, and viper would make it an object.
    sx = 1
    sx = sx << 31
    neg = 0 - (1 << 29)
    x0 = (st[0] ^ sx) - sx
    y0 = (st[1] ^ sx) - sx
    y1 = (st[2] ^ sx) - sx
    y2 = (st[3] ^ sx) - sx
    y3 = (st[4] ^ sx) - sx
    y4 = (st[5] ^ sx) - sx
    l1 = (st[6] ^ sx) - sx
    l2 = (st[7] ^ sx) - sx
    f1 = (st[8] ^ sx) - sx
    f2 = (st[9] ^ sx) - sx
    j = st[10]
    mx = st[11]
    over = st[20]
    clip = st[22]
    c0 = st[23]
    q0 = st[24]
    c1 = st[25]
    q1 = st[26]
    c2 = st[27]
    q2 = st[28]
    c3 = st[29]
    q3 = st[30]
    c4 = st[31]
    q4 = st[32]
    p4 = st[33]
    b1 = (st[34] ^ sx) - sx
    b2 = (st[35] ^ sx) - sx
    ecz = st[37]
    eqz = st[38]
    ecp = st[39]
    eqp = st[40]
    ex = (st[41] ^ sx) - sx
    ey = (st[42] ^ sx) - sx
    fa = (st[342] ^ sx) - sx  # _K: 10 log10(alpha), 10 log10(1 - alpha) in micro-dB
    fb = (st[343] ^ sx) - sx
    pe = st[344]
    hb = st[345]
    i = 0
    while i < n:
        x = ((buf[i] ^ sx) - sx) >> 6
        if x >= clip or x <= 0 - clip:
            over += 1
        # High-pass sections: y = (x - x1) + y1 - round(c * y1 / 2^Q), the product split in
        # 15-bit halves so that no partial product needs more than 31 bits.
        d = x - x0
        x0 = x
        t = y0
        h = c0 * (y0 >> 15)
        y0 = d + y0 - ((h >> (q0 - 15)) + ((((h & ((1 << (q0 - 15)) - 1)) << 15) + c0 * (y0 & 0x7FFF) + (1 << (q0 - 1))) >> q0))
        d = y0 - t
        t = y1
        h = c1 * (y1 >> 15)
        y1 = d + y1 - ((h >> (q1 - 15)) + ((((h & ((1 << (q1 - 15)) - 1)) << 15) + c1 * (y1 & 0x7FFF) + (1 << (q1 - 1))) >> q1))
        d = y1 - t
        t = y2
        h = c2 * (y2 >> 15)
        y2 = d + y2 - ((h >> (q2 - 15)) + ((((h & ((1 << (q2 - 15)) - 1)) << 15) + c2 * (y2 & 0x7FFF) + (1 << (q2 - 1))) >> q2))
        d = y2 - t
        t = y3
        h = c3 * (y3 >> 15)
        y3 = d + y3 - ((h >> (q3 - 15)) + ((((h & ((1 << (q3 - 15)) - 1)) << 15) + c3 * (y3 & 0x7FFF) + (1 << (q3 - 1))) >> q3))
        d = y3 - t
        h = c4 * (y4 >> 15)
        y4 = d + y4 - ((h >> (q4 - 15)) + ((((h & ((1 << (q4 - 15)) - 1)) << 15) + c4 * (y4 & 0x7FFF) + (1 << (q4 - 1))) >> q4))
        # Microphone equalisation (a shelf undoing the mic's own low-frequency roll-off, from its
        # profile): y = (x - x1) + round(cz * x1 / 2^Qz) + y1 - round(cp * y1 / 2^Qp). With cz = cp
        # = 0 it is exactly y = x. After the high-pass sections: the low end is already small here.
        z = y4
        if ecz:
            h = ecz * (ex >> 15)
            d = y4 - ex + (h >> (eqz - 15)) + ((((h & ((1 << (eqz - 15)) - 1)) << 15) + ecz * (ex & 0x7FFF) + (1 << (eqz - 1))) >> eqz)
            h = ecp * (ey >> 15)
            ey = d + ey - ((h >> (eqp - 15)) + ((((h & ((1 << (eqp - 15)) - 1)) << 15) + ecp * (ey & 0x7FFF) + (1 << (eqp - 1))) >> eqp))
            ex = y4
            z = ey  # y4 stays the high-pass section's own state
        # Low-pass sections: y = x + round(p * y1 / 2^15)
        l1 = z + p4 * (l1 >> 15) + ((p4 * (l1 & 0x7FFF) + 16384) >> 15)
        l2 = l1 + p4 * (l2 >> 15) + ((p4 * (l2 & 0x7FFF) + 16384) >> 15)
        # FIR: y = x + round(b1 * x1 / 2^15) + round(b2 * x2 / 2^15)
        y = l2 + b1 * (f1 >> 15) + ((b1 * (f1 & 0x7FFF) + 16384) >> 15) + b2 * (f2 >> 15) + ((b2 * (f2 & 0x7FFF) + 16384) >> 15)
        f2 = f1
        f1 = l2
        st[44 + j] = y
        if y < 0:
            y = 0 - y
        if y > mx:
            mx = y
        j += 1
        i += 1
        if j < 48:
            continue
        # --- a 1 ms block is done: its energy as a level, the Fast step, the sums, the histogram.
        j = 0
        # Block floating point: shift so every sample fits 12 bits; 48 squares then fit 30 bits.
        s = 0
        while (mx >> s) >= 4096:
            s += 1
        mx = 0
        half = (1 << s) >> 1
        acc = 0
        k = 0
        while k < 48:
            v = (((st[44 + k] ^ sx) - sx) + half) >> s
            acc += v * v
            k += 1
        # 10 log10(acc * 4^s / 48) in micro-dB: msb, then the table between powers of two.
        lb = neg
        if acc > 0:
            m = 0
            t = acc
            while t >= 2:
                t >>= 1
                m += 1
            if m >= 12:
                t = acc >> (m - 12)
            else:
                t = acc << (12 - m)
            ti = (t >> 6) - 64
            lo = st[92 + ti]
            lb = m * 3010300 + lo + (((st[93 + ti] - lo) * (t & 63)) >> 6) + s * 6020600 - 16812412
        # Log-adds, max + F(|a - b|): the Fast step (alpha E_f + (1 - alpha) E_b), the second's
        # sum and, once a second, the interval's sum.
        lf = (st[12] ^ sx) - sx
        if st[36] > 0:
            lf = lb  # settling: the Fast level follows each block, then smooths from a settled value
        nsec = st[14] + 1
        passes = 2
        if nsec == 1000:
            passes = 3
        p = 0
        while p < passes:
            if p == 0:
                a = lf + fa
                b = lb + fb
                if lb == neg:
                    b = neg
            elif p == 1:
                a = (st[13] ^ sx) - sx
                b = lb
            else:
                a = (st[15] ^ sx) - sx
                b = (st[13] ^ sx) - sx
            if a < b:
                t = a
                a = b
                b = t
            d = a - b
            if d < 47972352:  # (_TF_N - 1) << 18: beyond, the smaller term is negligible
                ti = d >> 18
                lo = st[157 + ti]
                a = a + lo + (((st[158 + ti] - lo) * ((d & 0x3FFFF) >> 6)) >> 12)
            if p == 0:
                lf = a
            elif p == 1:
                st[13] = a
            else:
                st[15] = a
            p += 1
        if passes == 3:
            st[13] = neg
            st[16] = st[16] + 1000
            nsec = 0
        st[14] = nsec
        st[12] = lf
        if st[36] > 0:  # settling: levels count towards LAeq only
            st[36] = st[36] - 1
            continue
        if lf > (st[17] ^ sx) - sx:
            st[17] = lf
        if lf < (st[18] ^ sx) - sx:
            st[18] = lf
        pc = st[19] + 1
        if pc >= pe:
            pc = 0
            bi = (lf - ((st[21] ^ sx) - sx)) >> 17
            if bi < 0:
                bi = 0
            if bi > hb:
                bi = hb
            if hist[bi] < 65535:
                hist[bi] = hist[bi] + 1
        st[19] = pc
    st[0] = x0
    st[1] = y0
    st[2] = y1
    st[3] = y2
    st[4] = y3
    st[5] = y4
    st[6] = l1
    st[7] = l2
    st[8] = f1
    st[9] = f2
    st[10] = j
    st[11] = mx
    st[20] = over
    st[41] = ex
    st[42] = ey
    return 0


# The report's passes over the 916 histogram bins, in viper: interpreted, they took about 100 ms
# on an ESP32, twice what its I2S DMA buffers while the loop is away.
@micropython.viper
def _hist_total(hist: ptr16, n: int) -> int:
    t = 0
    for k in range(n):
        t += hist[k]
    return t


@micropython.viper
def _hist_from_top(hist: ptr16, n: int, target: int) -> int:
    seen = 0
    k = n - 1
    while k >= 0:
        seen += hist[k]
        if seen >= target:
            return k
        k -= 1
    return -1


@micropython.viper
def _hist_clear(hist: ptr16, n: int):
    for k in range(n):
        hist[k] = 0


class NoiseMeter:
    def __init__(self, mic):
        """mic: a profile from mics.MICS (sensitivity_dbfs, noise_floor_dba, alignment)."""
        # Zeroed from a bytearray (MicroPython copies its bytes), not a list of ints twice the size.
        self.st = array("i", bytearray(4 * _SIZE))
        self.hist = array("H", bytearray(2 * HIST_BINS))
        # The coefficients and tables are filled by boot-only code, loaded for it and let go.
        setup = __import__("noise_setup")
        sys.modules.pop("noise_setup", None)
        self.cal = setup.fill(self.st, mic)
        self.floor = mic["noise_floor_dba"] + 3.0  # a level this close to the mic's own noise is flagged
        self._reset_interval()

    def _reset_interval(self):
        st = self.st
        st[_LSEC] = NEG
        st[_NSEC] = 0
        st[_LINT] = NEG
        st[_NINT] = 0
        settled = st[_LF] != NEG and not st[_WARM]
        st[_FMAX] = st[_LF] if settled else NEG
        st[_FMIN] = st[_LF] if settled else (1 << 29)
        st[_OVER] = 0
        _hist_clear(self.hist, HIST_BINS)

    def process(self, buf, n):
        """Feed n 32-bit samples from buf (a bytearray or array of I2S words). Allocates nothing."""
        _kernel(buf, n, self.st, self.hist)

    def report(self, digits=1):
        """Levels for the interval since the last report, then start a new interval.
        {laeq, lamax, lamin, la10, la50, la90, overload, below_floor} in dB(A), rounded to
        `digits` (0.1 dB: the registry's resolution); None where there was no data."""
        st, hist, cal = self.st, self.hist, self.cal  # dB = micro-dB / 1e6 + cal
        total = st[_NINT] + st[_NSEC]
        out = {"laeq": None, "lamax": None, "lamin": None, "la10": None, "la50": None, "la90": None,
               "overload": st[_OVER] > 0, "below_floor": False}
        if total:
            lsum = st[_LINT]
            if st[_NSEC]:
                a, b = max(lsum, st[_LSEC]), min(lsum, st[_LSEC])
                lsum = a + 10 * math.log10(1 + 10 ** ((b - a) / 1e7)) * 1e6 if b != NEG else a
            if lsum != NEG:
                out["laeq"] = round((lsum - 10 * math.log10(total) * 1e6) / 1e6 + cal, digits)
                out["below_floor"] = out["laeq"] < self.floor
            if st[_FMAX] != NEG and st[_FMIN] != 1 << 29:
                out["lamax"] = round(st[_FMAX] / 1e6 + cal, digits)
                out["lamin"] = round(st[_FMIN] / 1e6 + cal, digits)
        n = _hist_total(hist, HIST_BINS)
        if n:
            width = (1 << HIST_SHIFT) / 1e6
            # The level exceeded N % of the time: the bin where the count from the loudest bin
            # down reaches N % of all (rounded up: seen >= N/100 * n, in integers).
            for key, target in (("la10", (n + 9) // 10), ("la50", (n + 1) // 2), ("la90", (9 * n + 9) // 10)):
                k = _hist_from_top(hist, HIST_BINS, target)
                if k >= 0:
                    out[key] = round(HIST_LOW_DB + (k + 0.5) * width, digits)
        self._reset_interval()
        return out
