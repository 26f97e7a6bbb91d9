"""Wording of the generated answers: counts, bounds and the checks that keep words true.

The answers are generated from the records, and their words are claims too: "all" where a
count falls short of its total, "converged" where models still move, or a bound rounded
below the number it bounds would each say more than the records carry. The helpers here
word those cases from the numbers; :func:`overclaims` finds sentences that break the rule
(the tests run it over every generated block).
"""
from __future__ import annotations

import math
import re


def count_of(k: int, n: int, noun: str = "") -> str:
    """``"all 12 models"`` where k = n, ``"none of the 12 models"`` where k = 0, else
    ``"9 of 12 models"``: "all" only where the count is the total."""
    noun = f" {noun}" if noun else ""
    if n <= 0:
        return f"no{noun}"
    if k == n:
        return f"all {n}{noun}" if n > 2 else (f"both{noun}" if n == 2 else f"the one{noun}")
    if k == 0:
        return f"none of the {n}{noun}"
    return f"{k} of {n}{noun}"


def upper_bound(x: float, digits: int = 2) -> str:
    """``x`` rounded *up* to ``digits`` significant digits, as ``"≤ 1.5e-04"``: a bound that
    rounding never moves below the number it bounds."""
    if x <= 0 or not math.isfinite(x):
        return f"≤ {x:.{digits - 1}e}"
    exp = math.floor(math.log10(x)) - (digits - 1)
    up = math.ceil(round(x / 10 ** exp, 9)) * 10 ** exp
    return f"≤ {up:.{digits - 1}e}"


def settled_phrase(settled: int, total: int, what: str = "chosen settings") -> str:
    """How many runs stopped moving, worded from the count: "converged" is never said;
    "still moving" names the rest."""
    moving = total - settled
    if moving == 0:
        return (f"{count_of(settled, total, what)} moved by less than the threshold "
                "(settled by this measure, which does not show convergence)")
    return (f"{count_of(settled, total, what)} moved by less than the threshold and "
            f"{moving} were still moving: not converged")


_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z*(-])|;\s*|\n+")
_COUNT = re.compile(r"\b(\d+) of (\d+)\b")
_ALL = re.compile(r"(?<!not )(?<!never )\b(all|every|always|converged)\b", re.I)


def overclaims(text: str) -> list[str]:
    """Clauses of ``text`` (sentences, split at semicolons too) that say "all", "every",
    "always" or "converged" beside a count "k of n" with k < n: a universal word the count
    contradicts."""
    bad = []
    for sentence in _SENTENCE.split(text):
        short = [m for m in _COUNT.finditer(sentence) if int(m.group(1)) < int(m.group(2))]
        if short and _ALL.search(sentence):
            bad.append(sentence.strip())
    return bad
