"""The fair comparison's tables and prose, from :func:`~lowrank_helpers.tuning.tuned_table`.

Every difference is mean(a) − mean(b) of final test accuracy over seeds with Welch's 95 %
interval (:mod:`lowrank_helpers.stats`). Each sentence that counts or selects among many
comparisons names its *family*, and calls a difference real only where Holm's correction over
that family keeps it below :data:`~lowrank_helpers.stats.ALPHA`; the uncorrected interval
stays beside it. The families: each optimizer's factorized models against its better dense
baseline; each optimizer's inits against the best init at each rank (after one epoch, at the
end); each optimizer's dense-head and rescaling controls; the convergence check; the
factorized models against dense at the longer budget.
"""
from __future__ import annotations

import math
from dataclasses import replace

import pandas as pd

from .methods import METHODS, family_label
from .prose import count_of, settled_phrase, upper_bound
from .stats import ALPHA, correct, welch
from .tuning import TUNED_PROTOCOLS, split_budget

OPTIMIZER_LABELS = {"sgd": "SGD with momentum", "adamw": "AdamW"}
#: A model matches dense when Welch's interval for (model − dense) reaches zero *and* lies
#: above −MATCH_MARGIN: not detectably worse, and detectably no more than half a point worse.
MATCH_MARGIN = 0.005


