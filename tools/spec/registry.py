"""The quantity registry as the edge agent and the receiver use it: by key and by name."""

import math
from dataclasses import dataclass
from functools import cached_property

from .. import paths


def digits(resolution):
    """Decimal places of a resolution (0.01 -> 2, 1 -> 0, 10 -> 0)."""
    return max(0, -math.floor(math.log10(resolution) + 1e-9))


@dataclass(frozen=True)
class Quantity:
    name: str
    key: int
    unit: str
    symbol: str
    min: float
    max: float
    resolution: float
    kind: str
    digits: int = 0  # decimals of the resolution: what a value is rounded to


class Registry:
    def __init__(self, spec_dir=None, board_dir=None):
        self.spec_dir = spec_dir or paths.SENSOR_SPECS
        self.board_dir = board_dir or paths.BOARD_DEFS

    @cached_property
    def specs(self):
        from .model import load

        specs = load(self.spec_dir, self.board_dir)
        if specs.errors:
            raise RuntimeError(f"sensor specs have errors, run `openpole spec check`: {specs.errors[0]}")
        return specs

    @cached_property
    def by_key(self):
        out = {}
        for q in self.specs.quantities:
            symbol = self.specs.units[q["unit"]]["symbol"]
            out[q["key"]] = Quantity(q["name"], q["key"], q["unit"], symbol, q["min"], q["max"], q["resolution"], q["kind"],
                                     digits(q["resolution"]))
        return out

    @cached_property
    def level_keys(self):
        """Keys of the decibel quantities: averaged as energy, never arithmetically."""
        return frozenset(k for k, q in self.by_key.items() if q.kind == "level")

    @cached_property
    def by_name(self):
        return {q.name: q for q in self.by_key.values()}


REGISTRY = Registry()
