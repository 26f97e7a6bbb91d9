"""The fair comparison's headline: the README's short answer per optimizer, from
:func:`~lowrank_helpers.studies.tuned.tuned_table` (the long answer and the tables:
:mod:`.tuned`)."""
from __future__ import annotations

import pandas as pd

from .prose import count_of
from .tuned import OPTIMIZER_LABELS, _family, _pts
from .tuned_compare import (MATCH_MARGIN, best_dense, budget_check, head_control, init_effect,
                            long_gaps, lr_theory_fit, rescale_control, versus_dense)
from ..core.stats import spread_caveat
from ..studies.tuned import TUNED_PROTOCOLS, split_budget

def _span_seeds(table: pd.DataFrame) -> str:
    lo, hi = int(table.seeds.min()), int(table.seeds.max())
    return f"{lo}" if lo == hi else f"{lo}–{hi} ({hi} where two compared models lie within " \
        "half a point on validation)"


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
    several = table.seeds[table.seeds >= 2]
    out = [f"*Seeds: {_span_seeds(table)} per model at its chosen rate; every count names the "
           f"family Holm's correction ran over; "
           + (spread_caveat(int(several.min())) if len(several) else "") + ".*", ""]
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
                   f"{_pts(first.high)}, {int(first.seeds)} vs {int(ref.seeds)} seeds; "
                   f"{first.params / ref.params:.0%} of the dense "
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
        text = f"- **The init {when}**: best − worst init by mean (untested)"
        if len(small):
            text += (f" up to {100 * small.spread.max():.1f} points at ranks 1–4")
        if len(large):
            text += (f", up to {100 * large.spread.max():.1f} at ranks 16–128")
        real = sum(len(b) for b in eff.below)
        total = int(eff.others.sum())
        text += (f"; {real} of {total} (init, rank, optimizer) comparisons with the best init "
                 f"(picked on validation) are detectably below it on test after Holm's "
                 f"correction (a family per optimizer; {int(eff.below_uncorrected.sum())} "
                 "uncorrected)"
                 + (f", {sum(len(a) for a in eff.above)} detectably above it" if
                    sum(len(a) for a in eff.above) else "") + ".")
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
