"""The learning-rate search and the seed rule, one for every study and task.

Rates live on the ladder 1, 3, 10, 30, … × 10^k (a grid half a decade apart), or on any grid
of one's own, which grows at an edge by its own spacing there (:func:`next_rate`).

- **choice** (:func:`choose`): among one model's seed-0 runs, the rate that ranks best by its
  task's ``selection`` metrics on the validation or tuning split (the MLP: final validation
  accuracy, then validation loss; the transformer: final tuning-slice loss), leaving out every
  rate at which any seed failed (:func:`failed`: diverged, or ended near chance), ties going
  to the lower rate; where every rate is out, the lowest, so that the grid extends downwards;
- **search** (:func:`search`): seed 0 at every rate of a model's starting grid; a choice at an
  edge of the rates tried adds the next rate beyond it, until the choice lies inside or
  ``max_extend`` rates lie beyond the starting grid on that side;
- **refinement** (``refine``, per model): once the choice lies inside the grid (or the grid
  may grow no more), the geometric midpoints between it and its neighbours are added until
  both lie within a factor (1.5: rungs at most 1.5× apart around the choice);
- **seeds** (:func:`search_and_seed`): seeds 1 … at each choice; where one of them fails there,
  the choice moves and the new one gets its seeds (at most :data:`STABILITY_ROUNDS` times).

A study brings how it trains runs (``train(runs, what)``, which skips recorded ones: the
resume) and reads its records (``records()``, :func:`~lowrank_helpers.core.results.load_records`
rows); the task brings its selection metrics and how a rate enters its protocol
(:meth:`~lowrank_helpers.tasks.base.Task.at_rate`). Test metrics decide nothing here.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import pandas as pd

from ..core.protocol import RunConfig


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


#: How often a model's choice may move (a seed failed at it) before its seeds are left as
#: they are.
STABILITY_ROUNDS = 4


def _diverged(row) -> bool:
    return any(getattr(row, k, None) is not None and not pd.isna(getattr(row, k))
               for k in ("diverged_epoch", "diverged_step"))


def failed(row) -> bool:
    """The run diverged (a loss became NaN or inf), or ended near chance on the validation
    split (a classification task: below twice chance, 2/classes)."""
    from ..tasks import TASKS
    loss = row.final_train_loss
    if _diverged(row) or loss is None or not math.isfinite(loss):
        return True
    classes = TASKS[row.task].classes
    acc = getattr(row, "final_val_accuracy", None)
    return bool(classes) and acc is not None and not pd.isna(acc) and acc < 2 / classes


def standing(row) -> tuple:
    """A search run's rank: its task's selection metrics (signed: higher is better), then the
    lower rate (so that where nothing learns, the lowest rate wins and the grid extends
    downwards); a diverged run, or one without the first metric, last."""
    from ..tasks import TASKS
    values = [getattr(row, f"final_{m}", None) for m, _ in TASKS[row.task].selection]
    if _diverged(row) or values[0] is None or pd.isna(values[0]):
        return (*[-math.inf] * len(values), -row.lr)
    signed = [sign * v if v is not None and math.isfinite(v) else -math.inf
              for v, (_, sign) in zip(values, TASKS[row.task].selection)]
    return (*signed, -row.lr)


@dataclass(frozen=True)
class Choice:
    """One model's search, read from its records."""
    key: str
    lr: float           # the chosen rate
    tried: tuple        # every rate searched, ascending
    score: float        # the first selection metric at the choice (seed 0)
    edge: str | None    # "low"/"high": the choice is at an edge of the rates tried
    unstable: tuple = ()  # rates left out because a seed failed there


def choose(runs: pd.DataFrame) -> Choice:
    """One model's choice from its records ``runs`` (any seeds; see the module doc)."""
    from ..tasks import TASKS
    rows = [r for r in runs.itertuples() if r.seed == 0]
    unstable = tuple(sorted({r.lr for r in runs.itertuples() if failed(r)}))
    stable = [r for r in rows if r.lr not in unstable]
    best = max(stable, key=standing) if stable else min(rows, key=lambda r: r.lr)
    tried = tuple(sorted(r.lr for r in rows))
    edge = "low" if best.lr == tried[0] else "high" if best.lr == tried[-1] else None
    metric = TASKS[best.task].selection[0][0]
    return Choice(best.model_key, best.lr, tried, getattr(best, f"final_{metric}", math.nan),
                  edge, unstable)


