"""Run a viper kernel's own source on CPython with every intermediate checked against int32.

Viper ints are 32-bit machine words on the ESP32 and 64-bit on x86-64: code that is right on this
machine can wrap on a pole. Here loads behave like viper's ptr32 on x86-64 (zero-extended), stores
must fit int32, and every arithmetic result must fit int32 exactly, or Overflow names the operation.
The one intended wrap-around, the sign extension (v ^ (1 << 31)) - (1 << 31), is recognised.
"""

import builtins
import sys

SIGN = 1 << 31
LO, HI = -(1 << 31), (1 << 31) - 1


class Overflow(AssertionError):
    pass


def _check(v, op, a, b):
    if not LO <= v <= HI:
        raise Overflow(f"{a} {op} {b} = {v} does not fit int32")
    return I(v)


class _SignPending:
    """v ^ (1 << 31), waiting for its "- (1 << 31)": together a sign extension from 32 bits."""

    def __init__(self, v):
        self.v = v

    def __sub__(self, other):
        if other != SIGN:
            raise Overflow("(v ^ 2^31) used other than as a sign extension")
        u = self.v & 0xFFFFFFFF
        return I(u - (1 << 32) if u & SIGN else u)


class I(int):
    """An int whose every arithmetic result must fit int32."""

    def __add__(self, o): return _check(int(self) + int(o), "+", self, o)
    def __radd__(self, o): return _check(int(o) + int(self), "+", o, self)
    def __sub__(self, o): return _check(int(self) - int(o), "-", self, o)
    def __rsub__(self, o): return _check(int(o) - int(self), "-", o, self)
    def __mul__(self, o): return _check(int(self) * int(o), "*", self, o)
    def __rmul__(self, o): return _check(int(o) * int(self), "*", o, self)
    def __rshift__(self, o): return _check(int(self) >> int(o), ">>", self, o)
    def __rrshift__(self, o): return _check(int(o) >> int(self), ">>", o, self)
    def __lshift__(self, o): return _check(int(self) << int(o), "<<", self, o)
    def __rlshift__(self, o): return _check(int(o) << int(self), "<<", o, self)
    def __and__(self, o): return _check(int(self) & int(o), "&", self, o)
    def __rand__(self, o): return _check(int(o) & int(self), "&", o, self)
    def __or__(self, o): return _check(int(self) | int(o), "|", self, o)
    def __ror__(self, o): return _check(int(o) | int(self), "|", o, self)
    def __neg__(self): return _check(-int(self), "-", 0, self)

    def __xor__(self, o):
        if int(o) == SIGN:
            return _SignPending(int(self))
        return _check(int(self) ^ int(o), "^", self, o)

    __rxor__ = __xor__


class Ptr:
    """A viper pointer over a list: loads zero-extended (as ptr32 on x86-64), stores checked."""

    def __init__(self, values, bits=32):
        self.mask = (1 << bits) - 1
        self.bits = bits
        self.mem = [int(v) & self.mask for v in values]

    def __getitem__(self, i):
        return I(self.mem[int(i)])

    def __setitem__(self, i, v):
        v = int(v)
        lo = 0 if self.bits == 16 else LO
        if not lo <= v <= (self.mask if self.bits == 16 else HI):
            raise Overflow(f"store of {v} into a {self.bits}-bit word")
        self.mem[int(i)] = v & self.mask

    def signed(self):
        return [v - (1 << self.bits) if v >> (self.bits - 1) else v for v in self.mem]


def install_viper_shims():
    """Let a module with @micropython.viper functions import on CPython (as plain Python)."""
    import micropython

    for name in ("viper", "native"):  # Blinka's versions raise SyntaxError on purpose
        setattr(micropython, name, lambda f: f)
    for name in ("ptr8", "ptr16", "ptr32", "uint"):
        setattr(builtins, name, int)
    sys.modules.setdefault("micropython", micropython)
