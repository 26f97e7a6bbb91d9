"""The comparisons of the fair comparison, as tables: each a family of Welch differences,
Holm-corrected (:func:`~lowrank_helpers.core.stats.correct`), from
:func:`~lowrank_helpers.studies.tuned.tuned_table`.

Every difference is mean(a) − mean(b) of final test accuracy over seeds with Welch's 95 %
interval (uncorrected, kept as ``low``/``high``); ``real`` is the decision after Holm's
correction over the family the function names. Where a comparison needs a reference chosen
among models (the best init at a rank), the reference is chosen on the *validation* split, so
that the test comparison is not made against a winner picked on the same numbers.
"""
from __future__ import annotations

import math

import pandas as pd

from ..methods import METHODS
from ..core.stats import ALPHA, correct, noninferior, welch
from ..studies.tuned import TUNED_PROTOCOLS, split_budget

#: A model *matches* dense when it is non-inferior within MATCH_MARGIN (accuracy, a fraction):
#: the one-sided test of "more than the margin worse" rejected at ALPHA/2 after Holm's
#: correction over its family, and not detectably worse even without correction.
MATCH_MARGIN = 0.005


def _main(table: pd.DataFrame) -> pd.DataFrame:
    """The comparison's factorized models at the study's epochs: no rescaling, factorized
    output layer."""
    table = split_budget(table)[0]
    fact = table[table["rank"].notna()]
    return fact[(fact.rescale == 1) & ~fact.method.map(lambda m: METHODS[m].dense_output).astype(bool)]


def _diff(a: pd.Series, b: pd.Series, values: str = "test_values"):
    if len(a[values]) < 2 or len(b[values]) < 2:
        return None
    return welch(a[values], b[values])


def best_dense(table: pd.DataFrame, optimizer: str) -> pd.Series | None:
    """The better dense baseline of an optimizer (higher mean final test accuracy)."""
    table = split_budget(table)[0]
    dense = table[(table.optimizer == optimizer) & table["rank"].isna()]
    return None if dense.empty else dense.loc[dense.mean_test.idxmax()]


def versus_dense(table: pd.DataFrame) -> pd.DataFrame:
    """Each factorized model of the comparison against its optimizer's better dense baseline:
    the difference in final test accuracy (points) with Welch's 95 % interval, one family per
    optimizer. ``worse``/``above``: detectably below/above dense after Holm's correction.
    ``matches``: non-inferior within :data:`MATCH_MARGIN` (the one-sided test of
    "more than the margin worse", Holm-corrected over the family, rejected at ALPHA/2, the
    level of the interval's lower end) and not detectably worse even uncorrected;
    ``matches_uncorrected``: the interval reaches zero and its lower end lies above
    −MATCH_MARGIN."""
    rows = []
    for opt, part in _main(table).groupby("optimizer", sort=False):
        ref = best_dense(table, opt)
        if ref is None:
            continue
        diffs = correct([_diff(row, ref) for _, row in part.iterrows()])
        present = [d for d in diffs if d is not None]
        ni = noninferior(diffs, MATCH_MARGIN)
        for (_, row), d, p_ni in zip(part.iterrows(), diffs, ni):
            p_ni = math.nan if p_ni is None else p_ni
            rows.append({"optimizer": opt, "init": row.init, "rank": int(row["rank"]),
                         "model": row.model, "params": row.params, "lr": row.lr,
                         "mean": row.mean_test, "std": row.std_test, "seeds": row.seeds,
                         "dense": ref.model, "diff": d.diff if d else math.nan,
                         "low": d.low if d else math.nan, "high": d.high if d else math.nan,
                         "p": d.p if d else math.nan, "p_holm": d.p_holm if d else math.nan,
                         "p_noninferior_holm": p_ni, "family": len(present),
                         "worse": bool(d and d.real and d.diff < 0),
                         "above": bool(d and d.real and d.diff > 0),
                         "matches": bool(d and d.high >= 0 and p_ni < ALPHA / 2),
                         "matches_uncorrected": bool(d and d.high >= 0
                                                     and d.low > -MATCH_MARGIN)})
    return pd.DataFrame(rows)


