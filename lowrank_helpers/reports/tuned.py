"""The fair comparison's prose and tables, from :func:`~lowrank_helpers.studies.tuned.tuned_table` and
the comparisons of :mod:`~lowrank_helpers.reports.tuned_compare`.

Each sentence that counts or selects among many comparisons names its *family* and calls a
difference detectable only where Holm's correction over that family keeps it below
:data:`~lowrank_helpers.core.stats.ALPHA`; the uncorrected interval stays beside it. The families:
each optimizer's factorized models against its better dense baseline; each optimizer's inits
against the best init (on validation) at each rank, after one epoch and at the end; each
optimizer's dense-head and rescaling controls; the convergence check; the factorized models
against dense at the longer budget.
"""
from __future__ import annotations

from dataclasses import replace

import pandas as pd

from ..methods import family_label
from .prose import count_of, settled_phrase
from ..core.stats import ALPHA
from .tuned_compare import (MATCH_MARGIN, _diff, _main, best_dense, budget_check,  # noqa: F401
                            head_control, init_effect, long_gaps, lr_theory_fit,
                            rescale_control, smallest_matching, versus_dense)
from ..studies.tuned import TUNED_PROTOCOLS, split_budget

OPTIMIZER_LABELS = {"sgd": "SGD with momentum", "adamw": "AdamW"}


def _pts(x: float) -> str:
    return f"{100 * x:+.2f}"


def _family(init: str) -> str:
    from ..methods import method_for_init
    method, name = method_for_init(init)
    return family_label(method, name)


def _unused_seeds(table: pd.DataFrame, runs: pd.DataFrame) -> int:
    """Records of a chosen setting whose seed the seed rule does not give (left out of every
    number; kept, since a record is never deleted)."""
    from ..studies.tuned import _keyed
    keyed = _keyed(runs)
    chosen = dict(zip(table.key, zip(table.lr, table.seeds)))
    return int(sum(1 for r in keyed.itertuples() if r.key in chosen
                   and r.lr == chosen[r.key][0] and r.seed >= chosen[r.key][1]))


def _method_text(table: pd.DataFrame) -> str:
    from ..core.stats import spread_caveat
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
        from .reference import training_minutes
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
        out.append("  Detectably above dense after correction: "
                   + ("; ".join(f"{r.model} {_pts(r.diff)} (CI {_pts(r.low)} to "
                                f"{_pts(r.high)}, Holm p = {r.p_holm:.2g})"
                                for r in above.itertuples()) if len(above) else "none")
                   + (" (by the uncorrected interval: "
                      + "; ".join(f"{r.model} {_pts(r.diff)}" for r in raw_above.itertuples())
                      + ")" if len(raw_above) > len(above) else "")
                   + f". Detectably below: {count_of(len(worse), n, 'models')}.")
    out.append("")
    out.append("**Does the init still matter once the learning rate is tuned?** Each line is "
               "a family: at each rank, the optimizer's other inits against the init with the "
               "best mean *validation* accuracy at that point of training, compared on test; "
               "the spread is best − worst test mean (untested).")
    for values, when in (("epoch1_values", "after one epoch"), ("test_values", "at the end")):
        eff = init_effect(table, values)
        for opt in TUNED_PROTOCOLS:
            part = eff[eff.optimizer == opt] if len(eff) else eff
            if part.empty:
                continue
            per_rank = "; ".join(
                f"r={r['rank']}: {len(r.below)} of {r.others} below {r.best}"
                + (f", {len(r.above)} above ({', '.join(r.above)})" if r.above else "")
                + f" (spread {100 * r.spread:.1f})" for _, r in part.iterrows())
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
