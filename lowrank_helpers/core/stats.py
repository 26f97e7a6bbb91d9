"""Statistics of replicate runs: Welch's t interval for a difference of means, and Holm's
correction for a family of such comparisons.

Every difference the prose calls real comes with :func:`welch`'s 95 % interval. Where a
sentence counts or selects among many comparisons (a *family*), the decision is Holm's
(:func:`holm`, :func:`correct`): the family-wise error rate stays at :data:`ALPHA` however many
comparisons the family holds; the uncorrected interval is kept beside the corrected decision.
Where the interval contains zero (or the corrected p is at least :data:`ALPHA`) the prose says
"not distinguishable with n seeds" instead.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Sequence

from scipy import stats as _st

#: The family-wise error rate of every corrected decision (two-sided tests), and the
#: confidence level of every interval, 1 − ALPHA.
ALPHA = 0.05


@dataclass(frozen=True)
class Difference:
    """mean(a) − mean(b) with Welch's t-test: ``low``..``high`` is the 95 % interval (not
    corrected for multiplicity). After :func:`correct`, ``p_holm`` is the Holm-adjusted p of
    this comparison within a family of ``family`` comparisons, and decisions use it."""
    diff: float
    low: float
    high: float
    p: float
    n_a: int
    n_b: int
    se: float = 0.0               # standard error of the difference
    df: float = math.inf          # Welch–Satterthwaite degrees of freedom
    p_holm: float | None = None
    family: int | None = None

    @property
    def real_uncorrected(self) -> bool:
        """The 95 % interval excludes zero (equivalently Welch's p < ALPHA)."""
        return self.low > 0 or self.high < 0

    @property
    def real(self) -> bool:
        """A difference the prose may claim: Holm-adjusted p < :data:`ALPHA` once the
        difference belongs to a family (:func:`correct`), else the uncorrected interval
        excludes zero."""
        if self.p_holm is not None:
            return self.p_holm < ALPHA
        return self.real_uncorrected

    def p_above(self, bound: float) -> float:
        """One-sided p of H0: true difference ≤ ``bound`` against H1: it is above (a
        non-inferiority test with margin −``bound`` when ``bound`` < 0). p < ALPHA/2 exactly
        where the 95 % interval's lower end lies above ``bound``."""
        if self.se == 0:
            return 0.0 if self.diff > bound else 1.0
        return float(_st.t.sf((self.diff - bound) / self.se, self.df))

    def describe(self, scale: float = 100.0, unit: str = " points") -> str:
        """``+0.21 points (95 % CI −0.15 to +0.57, Welch p = 0.16, 3 vs 3 seeds)``; with a
        family: ``…, Welch p = 0.005, Holm p = 0.06 over 21, 3 vs 3 seeds)``."""
        holm = "" if self.p_holm is None else \
            f", Holm p = {self.p_holm:.2g} over {self.family}"
        return (f"{self.diff * scale:+.2f}{unit} (95 % CI {self.low * scale:+.2f} to "
                f"{self.high * scale:+.2f}, Welch p = {self.p:.2g}{holm}, {self.n_a} vs "
                f"{self.n_b} seeds)")


def mean_interval(values: Sequence[float], level: float = 1 - ALPHA
                  ) -> tuple[float, float, float]:
    """Mean and Student's t interval of the mean of ``values`` (nan bounds with fewer than
    2)."""
    v = [float(x) for x in values]
    m = sum(v) / len(v)
    if len(v) < 2:
        return m, math.nan, math.nan
    sd = math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1))
    half = _st.t.ppf(0.5 + level / 2, len(v) - 1) * sd / math.sqrt(len(v))
    return m, m - half, m + half


def welch(a: Sequence[float], b: Sequence[float], level: float = 1 - ALPHA) -> Difference:
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
    return Difference(diff, diff - half, diff + half, float(p), len(a), len(b),
                      math.sqrt(se2), df)


def change(before: Difference, after: Difference, level: float = 1 - ALPHA) -> Difference:
    """``after.diff − before.diff`` for two differences of independent runs (a gap at two
    budgets or widths): the standard errors add in quadrature, the degrees of freedom by
    Welch–Satterthwaite's rule over the two (se⁴/df summed)."""
    se2 = before.se ** 2 + after.se ** 2
    diff = after.diff - before.diff
    if se2 == 0:
        return Difference(diff, diff, diff, 0.0 if diff else 1.0, after.n_a, before.n_a)
    parts = [d.se ** 4 / d.df for d in (before, after) if d.se > 0 and math.isfinite(d.df)]
    df = se2 ** 2 / sum(parts) if parts else math.inf
    half = _st.t.ppf(0.5 + level / 2, df) * math.sqrt(se2)
    p = 2 * _st.t.sf(abs(diff) / math.sqrt(se2), df)
    return Difference(diff, diff - half, diff + half, float(p), after.n_a, before.n_a,
                      math.sqrt(se2), df)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's (1979) step-down adjusted p-values, in the order given: sort p ascending,
    multiply the k-th smallest (k = 0, 1, …) by m − k, keep the running maximum, cap at 1.
    Rejecting where the adjusted p < α keeps the family-wise error rate at α for any
    dependence between the tests."""
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    adjusted, running = [0.0] * m, 0.0
    for k, i in enumerate(order):
        running = max(running, (m - k) * float(pvalues[i]))
        adjusted[i] = min(1.0, running)
    return adjusted


def correct(diffs: Sequence[Difference | None]) -> list[Difference | None]:
    """The family ``diffs`` (None: a comparison that could not be made, left out of the
    family) with Holm-adjusted p-values: each difference's ``real`` is then the family-wise
    decision."""
    present = [d for d in diffs if d is not None]
    adjusted = iter(holm([d.p for d in present]))
    return [None if d is None else replace(d, p_holm=next(adjusted), family=len(present))
            for d in diffs]


def noninferior(diffs: Sequence[Difference | None], margin: float) -> list[float | None]:
    """Holm-adjusted one-sided p-values of "a is more than ``margin`` below b" over the family
    ``diffs`` (None stays None): a difference is non-inferior within the margin where its
    adjusted p < ALPHA/2, the level of the 95 % interval's lower end."""
    present = [d for d in diffs if d is not None]
    adjusted = iter(holm([d.p_above(-margin) for d in present]))
    return [None if d is None else next(adjusted) for d in diffs]


def std_factor_range(n: int, level: float = 1 - ALPHA) -> tuple[float, float]:
    """The ``level`` interval of σ/s for a standard deviation s estimated from ``n`` normal
    values (χ² with n − 1 degrees of freedom): with 3 seeds the true spread lies between
    about 0.52 and 6.3 times the estimate."""
    df = n - 1
    if df < 1:
        raise ValueError(f"a standard deviation needs at least 2 values, got {n}")
    lo = math.sqrt(df / _st.chi2.ppf(0.5 + level / 2, df))
    hi = math.sqrt(df / _st.chi2.ppf(0.5 - level / 2, df))
    return lo, hi


def spread_caveat(n: int) -> str:
    """The method text's sentence on how poorly ``n`` seeds estimate a spread."""
    lo, hi = std_factor_range(n)
    return (f"{n} seeds estimate a standard deviation poorly: the true one lies between "
            f"{lo:.2f} and {hi:.1f} times the estimate (95 %, χ² with {n - 1} degrees of "
            "freedom), so an interval over so few seeds can be implausibly narrow, or wide")