def smallest_matching(vs: pd.DataFrame, column: str = "matches") -> pd.DataFrame:
    """Per optimizer and init: the smallest rank that matches dense (``column``: "matches",
    Holm-corrected, or "matches_uncorrected"), or None."""
    rows = []
    for (opt, init), part in vs.groupby(["optimizer", "init"], sort=False):
        ok = part[part[column]].sort_values("rank")
        rows.append({"optimizer": opt, "init": init,
                     "smallest": int(ok["rank"].iloc[0]) if len(ok) else None})
    return pd.DataFrame(rows)


def init_effect(table: pd.DataFrame, values: str = "test_values") -> pd.DataFrame:
    """Per optimizer and rank (``values``: final or epoch-1 test accuracy): the best init,
    chosen on the *validation* split at the same point of training, the spread of the test
    means (best − worst by mean, untested), and which of the other inits lie detectably below
    the best on test (Welch, Holm-corrected over the optimizer's comparisons at every rank: one
    family per optimizer and ``values``; ``below_uncorrected``: by the interval alone) and
    which do not."""
    rows = []
    col, pick = (("mean_test", "mean_val") if values == "test_values"
                 else ("epoch1_test", "epoch1_val"))
    main = _main(table)
    for opt, by_opt in main.groupby("optimizer", sort=False):
        pending = []
        for rank, part in by_opt.groupby("rank", sort=False):
            if len(part) < 2:
                continue
            best = part.loc[part[pick].fillna(-math.inf).idxmax()]
            others = part.drop(index=best.name)
            pending.append((rank, part, best, others,
                            [_diff(o, best, values) for _, o in others.iterrows()]))
        fixed = iter(correct([d for *_, ds in pending for d in ds]))
        for rank, part, best, others, ds in pending:
            below, tied, above, raw = [], [], [], 0
            for (_, other), _d in zip(others.iterrows(), ds):
                d = next(fixed)
                if d and d.real:
                    (below if d.diff < 0 else above).append(other.init)
                else:
                    tied.append(other.init)
                raw += bool(d and d.real_uncorrected and d.diff < 0)
            rows.append({"optimizer": opt, "rank": int(rank), "best": best.init,
                         "best_mean": best[col], "spread": part[col].max() - part[col].min(),
                         "below": below, "above": above, "tied": tied,
                         "below_uncorrected": raw, "others": len(part) - 1})
    return pd.DataFrame(rows)


def _twin(main: pd.DataFrame, row) -> pd.Series | None:
    """The comparison's model with ``row``'s optimizer, rank and init (None if absent)."""
    twin = main[(main.optimizer == row.optimizer) & (main["rank"] == row["rank"])
                & (main.init == row.init)]
    return None if twin.empty else twin.iloc[0]


def _interval(a, b) -> dict:
    """mean(a) − mean(b) of final test accuracy with Welch's interval, as table columns
    (``d``: the Difference, for :func:`_corrected`)."""
    d = _diff(a, b)
    return {"diff": d.diff if d else math.nan, "low": d.low if d else math.nan,
            "high": d.high if d else math.nan, "d": d}


def _corrected(rows: list[dict], by: str | None = "optimizer") -> pd.DataFrame:
    """The comparisons ``rows`` (each with a Difference ``d``) as a table, Holm-corrected
    within each value of ``by`` (None: one family): ``real`` is the corrected decision,
    ``real_uncorrected`` the interval's, ``family`` the family's size."""
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    table["real"], table["real_uncorrected"], table["p_holm"], table["family"] = \
        False, False, math.nan, 0
    groups = table.groupby(by, sort=False).groups.values() if by else [table.index]
    for index in groups:
        for i, d in zip(index, correct(list(table.loc[index, "d"]))):
            if d is not None:
                table.loc[i, ["real", "real_uncorrected", "p_holm", "family"]] = \
                    [d.real, d.real_uncorrected, d.p_holm, d.family]
    return table.drop(columns="d")


