"""Statistics of replicate runs: mean ± std, and Welch's t interval for a difference of means.

Every difference the prose calls real comes with :func:`welch`'s 95 % interval; where the
interval contains zero the prose says "not distinguishable with n seeds" instead.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from scipy import stats as _st


@dataclass(frozen=True)
class Difference:
    """mean(a) − mean(b) with Welch's t-test: ``low``..``high`` is the 95 % interval."""
    diff: float
    low: float
    high: float
    p: float
    n_a: int
    n_b: int

    @property
    def real(self) -> bool:
        """The interval excludes zero (a difference the prose may claim)."""
        return self.low > 0 or self.high < 0

    def describe(self, scale: float = 100.0, unit: str = " points") -> str:
        """``+0.21 points (95 % CI −0.15 to +0.57, Welch p = 0.16, 3 vs 3 seeds)``."""
        return (f"{self.diff * scale:+.2f}{unit} (95 % CI {self.low * scale:+.2f} to "
                f"{self.high * scale:+.2f}, Welch p = {self.p:.2g}, {self.n_a} vs "
                f"{self.n_b} seeds)")


def welch(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> Difference:
    """Welch's unequal-variance t interval and test for mean(a) − mean(b) (each needs at
    least 2 values; equal constant samples give a zero-width interval)."""
    a, b = [float(x) for x in a], [float(x) for x in b]
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"Welch's test needs at least 2 values per side, got {len(a)} and "
                         f"{len(b)}")
    ma, mb = sum(a) / len(a), sum(b) / len(b)
    va = sum((x - ma) ** 2 for x in a) / (len(a) - 1)
    vb = sum((x - mb) ** 2 for x in b) / (len(b) - 1)
    se2 = va / len(a) + vb / len(b)
    diff = ma - mb
    if se2 == 0:
        return Difference(diff, diff, diff, 0.0 if diff else 1.0, len(a), len(b))
    df = se2 ** 2 / ((va / len(a)) ** 2 / (len(a) - 1) + (vb / len(b)) ** 2 / (len(b) - 1))
    half = _st.t.ppf(0.5 + level / 2, df) * math.sqrt(se2)
    p = 2 * _st.t.sf(abs(diff) / math.sqrt(se2), df)
    return Difference(diff, diff - half, diff + half, float(p), len(a), len(b))