def choices(runs: pd.DataFrame) -> dict[str, Choice]:
    """Each model's current choice (:func:`choose`), by model key, from load_records rows."""
    if runs.empty:
        return {}
    return {key: choose(part) for key, part in runs.groupby("model_key", sort=False)
            if (part.seed == 0).any()}


def at_rate(run: RunConfig, lr: float) -> RunConfig:
    """``run`` at rate ``lr`` (its task's rule: :meth:`~lowrank_helpers.tasks.base.Task.at_rate`)."""
    return run.task_spec.at_rate(run, lr)


def midpoint(a: float, b: float) -> float:
    """The geometric midpoint of two rates, √(a·b), to two significant digits (clean ids)."""
    return float(f"{math.sqrt(a * b):.2g}")


def refinement(c: Choice, factor: float) -> list[float]:
    """The rates to add around choice ``c`` so that its neighbours among the rates tried come
    closer than ``factor`` (> 1): the geometric midpoint towards each neighbour farther away
    than that (none once both lie within it, or where a midpoint rounds onto a rate tried)."""
    tried = list(c.tried)
    i = tried.index(c.lr)
    out = []
    for j in (i - 1, i + 1):
        if 0 <= j < len(tried):
            n = tried[j]
            if max(n / c.lr, c.lr / n) > factor * (1 + 1e-9):
                m = midpoint(n, c.lr)
                if m not in tried and m != c.lr:
                    out.append(m)
    return out


#: Rounds of refinement at most (each halves the spacing around a choice in log-rate).
REFINE_ROUNDS = 6


def search(models: list[RunConfig], grids: dict, train: Callable, records: Callable,
           max_extend: int, below: int = 1, refine: dict | None = None) -> dict[str, Choice]:
    """Seed 0 of ``models`` at every rate of its starting grid (``grids[model.model_key]``),
    extended at an edge (module doc); ``train(runs, what)`` trains those without a record,
    ``records()`` returns the study's records. A rate is out where one of the seeds below
    ``below`` failed. ``refine`` (model key → factor > 1): once a model's choice no longer
    extends its grid, the geometric midpoints between the choice and its neighbours are added
    until both lie within that factor of it (:func:`refinement`). Returns each model's
    choice."""
    refine = refine or {}
    grown = {m.model_key: (m, set(grids[m.model_key])) for m in models}
    for round_ in range(1, 2 * max_extend + REFINE_ROUNDS + 2):
        train([at_rate(m, lr) for m, lrs in grown.values() for lr in sorted(lrs)],
              f"learning-rate search, round {round_}")
        runs = records()
        chosen = choices(runs[runs.seed < below] if len(runs) else runs)
        more = False
        for key, (m, lrs) in grown.items():
            c = chosen.get(key)
            if c is None:
                continue
            if c.edge is not None:
                step = +1 if c.edge == "high" else -1
                bound = max(grids[key]) if step > 0 else min(grids[key])
                if rungs_beyond(c.tried, bound, step) < max_extend:
                    lrs.add(next_rate(c.tried, step))
                    more = True
                    continue
            if key in refine:
                added = [x for x in refinement(c, refine[key]) if x not in lrs]
                lrs.update(added)
                more = more or bool(added)
        if not more:
            break
    return {k: chosen[k] for k in grown if k in chosen}


def search_and_seed(models: list[RunConfig], grids: dict, train: Callable, records: Callable,
                    max_extend: int, seeds: range, what: str = "seeds of the chosen rates",
                    refine: dict | None = None) -> dict[str, Choice]:
    """:func:`search` (with ``refine``), then ``seeds`` at each choice, again where a seed
    failed there and the choice moved (the module doc's seed rule); resumes from the records.
    Returns the final choices."""
    below = max(seeds, default=0) + 1
    picked = {}
    for _ in range(STABILITY_ROUNDS):
        picked = search(models, grids, train, records, max_extend, below, refine)
        todo = [at_rate(m, picked[m.model_key].lr).replace(seed=s) for m in models
                if m.model_key in picked for s in seeds]
        if not todo or not train(todo, what):
            break
    return picked