def head_control(table: pd.DataFrame) -> pd.DataFrame:
    """Dense output layer against factorized output layer, same init, rank and optimizer
    (one Holm family per optimizer)."""
    main, rows = _main(table), []
    for _, h in table[table.method.map(lambda m: METHODS[m].dense_output)].iterrows():
        t = _twin(main, h)
        if t is not None:
            rows.append({"optimizer": h.optimizer, "init": h.init, "rank": int(h["rank"]),
                         "dense_head": h.mean_test, "factorized_head": t.mean_test,
                         **_interval(h, t)})
    return _corrected(rows)


def rescale_control(table: pd.DataFrame) -> pd.DataFrame:
    """A → cA, B → B/c against c = 1 (same init, rank, optimizer), each at its own tuned
    learning rate (one Holm family per optimizer)."""
    main, rows = _main(table), []
    for _, row in table[table.rescale != 1].iterrows():
        t = _twin(main, row)
        if t is not None:
            rows.append({"optimizer": row.optimizer, "init": row.init, "rank": int(row["rank"]),
                         "c": row.rescale, "lr": row.lr, "lr_c1": t.lr, "mean": row.mean_test,
                         "mean_c1": t.mean_test, **_interval(row, t)})
    return _corrected(rows)


def lr_theory_fit(table: pd.DataFrame, optimizer: str = "sgd") -> pd.DataFrame:
    """How well each of the theory's learning-rate multipliers m (average, per-direction)
    predicts the chosen rates: least squares of log10(chosen lr) on log10(m) over the
    comparison's factorized models, with R² and the slope (−1: the chosen rate is the dense
    one divided by m). The grid's resolution is half a decade, which bounds R² below 1."""
    import numpy as np
    from ..studies.theory import lr_multiplier
    main = _main(table[table.optimizer == optimizer])
    rows = []
    if len(main) < 3:
        return pd.DataFrame()
    y = np.log10(main.lr.to_numpy(dtype=float))
    if y.var() == 0:  # every model chose one rate: nothing to explain
        return pd.DataFrame()
    for kind in ("average", "directional"):
        x = np.log10([lr_multiplier(i, int(r), kind) for i, r in zip(main.init, main["rank"])])
        slope, icpt = np.polyfit(x, y, 1)
        resid = y - (slope * x + icpt)
        r2 = 1 - (resid ** 2).sum() / ((y - y.mean()) ** 2).sum() if y.var() > 0 else math.nan
        rows.append({"optimizer": optimizer, "multiplier": kind, "slope": slope, "r2": r2,
                     "models": len(main)})
    return pd.DataFrame(rows)


def budget_check(table: pd.DataFrame) -> pd.DataFrame:
    """The convergence check: each model retuned at more epochs against itself at the
    study's, final test accuracy (long − short) with Welch's interval; one Holm family."""
    main, long = split_budget(table)
    rows = []
    for _, row in long.iterrows():
        same = main[(main.optimizer == row.optimizer) & (main.method == row.method)
                    & (main.init == row.init) & (main.rescale == row.rescale)
                    & ((main["rank"] == row["rank"]) if pd.notna(row["rank"])
                       else main["rank"].isna())]
        if same.empty:
            continue
        t = same.iloc[0]
        rows.append({"optimizer": row.optimizer, "model": row.model, "epochs": t.epochs,
                     "epochs_long": row.epochs, "lr": t.lr, "lr_long": row.lr,
                     "mean": t.mean_test, "mean_long": row.mean_test,
                     "train_loss": t.train_loss, "train_loss_long": row.train_loss,
                     **_interval(row, t)})
    return _corrected(rows, by=None)


def long_gaps(table: pd.DataFrame) -> pd.DataFrame:
    """At the convergence check's budget: each factorized model against its optimizer's
    better dense baseline at that budget; one Holm family."""
    long = split_budget(table)[1]
    rows = []
    for opt in TUNED_PROTOCOLS:
        ref = long[(long.optimizer == opt) & long["rank"].isna()]
        if ref.empty:
            continue
        ref = ref.loc[ref.mean_test.idxmax()]
        for _, r in long[(long.optimizer == opt) & long["rank"].notna()].iterrows():
            rows.append({"optimizer": opt, "model": r.model, "dense": ref.model,
                         **_interval(r, ref)})
    return _corrected(rows, by=None)
