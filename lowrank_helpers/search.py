"""The learning-rate search's rules, for every study: the rate grid and how it grows at an
edge, and which rate a model's search chooses.

Rates live on the ladder 1, 3, 10, 30, … × 10^k (a grid half a decade apart), or on any grid
of one's own, which grows at an edge by its own spacing there (:func:`next_rate`). A model's
choice (:func:`choose`) is the rate with the best final validation score of seed 0, leaving
out every rate at which any seed failed (diverged, or ended near chance), ties going to the
lower rate.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from .protocol import RunConfig


def ladder_index(lr: float) -> int:
    """The rung of ``lr`` on the ladder 1, 3, 10, 30, ... × 10^k (rung 2k is 10^k, 2k+1 is
    3·10^k); ValueError for a rate off the ladder."""
    exp = math.floor(math.log10(lr) + 1e-9)
    mant = lr / 10 ** exp
    for i, m in enumerate((1.0, 3.0)):
        if abs(mant - m) < 1e-6 * m:
            return 2 * exp + i
    raise ValueError(f"learning rate {lr:g} is not on the grid's ladder (1 or 3 times a "
                     "power of 10)")


def ladder_lr(index: int) -> float:
    """The learning rate of a rung: 2k → 1e{k}, 2k+1 → 3e{k} (clean floats)."""
    return float(f"{1 if index % 2 == 0 else 3}e{index // 2}")


def _on_ladder(rates) -> bool:
    try:
        [ladder_index(x) for x in rates]
        return True
    except ValueError:
        return False


def next_rate(tried, direction: int) -> float:
    """The rate one rung beyond the edge of the rates ``tried`` (ascending), ``direction``
    +1 (above) or −1 (below): on the 1–3–10 ladder where every rate lies on it, else one
    more geometric step of the grid's spacing at that edge (a single rate: a factor 3)."""
    tried = sorted(tried)
    if _on_ladder(tried):
        edge = tried[-1] if direction > 0 else tried[0]
        return ladder_lr(ladder_index(edge) + direction)
    if len(tried) == 1:
        ratio = 3.0
    else:
        ratio = tried[-1] / tried[-2] if direction > 0 else tried[1] / tried[0]
    edge = tried[-1] if direction > 0 else tried[0]
    return float(f"{edge * ratio ** direction:.6g}")


def rungs_beyond(tried, bound: float, direction: int) -> int:
    """How many of the rates ``tried`` lie beyond ``bound`` (the first grid's edge) in
    ``direction``: the rungs an extension already added on that side."""
    return sum(1 for x in tried if (x > bound if direction > 0 else x < bound))


def _score(row) -> tuple:
    """A search run's standing: final validation accuracy, then lower validation loss, then
    the lower rate (so that where every rate diverges or stays at chance, the lowest is
    chosen and the grid extends downwards); a diverged run (no finite metric) last."""
    acc = row.final_val_accuracy
    if row.diverged_epoch is not None and not pd.isna(row.diverged_epoch) or pd.isna(acc):
        return (-math.inf, -math.inf, -row.lr)
    loss = row.history[-1].get("val_loss", math.inf) if row.history else math.inf
    return (acc, -loss if math.isfinite(loss) else -math.inf, -row.lr)


@dataclass(frozen=True)
class Choice:
    """One model's search, read from its records."""
    key: str
    lr: float           # the chosen rate
    tried: tuple        # every rate searched, ascending
    val_accuracy: float
    edge: str | None    # "low"/"high": the choice is at the grid's edge (not extended further)
    unstable: tuple = ()  # rates left out because a seed failed there (diverged, or chance)


def _failed(row) -> bool:
    """The run diverged (a loss became NaN or inf) or ended near chance on the validation
    split (below twice chance, 1/classes)."""
    from .tasks import TASKS
    if (row.diverged_epoch is not None and not pd.isna(row.diverged_epoch)) or \
            not math.isfinite(row.final_train_loss if row.final_train_loss is not None
                              else math.nan):
        return True
    classes = getattr(TASKS.get(row.task), "classes", None)
    acc = row.final_val_accuracy
    return bool(classes) and acc is not None and not pd.isna(acc) and acc < 2 / classes


def choose(runs: pd.DataFrame) -> Choice:
    """The rate with the best final validation accuracy among one model's seed-0 records,
    leaving out every rate at which some seed failed (:func:`_failed`: a rate that only seed
    0 survives is not a setting to report); where every rate is out, the lowest, so that the
    grid extends downwards."""
    rows = [r for r in runs.itertuples() if r.seed == 0]
    unstable = tuple(sorted({r.lr for r in runs.itertuples() if _failed(r)}))
    stable = [r for r in rows if r.lr not in unstable]
    best = max(stable, key=_score) if stable else min(rows, key=lambda r: r.lr)
    tried = tuple(sorted(r.lr for r in rows))
    edge = "low" if best.lr == tried[0] else "high" if best.lr == tried[-1] else None
    from .tuning import _config, model_key
    return Choice(model_key(RunConfig.from_dict(_config(best))), best.lr, tried,
                  best.final_val_accuracy, edge, unstable)