def _pts(x: float) -> str:
    return f"{100 * x:+.2f}"


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
    from .stats import holm
    rows = []
    for opt, part in _main(table).groupby("optimizer", sort=False):
        ref = best_dense(table, opt)
        if ref is None:
            continue
        diffs = correct([_diff(row, ref) for _, row in part.iterrows()])
        present = [d for d in diffs if d is not None]
        ni = iter(holm([d.p_above(-MATCH_MARGIN) for d in present]))
        for (_, row), d in zip(part.iterrows(), diffs):
            p_ni = next(ni) if d is not None else math.nan
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
    Holm-corrected, or "matches_uncorrected"), and the smallest from which every larger rank
    does too."""
    rows = []
    for (opt, init), part in vs.groupby(["optimizer", "init"], sort=False):
        part = part.sort_values("rank")
        ok = part[part[column]]
        tail = None
        for r, m in zip(part["rank"][::-1], part[column][::-1]):
            if not m:
                break
            tail = r
        rows.append({"optimizer": opt, "init": init,
                     "smallest": int(ok["rank"].iloc[0]) if len(ok) else None,
                     "from_on": tail})
    return pd.DataFrame(rows)


def init_effect(table: pd.DataFrame, values: str = "test_values") -> pd.DataFrame:
    """Per optimizer and rank: the best init by mean (``values``: final or epoch-1 test
    accuracy), the spread to the worst, and which of the other inits lie detectably below the
    best (Welch, Holm-corrected over the optimizer's comparisons at every rank: one family
    per optimizer and ``values``; ``below_uncorrected``: by the interval alone) and which do
    not. The best is picked by the same means, which favours finding others below it."""
    rows = []
    col = "mean_test" if values == "test_values" else "epoch1_test"
    main = _main(table)
    for opt, by_opt in main.groupby("optimizer", sort=False):
        pending = []
        for rank, part in by_opt.groupby("rank", sort=False):
            if len(part) < 2:
                continue
            best, worst = part.loc[part[col].idxmax()], part.loc[part[col].idxmin()]
            others = part.drop(index=best.name)
            pending.append((rank, part, best, worst, others,
                            [_diff(best, o, values) for _, o in others.iterrows()]))
        fixed = iter(correct([d for *_, ds in pending for d in ds]))
        for rank, part, best, worst, others, ds in pending:
            below, tied, raw = [], [], 0
            for (_, other), _d in zip(others.iterrows(), ds):
                d = next(fixed)
                (below if d and d.real else tied).append(other.init)
                raw += bool(d and d.real_uncorrected)
            rows.append({"optimizer": opt, "rank": int(rank), "best": best.init,
                         "worst": worst.init, "best_mean": best[col],
                         "spread": best[col] - worst[col], "below": below, "tied": tied,
                         "below_uncorrected": raw, "others": len(part) - 1})
    return pd.DataFrame(rows)


def _twin(main: pd.DataFrame, row) -> pd.Series | None:
    """The comparison's model with ``row``'s optimizer, rank and init (None if absent)."""
    twin = main[(main.optimizer == row.optimizer) & (main["rank"] == row["rank"])
                & (main.init == row.init)]
    return None if twin.empty else twin.iloc[0]


def _interval(a, b) -> dict:
    """mean(a) − mean(b) of final test accuracy with Welch's interval, as table columns
    (``d``: the Difference, for :func:`_family`)."""
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
    from .theory import lr_multiplier
    main = _main(table[table.optimizer == optimizer])
    rows = []
    if len(main) < 3:
        return pd.DataFrame()
    y = np.log10(main.lr.to_numpy(dtype=float))
    for kind in ("average", "directional"):
        x = np.log10([lr_multiplier(i, int(r), kind) for i, r in zip(main.init, main["rank"])])
        slope, icpt = np.polyfit(x, y, 1)
        resid = y - (slope * x + icpt)
        r2 = 1 - (resid ** 2).sum() / ((y - y.mean()) ** 2).sum() if y.var() > 0 else math.nan
        rows.append({"optimizer": optimizer, "multiplier": kind, "slope": slope, "r2": r2,
                     "models": len(main)})
    return pd.DataFrame(rows)


def _family(init: str) -> str:
    from .methods import method_for_init
    method, name = method_for_init(init)
    return family_label(method, name)


def _ranks(ranks) -> str:
    ranks = sorted(int(r) for r in ranks)
    return ", ".join(map(str, ranks)) if ranks else "none"


def _unused_seeds(table: pd.DataFrame, runs: pd.DataFrame) -> int:
    """Records of a chosen setting whose seed the seed rule does not give (left out of every
    number; kept, since a record is never deleted)."""
    from .tuning import _keyed
    keyed = _keyed(runs)
    chosen = dict(zip(table.key, zip(table.lr, table.seeds)))
    return int(sum(1 for r in keyed.itertuples() if r.key in chosen
                   and r.lr == chosen[r.key][0] and r.seed >= chosen[r.key][1]))


def _method_text(table: pd.DataFrame) -> str:
    from .stats import spread_caveat
    several = table.seeds[table.seeds >= 2]
    return (f"Differences are in points of final test accuracy, mean over seeds, with Welch's "
            f"95 % interval (uncorrected). A sentence that counts or selects among many "
            f"comparisons calls a difference detectable only where Holm's correction over the "
            f"family it names keeps it below {ALPHA:g} (family-wise)."
            + (f" {spread_caveat(int(several.min())).capitalize()}." if len(several) else ""))


def _match_line(vs: pd.DataFrame, opt: str) -> str:
    """Per init: the smallest rank that matches dense, corrected [uncorrected]."""
    part = vs[vs.optimizer == opt]
    corrected = smallest_matching(part).set_index("init")
    raw = smallest_matching(part, "matches_uncorrected").set_index("init")
    items = []
    for init in corrected.index:
        c, u = corrected.loc[init, "smallest"], raw.loc[init, "smallest"]
        c = "none" if pd.isna(c) else f"r={int(c)}"
        u = "none" if pd.isna(u) else f"r={int(u)}"
        items.append(f"{init} {c} [{u}]")
    return "; ".join(items)


def tuned_answer(table: pd.DataFrame, runs: pd.DataFrame | None = None) -> str:
    """The README's and the notebook's answers to the fair comparison's three questions, with
    the numbers, from the records' table (``runs``: the records themselves, for the count of
    runs, the training time and the records the seed rule leaves out)."""
    if table.empty:
        return "*No tuned records yet: run `lowrank-study tune`.*"
    table, long = split_budget(table)
    out = []
    seeds = table.seeds
    epochs = sorted(set(table.epochs))
    cost = ""
    if runs is not None and len(runs):
        from .report import training_minutes
        runs = runs.drop_duplicates("run_id")
        devices = ", ".join(sorted(set(runs.device.dropna())))
        unused = _unused_seeds(pd.concat([table, long]), runs)
        cost = (f" {len(runs)} runs in all (searches, seeds, controls, the convergence check), "
                f"{training_minutes(runs):.0f} minutes of training on {devices}, summed over "
                f"the stacks of models trained together (each stack on one core)"
                + (f"; {unused} of them are seeds of a chosen setting beyond what the seed "
                   "rule gives (trained under an earlier rule that read test means), kept but "
                   "left out of every number" if unused else "") + ".")
    out.append(f"*{len(table)} tuned models ({seeds.min()}–{seeds.max()} seeds each at the "
               f"chosen rate: {seeds.max()} where two compared models lie within half a point "
               f"on the validation split), {', '.join(map(str, epochs))} epochs. "
               + _method_text(table) + cost + "*")
    out.append("")
    vs = versus_dense(table)
    out.append("**At equal tuning, the smallest rank that matches dense**, per init: "
               f"non-inferior to the better dense baseline within {100 * MATCH_MARGIN:.1f} "
               f"points (one-sided test at {ALPHA / 2:g}, Holm-corrected over the optimizer's "
               "factorized models) and not detectably below it; in brackets the smallest rank "
               "by the uncorrected interval alone (it reaches zero and its lower end lies above "
               f"−{100 * MATCH_MARGIN:.1f}):")
    for opt in TUNED_PROTOCOLS:
        ref = best_dense(table, opt)
        part = vs[vs.optimizer == opt] if len(vs) else vs
        if ref is None or part.empty:
            continue
        dense = table[(table.optimizer == opt) & table["rank"].isna()]
        base = "; ".join(f"{r.model} {r.mean_test:.2%} ± {100 * r.std_test:.2f} "
                         f"({r.seeds} seeds, lr {r.lr:g})" for r in dense.itertuples())
        n = int(part.family.iloc[0])
        out.append(f"- {OPTIMIZER_LABELS[opt]} (dense: {base}; a family of {n}): "
                   + _match_line(vs, opt) + ".")
        hits = part[part.matches]
        if len(hits):
            out.append("  Matching after correction: " + "; ".join(
                f"{r.model} {_pts(r.diff)} (CI {_pts(r.low)} to {_pts(r.high)}, Holm "
                f"non-inferiority p = {r.p_noninferior_holm:.2g})" for r in hits.itertuples())
                + ".")
        above, worse = part[part.above], part[part.worse]
        raw_above = part[part.low > 0]
        out.append(f"  Detectably above dense after correction: "
                   + ("; ".join(f"{r.model} {_pts(r.diff)} (CI {_pts(r.low)} to "
                                f"{_pts(r.high)}, Holm p = {r.p_holm:.2g})"
                                for r in above.itertuples()) if len(above) else "none")
                   + (f" (by the uncorrected interval: "
                      + "; ".join(f"{r.model} {_pts(r.diff)}" for r in raw_above.itertuples())
                      + ")" if len(raw_above) > len(above) else "")
                   + f". Detectably below: {count_of(len(worse), n, 'models')}.")
    out.append("")
    out.append("**Does the init still matter once the learning rate is tuned?** Each line is "
               "a family: the optimizer's inits against the best init at each rank (the best "
               "is picked by the same means, which favours finding the others below it).")
    for values, when in (("epoch1_values", "after one epoch"), ("test_values", "at the end")):
        eff = init_effect(table, values)
        for opt in TUNED_PROTOCOLS:
            part = eff[eff.optimizer == opt] if len(eff) else eff
            if part.empty:
                continue
            per_rank = "; ".join(
                f"r={r['rank']}: {len(r.below)} of {r.others} below {r.best} "
                f"(spread {100 * r.spread:.1f})" for _, r in part.iterrows())
            ties = [f"r={r['rank']}: {', '.join(r.tied)}" for _, r in part.iterrows() if r.tied]
            n, real = int(part.others.sum()), sum(len(b) for b in part.below)
            out.append(f"- {OPTIMIZER_LABELS[opt]}, {when}, inits detectably below the best "
                       f"(Holm over {n}; {real} detectable, {int(part.below_uncorrected.sum())} "
                       f"uncorrected): {per_rank}."
                       + (f" Not distinguishable from the best: {'; '.join(ties)}." if ties
                          else ""))
    fit = lr_theory_fit(table)
    if len(fit):
        out.append("- Which theory predicts the chosen SGD rates? Over "
                   f"{fit.models.iloc[0]} factorized models, log(chosen lr) against log of "
                   + " and of ".join(f"the {r.multiplier} multiplier: R² = {r.r2:.2f}, slope "
                                     f"{r.slope:.2f}" for r in fit.itertuples()) + ".")
    out.append("")
    out.append("**Controls** (each line a family).")
    head = head_control(table)
    for opt in TUNED_PROTOCOLS:
        part = head[head.optimizer == opt] if len(head) else head
        if part.empty:
            continue
        out.append(f"- Dense output layer, {OPTIMIZER_LABELS[opt]}: "
                   + "; ".join(f"{r.init} r={r.rank} {_pts(r.diff)} (CI {_pts(r.low)} to "
                               f"{_pts(r.high)})" for r in part.sort_values(["init", "rank"])
                               .itertuples())
                   + f". Detectable after Holm's correction at {int(part.real.sum())} of "
                   f"{len(part)} ({int(part.real_uncorrected.sum())} uncorrected).")
    resc = rescale_control(table)
    for opt in TUNED_PROTOCOLS:
        part = resc[resc.optimizer == opt] if len(resc) else resc
        if part.empty:
            continue
        out.append(f"- A → cA, B → B/c, {OPTIMIZER_LABELS[opt]}, each at its own tuned rate: "
                   + "; ".join(f"{r.init} r={r.rank} c={r.c:g} {_pts(r.diff)} (CI "
                               f"{_pts(r.low)} to {_pts(r.high)}, lr {r.lr:g} vs {r.lr_c1:g})"
                               for r in part.sort_values(["init", "rank", "c"]).itertuples())
                   + f". Detectable after Holm's correction at {int(part.real.sum())} of "
                   f"{len(part)} ({int(part.real_uncorrected.sum())} uncorrected).")
    edges = table[table.edge.notna()]
    check = budget_check(pd.concat([table, long]))
    out.append("")
    if len(check):
        out.append(f"**Trained longer.** Retuned at {int(check.epochs_long.iloc[0])} epochs "
                   f"instead of {int(check.epochs.iloc[0])} (rates around the short choice): "
                   + "; ".join(f"{r.model} ({r.optimizer}) {_pts(r['diff'])} (CI {_pts(r.low)} "
                               f"to {_pts(r.high)})" for _, r in check.iterrows())
                   + f". Detectable after Holm's correction over {len(check)} at "
                   f"{int(check.real.sum())} ({int(check.real_uncorrected.sum())} uncorrected).")
    settled = table.late_val_gain.abs() < 0.005
    moving = table[~settled].sort_values("late_val_gain", ascending=False)
    unstable = table[table.diverged > 0]
    out.append("")
    shown = ", ".join(f"{r.model} ({r.optimizer}, {100 * r.late_val_gain:+.1f})"
                      for r in moving.head(8).itertuples())
    more = f" and {len(moving) - 8} more" if len(moving) > 8 else ""
    out.append(
        f"*Over the last quarter of training (the end of the cosine decay, where it gains most; "
        f"whether more epochs help is what the retuned check above says), with a threshold of "
        f"0.5 points of validation accuracy (mean over seeds; median change "
        f"{100 * table.late_val_gain.median():+.2f}): "
        + settled_phrase(int(settled.sum()), len(table))
        + (f". Largest late gains: {shown}{more}" if len(moving) else "")
        + f". Median final train loss {table.train_loss.median():.3f}. "
        + ("Seeds that diverged at the chosen rate: " + ", ".join(
            f"{r.model} ({r.optimizer}, {r.diverged} of {r.seeds})"
            for r in unstable.itertuples()) + ". " if len(unstable) else "")
        + (f"{len(edges)} choices lie at the edge of their extended grid: "
           + ", ".join(f"{r.model} ({r.optimizer}, lr {r.lr:g})" for r in edges.itertuples())
           + "." if len(edges) else "Every chosen rate lies inside its grid.") + "*")
    return "\n".join(out)


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


def _and(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _largest(part: pd.DataFrame, sign: int) -> str:
    """The most extreme *detectable* difference of sign ``sign`` in ``part`` (a corrected
    table), or "none detectable"."""
    real = part[part.real & (sign * part["diff"] > 0)]
    if real.empty:
        return "none detectable"
    row = real.loc[(sign * real["diff"]).idxmax()]
    return f"{_pts(row['diff'])}, CI {_pts(row.low)} to {_pts(row.high)}"


def tuned_headline(table: pd.DataFrame) -> str:
    """The answers in a few sentences, each number computed here from the records' table, each
    count Holm-corrected over the family it names (the full answer, :func:`tuned_answer`,
    gives every comparison behind them)."""
    if table.empty:
        return "*No tuned records yet: run `lowrank-study tune`.*"
    full, table = table, split_budget(table)[0]
    out = []
    vs = versus_dense(table)
    for opt in TUNED_PROTOCOLS:
        part = vs[vs.optimizer == opt] if len(vs) else vs
        ref = best_dense(table, opt)
        if ref is None or part.empty:
            continue
        n, label = int(part.family.iloc[0]), OPTIMIZER_LABELS[opt]
        hits, raw = part[part.matches], part[part.matches_uncorrected]
        raw_text = (f"by uncorrected intervals alone the smallest is r={int(raw['rank'].min())} "
                    f"({', '.join(raw[raw['rank'] == raw['rank'].min()].init)})" if len(raw)
                    else "none by uncorrected intervals either")
        if hits.empty:
            out.append(f"- **{label}: no factorized model is shown to match dense** "
                       f"({ref.model}, {ref.mean_test:.2%}) at any rank up to "
                       f"{int(part['rank'].max())} after Holm's correction over its {n} "
                       f"factorized models; {raw_text}.")
            continue
        r0 = int(hits["rank"].min())
        at = part[part["rank"] == r0]
        first = hits[hits["rank"] == r0].sort_values("diff", ascending=False).iloc[0]
        out.append(f"- **{label}: the smallest rank at which a factorized model matches dense is "
                   f"{r0}** with the {_and(list(hits[hits['rank'] == r0].init))} init"
                   f"{'s' if (hits['rank'] == r0).sum() > 1 else ''} "
                   f"({_family(first.init)} {first['mean']:.2%} against {ref.model} "
                   f"{ref.mean_test:.2%}, {_pts(first['diff'])} points, CI {_pts(first.low)} to "
                   f"{_pts(first.high)}; {first.params / ref.params:.0%} of the dense "
                   f"parameters): non-inferior within {100 * MATCH_MARGIN:.1f} points after "
                   f"Holm's correction over its {n} factorized models, the minimum over "
                   f"{part.init.nunique()} inits. At r={r0}, "
                   f"{count_of(int(at.worse.sum()), len(at), 'inits')} are detectably below "
                   f"dense; {raw_text}.")
    for values, when in (("epoch1_values", "after one epoch"), ("test_values", "at the end")):
        eff = init_effect(table, values)
        if eff.empty:
            continue
        small, large = eff[eff["rank"] <= 4], eff[eff["rank"] >= 16]
        text = f"- **The init {when}**: best − worst init"
        if len(small):
            text += (f" up to {100 * small.spread.max():.1f} points at ranks 1–4")
        if len(large):
            text += (f", up to {100 * large.spread.max():.1f} at ranks 16–128")
        real = sum(len(b) for b in eff.below)
        total = int(eff.others.sum())
        text += (f"; {real} of {total} (init, rank, optimizer) comparisons with the best init "
                 f"are detectably below it after Holm's correction (a family per optimizer; "
                 f"{int(eff.below_uncorrected.sum())} uncorrected).")
        out.append(text)
    check = budget_check(full)
    if len(check):
        long = split_budget(full)[1]
        dense_rows = check.model.isin(set(long[long["rank"].isna()].model))
        gaps = long_gaps(full)

        def span(c):
            real = c[c.real]
            return (f"{_pts(real['diff'].min())} to {_pts(real['diff'].max())}" if len(real)
                    else "none detectable")
        below = int((gaps.real & (gaps["diff"] < 0)).sum()) if len(gaps) else 0
        out.append(f"- **Not converged at {int(check.epochs.iloc[0])} epochs**: retuned at "
                   f"{int(check.epochs_long.iloc[0])}, {int(check.real.sum())} of {len(check)} "
                   f"checked models gain detectably after Holm's correction over "
                   f"{len(check)} (dense {span(check[dense_rows])}, factorized "
                   f"{span(check[~dense_rows])} points); at "
                   f"{int(check.epochs_long.iloc[0])} epochs "
                   f"{count_of(below, len(gaps), 'checked factorized models')} are detectably "
                   f"below the better dense baseline (Holm over {len(gaps)}).")
    head = head_control(table)
    if len(head):
        at = lambda rs: head[head["rank"].isin(rs)]  # noqa: E731
        lo, hi = at([1, 2]), at([4, 8])
        out.append(f"- **A dense output layer** instead of the factorized one (Holm over each "
                   f"optimizer's {int(head.family.max())}): at ranks 1–2 it is detectably "
                   f"better in {int((lo.real & (lo['diff'] > 0)).sum())} of {len(lo)} "
                   f"comparisons (largest detectable {_largest(lo, 1)}); at ranks 4–8 in "
                   f"{int((hi.real & (hi['diff'] > 0)).sum())} of {len(hi)} (largest "
                   f"detectable {_largest(hi, 1)}).")
    resc = rescale_control(table)
    if len(resc):
        parts = []
        for opt in TUNED_PROTOCOLS:
            r = resc[resc.optimizer == opt]
            if len(r):
                worst = _largest(r, -1)
                parts.append(f"{OPTIMIZER_LABELS[opt]}: {int((r.real & (r['diff'] < 0)).sum())} of "
                             f"{len(r)} detectably worse than c = 1"
                             + ("" if worst == "none detectable" else
                                f" (largest detectable: {worst})")
                             + f", {int((r.real & (r['diff'] > 0)).sum())} better")
        out.append("- **Rescaling the factors** (the same function, each at its own tuned "
                   "rate; Holm over each optimizer's comparisons): " + "; ".join(parts) + ".")
    fit = lr_theory_fit(table)
    if len(fit):
        avg, per = (fit[fit.multiplier == k].iloc[0] for k in ("average", "directional"))
        better, worse = (per, avg) if per.r2 >= avg.r2 else (avg, per)
        name = {"directional": "per-direction learning rate", "average": "average learning "
                "rate over directions"}
        out.append(f"- **The chosen SGD rates follow the theory's {name[better.multiplier]}** "
                   f"(log-log fit over {better.models} factorized models: R² = {better.r2:.2f}, "
                   f"slope {better.slope:.2f}) more than its {name[worse.multiplier]} "
                   f"(R² = {worse.r2:.2f}).")
    return "\n".join(out)


def tuned_grid(table: pd.DataFrame, optimizer: str) -> pd.DataFrame:
    """Final test accuracy (%, mean ± std over seeds, and the chosen lr) of one optimizer's
    comparison: a row per rank (dense baselines first), a column per init."""
    part = table[table.optimizer == optimizer]
    cell = lambda r: (f"{100 * r.mean_test:.2f} ± {100 * r.std_test:.2f}"  # noqa: E731
                      if r.std_test == r.std_test else f"{100 * r.mean_test:.2f}") + \
        f" (lr {r.lr:g})"
    rows = [{"model": r.model, **{"": cell(r)}} for r in part[part["rank"].isna()].itertuples()]
    dense = pd.DataFrame(rows)
    main = _main(part)
    grid = main.assign(cell=[cell(r) for r in main.itertuples()],
                       family=[_family(i) for i in main.init]) \
        .pivot(index="rank", columns="family", values="cell")
    grid.index = [f"r={int(r)}" for r in grid.index]
    return dense, grid.rename_axis(index="rank", columns=None)


def tuned_tables_markdown(table: pd.DataFrame) -> str:
    """The README's tables of the tuned comparison, one per optimizer."""
    out = []
    table = split_budget(table)[0]
    for opt in TUNED_PROTOCOLS:
        if not (table.optimizer == opt).any():
            continue
        dense, grid = tuned_grid(table, opt)
        epochs = int(table[table.optimizer == opt].epochs.iloc[0])
        shown = replace(TUNED_PROTOCOLS[opt], epochs=epochs).describe().split(", ", 1)[1]
        out.append(f"**{OPTIMIZER_LABELS[opt]}** ({shown}"
                   f"; lr per model). Dense: "
                   + "; ".join(f"{r.model} {r._2}" for r in dense.itertuples()) + ".")
        out.append("")
        out.append(grid.to_markdown())
        out.append("")
    return "\n".join(out).rstrip()


def tuned_summary(table: pd.DataFrame) -> pd.DataFrame:
    """The table shown in the notebook: per optimizer and model, the chosen rate and the
    seeds' final test accuracy (percent), train loss and late validation gain."""
    if table.empty:
        return table
    t = table.copy()  # the convergence check's rows too (their epochs tell them apart)
    t["test %"] = [f"{100 * m:.2f} ± {100 * s:.2f}" if s == s else f"{100 * m:.2f}"
                   for m, s in zip(t.mean_test, t.std_test)]
    t["epoch 1 %"] = (100 * t.epoch1_test).round(1)
    t["late val gain"] = (100 * t.late_val_gain).round(2)
    return t[["optimizer", "model", "epochs", "params", "lr", "tried", "unstable", "edge",
              "seeds", "test %", "epoch 1 %", "train_loss", "late val gain"]].rename(
        columns={"train_loss": "train loss"})
