"""The language-model study's tables and answers, computed from its records.

Every model is reported at its chosen rate (the one search's rule,
:func:`~lowrank_helpers.studies.search.choose`: the lowest loss on the tuning slice); every difference
is Welch's interval over seeds (:mod:`lowrank_helpers.core.stats`).
Losses are held-out (the corpus's last 10 %), in nats per character; bits are nats / ln 2.
"""
from __future__ import annotations

import math

import pandas as pd

from ..studies.search import choose
from ..core.stats import welch

#: nanoGPT itself at its CPU configuration on this machine class (issue 11: 4 layers, 4 heads,
#: d_model 128, context 64, batch 12, 2,000 iterations): its reported validation loss, wall
#: time and time per iteration. An outside reference, as the original study's figures are.
NANOGPT_CPU = {"val_loss": 1.886, "seconds": 98.0, "ms_per_iter": 42.0,
               "tokens_per_iter": 768, "tolerance": 0.05}
#: GaLore (Zhao et al., ICML 2024, Table 2): LLaMA on C4, validation perplexity, full-rank
#: against every weight a from-scratch product W = BA ("Low-Rank").
GALORE_TABLE = [
    {"model": "60M", "rank": "128 of 256", "full_rank": 34.06, "low_rank": 78.18},
    {"model": "130M", "rank": "256 of 768", "full_rank": 25.08, "low_rank": 45.51},
    {"model": "350M", "rank": "256 of 1024", "full_rank": 18.80, "low_rank": 37.41},
    {"model": "1B", "rank": "512 of 2048", "full_rank": 15.56, "low_rank": 142.53},
]
LN2 = math.log(2.0)
#: How close (relative) two models' counts must be to compare them "at equal" parameters
#: (a narrower dense model against a factorized one) or optimizer memory.
EQUAL_WITHIN = 0.10


def anchor_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """The dense model trained on the whole training split (tune_chars 0) at d_model 128."""
    return runs[(runs.factorize == "none") & (runs.tune_chars == 0)]


#: The study's models trained from scratch (the SVD-started control, ``svd_start``, is reported
#: on its own, :mod:`.lm_gap`).
SCRATCH = ("full", "lora")


def study_runs(runs: pd.DataFrame, methods=SCRATCH) -> pd.DataFrame:
    """The runs of ``methods`` tuned on the tuning slice."""
    return runs[(runs.tune_chars > 0) & runs.method.isin(list(methods))]


def lm_table(runs: pd.DataFrame, methods=SCRATCH) -> pd.DataFrame:
    """One row per model of ``methods`` at its chosen rate: seeds, held-out loss (nats and
    bits, mean and std), parameters, training FLOPs per token, seconds per run (its stack's
    wall time over the models trained in it) and the rates tried."""
    rows = []
    for key, g in study_runs(runs, methods).groupby("model_key"):
        lr = choose(g).lr if (g.seed == 0).any() else None
        tried = sorted(g[g.seed == 0].lr.unique())
        at = g[g.lr == lr] if lr is not None else g.iloc[:0]
        first = g.iloc[0]
        rows.append({
            "model_key": key, "label": first.label, "factorize": first["factorize"],
            "method": first.method, "n_head": int(first.n_head),
            "rank": first["rank"], "init": first["init"], "d_model": int(first.d_model),
            "lr": lr, "edge": lr is not None and lr in (tried[0], tried[-1]),
            "lrs_tried": tried, "seeds": len(at),
            "val_loss": at.val_loss.mean(), "val_std": at.val_loss.std(),
            "val_bits": at.val_loss.mean() / LN2, "tune_loss": at.tune_loss.mean(),
            "parameters": int(first.parameters),
            "flops_per_token": int(first.training_flops_per_token),
            "seconds": (at.seconds / at.stack_size).mean(), "losses": list(at.sort_values("seed").val_loss),
            "run_ids": list(at.run_id)})
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    order = {"none": 0, "both": 1, "attn": 2, "mlp": 3}
    table["_o"] = table.factorize.map(order)
    return (table.sort_values(["_o", "rank", "init", "d_model"], na_position="first")
            .drop(columns="_o").reset_index(drop=True))


def dense_row(table: pd.DataFrame, d_model: int | None = None) -> pd.Series:
    dense = table[table.factorize == "none"]
    if dense.empty:
        raise ValueError("the records hold no dense model of the study (tuned on the tuning "
                         "slice), which every comparison is against: run the search phase "
                         "first (lowrank-study lm --phases search ...)")
    d_model = d_model or int(dense.d_model.max())
    return dense[dense.d_model == d_model].iloc[0]


def versus(a: pd.Series, b: pd.Series):
    """Welch's difference of held-out loss, a − b (nats; negative: a is better), or None
    with fewer than 2 seeds on a side."""
    if len(a.losses) < 2 or len(b.losses) < 2:
        return None
    return welch(a.losses, b.losses)


def narrow_for(table: pd.DataFrame, row: pd.Series) -> pd.Series | None:
    """The narrower dense model closest in parameters to ``row`` (within
    :data:`EQUAL_WITHIN`), or None."""
    dense = table[(table.factorize == "none") & (table.d_model < dense_row(table).d_model)]
    if dense.empty:
        return None
    best = dense.iloc[(dense.parameters - row.parameters).abs().argmin()]
    return best if abs(best.parameters / row.parameters - 1) <= EQUAL_WITHIN else None


def _nats(d) -> str:
    return d.describe(scale=1.0, unit=" nats") if d is not None else "(fewer than 2 seeds)"


def lm_comparisons(table: pd.DataFrame) -> pd.DataFrame:
    """Each factorized model against the dense model (equal steps) and against the narrower
    dense model of its parameter count (equal parameters)."""
    dense = dense_row(table)
    rows = []
    for _, row in table[table.factorize != "none"].iterrows():
        nar = narrow_for(table, row)
        d_dense, d_narrow = versus(row, dense), versus(row, nar) if nar is not None else None
        rows.append({"model": row.label, "parameters": row.parameters,
                     "val_loss": row.val_loss, "vs_dense": d_dense,
                     "narrow": None if nar is None else nar.label,
                     "narrow_loss": None if nar is None else nar.val_loss,
                     "vs_narrow": d_narrow})
    return pd.DataFrame(rows)


def lm_tables_markdown(table: pd.DataFrame) -> str:
    """The README's table: every model at its chosen rate."""
    dense = dense_row(table)
    out = ["| model | params | MFLOP/token | lr | seeds | held-out loss (nats) | bits/char | "
           f"Δ vs {dense.label} (nats, 95 % CI) | s/run |", "|---|---|---|---|---|---|---|---|---|"]
    for _, r in table.iterrows():
        d = versus(r, dense) if r.model_key != dense.model_key else None
        ci = "—" if d is None else f"{d.diff:+.3f} ({d.low:+.3f} to {d.high:+.3f})"
        edge = " (edge)" if r.edge else ""
        out.append(f"| {r.label} | {r.parameters / 1e3:.0f}k | {r.flops_per_token / 1e6:.2f} | "
                   f"{r.lr:g}{edge} | {r.seeds} | {r.val_loss:.3f} ± {r.val_std:.3f} | "
                   f"{r.val_bits:.3f} | {ci} | {r.seconds:.0f} |")
    return "\n".join(out)


def anchor_summary(runs: pd.DataFrame) -> dict:
    a = anchor_runs(runs)
    mean = a.val_loss.mean()
    return {"seeds": len(a), "val_loss": mean, "val_std": a.val_loss.std(),
            "val_bits": mean / LN2, "seconds": a.seconds.mean(),
            "stack_size": int(a.stack_size.max()) if len(a) else 0,
            "nanogpt": NANOGPT_CPU["val_loss"],
            "within": abs(mean - NANOGPT_CPU["val_loss"]) <= NANOGPT_CPU["tolerance"]}


def sweep_seconds(runs: pd.DataFrame) -> float:
    """Wall time of every stack the records came from, summed (a stack's M records share
    its seconds): records of any task."""
    return float((runs.wall_time / runs.stack_size.fillna(1)).sum()) if len(runs) else 0.0


def energy_beyond(runs: pd.DataFrame, ranks, key: str = "singular_values"
                  ) -> dict[int, float]:
    """Mean over the trained anchor models' block matrices (all seeds) of the share of each
    matrix's energy Σσ² that lies beyond rank r: how much rank the dense model uses.
    ``key``: ``"singular_values"`` (the trained W) or ``"learned_singular_values"`` (its learned
    part W − γ·W₀, where the records hold it)."""
    import json
    from pathlib import Path
    import numpy as np
    shares = {r: [] for r in ranks}
    for path in anchor_runs(runs).path:
        rec = json.loads(Path(path).read_text())
        for sv in (rec.get("analysis") or {}).get(key, {}).values():
            e = np.asarray(sv) ** 2
            for r in ranks:
                shares[r].append(float(e[r:].sum() / e.sum()))
    return {r: float(np.mean(v)) for r, v in shares.items() if v}


def init_decays(runs: pd.DataFrame) -> list[float]:
    """The anchors' γ (the init's shrinkage by weight decay), where their records hold it."""
    import json
    from pathlib import Path
    return [rec["analysis"]["init_decay"] for rec in
            (json.loads(Path(p).read_text()) for p in anchor_runs(runs).path)
            if "init_decay" in (rec.get("analysis") or {})]


def _span(values, fmt: str) -> str:
    lo, hi = min(values), max(values)
    return f"{lo:{fmt}}" if f"{lo:{fmt}}" == f"{hi:{fmt}}" else f"{lo:{fmt}}–{hi:{fmt}}"


#: What the linear teacher–student control can and cannot show (one statement, used by the
#: README's answer and the notebook).
TEACHER_SCOPE = (
    "A linear teacher with Gaussian inputs under squared loss is the easy case: ‖W − BA‖² has "
    "no spurious local minima (Baldi & Hornik, 1989), so students at the floor are what theory "
    "predicts. The control shows that these inits and this AdamW schedule reach that floor in "
    "its budget at a suitable rate; it says nothing about whether B·A finds a rank-r solution "
    "of a nonlinear transformer under cross-entropy.")


def teacher_line(students: pd.DataFrame, tolerance: float = 1e-3) -> str:
    """The teacher–student control, every student at every rate: how many end more than
    ``tolerance`` (a share of the teacher's energy, which is 1) above the Eckart–Young floor,
    per rate, and the largest excess of the best rate per (spectrum, init, rank) as an upper
    bound; then what the control can and cannot show (:data:`TEACHER_SCOPE`)."""
    from .prose import count_of, upper_bound
    from ..studies.teacher import best_students
    df = students.assign(excess=students.loss - students.floor)
    per_rate = []
    for lr, g in df.groupby("lr"):
        above = int((g.excess > tolerance).sum())
        per_rate.append(f"lr {lr:g}: {count_of(len(g) - above, len(g))} within "
                        f"{tolerance:g} (largest excess {upper_bound(g.excess.max())})")
    best = best_students(students)
    worst = best.loc[best.excess.idxmax()]
    above = int((df.excess > tolerance).sum())
    return (f"- **Teacher–student (linear teachers).** {len(df)} students (spectra "
            f"{', '.join(sorted(df.spectrum.unique()))}; inits {', '.join(sorted(df['init'].unique()))}; "
            f"ranks {int(df['rank'].min())}–{int(df['rank'].max())}; "
            f"{df.lr.nunique()} rates each), {above} of them end more than {tolerance:g} of the "
            f"teacher's energy above the Eckart–Young floor: " + "; ".join(per_rate)
            + f". At each (spectrum, init, rank)'s best rate the excess is "
            f"{upper_bound(worst.excess)} (largest: {worst.spectrum}, {worst['init']} init, "
            f"r={int(worst['rank'])}). " + TEACHER_SCOPE)


def rate_above(runs: pd.DataFrame, table: pd.DataFrame) -> str:
    """The searches one rate above each choice (the next rate tried; seed 0's final
    tuning-slice loss), fully factorized models against the dense model: how sharply the loss
    turns above the chosen rate, which a coarse grid cannot resolve."""
    from .prose import count_of
    study = study_runs(runs)
    rows = []
    for _, r in table[table.factorize.isin(["none", "both"])].iterrows():
        if r.lr is None or pd.isna(r.lr) or (r["factorize"] == "none" and r.d_model !=
                                              dense_row(table).d_model):
            continue
        at = study[(study.model_key == r.model_key) & (study.seed == 0)]
        higher = sorted(x for x in at.lr.unique() if x > r.lr)
        if not higher:
            continue
        up = higher[0]
        above, chosen = at[at.lr == up], at[at.lr == r.lr]
        if len(above) and len(chosen):
            rows.append((r["factorize"], r.label, up, float(chosen.tune_loss.iloc[0]),
                         float(above.tune_loss.iloc[0]), up / r.lr))
    fact = [x for x in rows if x[0] == "both"]
    dense = [x for x in rows if x[0] == "none"]
    if not fact or not dense:
        return ""
    import statistics
    jump = sorted(x[4] - x[3] for x in fact)
    d = dense[0]
    steep = sum(j > 0.1 for j in jump)
    ratios = [x[5] for x in rows]
    step = (f"{min(ratios):.1f}×" if max(ratios) - min(ratios) < 0.05 else
            f"{min(ratios):.1f}× to {max(ratios):.1f}×")
    return (f"- **One rate above the chosen one** (the next rate searched, {step} higher; "
            f"seed 0, final loss on the tuning slice): the dense model loses "
            f"{d[4] - d[3]:+.2f} nats (at lr {d[2]:g}: {d[4]:.2f}); the {len(fact)} fully "
            f"factorized models lose {jump[0]:+.2f} to {jump[-1]:+.2f} (median "
            f"{statistics.median(jump):+.2f}; {count_of(steep, len(fact))} more than 0.1), "
            f"ending at {min(x[4] for x in fact):.2f}–{max(x[4] for x in fact):.2f}. Where the "
            "loss turns that sharply between two rates, the grid does not say how close a "
            "choice lies to the model's best rate.")


def _family_line(n: int, seeds: int) -> str:
    from ..core.stats import ALPHA, spread_caveat
    return (f"- **Method.** Every difference is Welch's 95 % interval over seeds "
            f"(uncorrected) with its Welch p; a difference is called detectable only where "
            f"Holm's correction over the answer's family of all {n} Welch tests below keeps "
            f"it under {ALPHA:g} (family-wise). {spread_caveat(seeds).capitalize()}; the narrowest "
            "intervals below rest on such spreads.")


def lm_answer(runs: pd.DataFrame, students: pd.DataFrame | None = None) -> str:
    """The README's answer, in sentences, from the records (and the teacher–student
    students, if given). Every Welch test it makes is one family, corrected by Holm's
    method (:func:`~lowrank_helpers.core.stats.correct`)."""
    from .prose import count_of
    from ..core.stats import correct
    table = lm_table(runs)
    anc = anchor_summary(runs)
    dense = dense_row(table)
    comp = lm_comparisons(table)
    init_rows = table[(table.factorize == "both") & (table.seeds >= 2)]
    inits = sorted(init_rows["init"].unique())
    init_diffs = []
    if len(inits) == 2:
        a, b = inits
        for rank, g in init_rows.groupby("rank"):
            if len(g) == 2:
                init_diffs.append((int(rank), versus(g[g["init"] == a].iloc[0],
                                                     g[g["init"] == b].iloc[0])))
    # one family: every Welch test the answer makes
    family = list(comp.vs_dense) + list(comp.vs_narrow) + [d for _, d in init_diffs]
    fixed = iter(correct(family))
    comp = comp.assign(vs_dense=[next(fixed) for _ in range(len(comp))],
                       vs_narrow=[next(fixed) for _ in range(len(comp))])
    init_diffs = [(r, next(fixed)) for r, _ in init_diffs]
    n_tests = sum(d is not None for d in family)
    both = comp[comp.model.str.startswith("both") & comp.vs_dense.notna()]
    lines = [f"- **Anchor.** The dense model at nanoGPT's CPU configuration, trained on the "
             f"whole training split at lr 1e-3, ends at held-out loss {anc['val_loss']:.3f} ± "
             f"{anc['val_std']:.3f} nats ({anc['val_bits']:.3f} bits/char, {anc['seeds']} "
             f"seeds), against nanoGPT's {anc['nanogpt']:.3f}: "
             f"{'within' if anc['within'] else 'outside'} the ±0.05 the issue asks."]
    lines.append(f"- **Dense, tuned.** At its chosen rate {dense.lr:g} (trained without the "
                 f"tuning slice) the dense model gets {dense.val_loss:.3f} ± "
                 f"{dense.val_std:.3f} nats ({dense.seeds} seeds).")
    tested = table[table.seeds >= 2].seeds
    if len(tested):
        lines.append(_family_line(n_tests, int(tested.min())))
    worse = sum(r.vs_dense.real and r.vs_dense.diff > 0 for _, r in both.iterrows())
    better = sum(r.vs_dense.real and r.vs_dense.diff < 0 for _, r in both.iterrows())
    raw = sum(r.vs_dense.real_uncorrected and r.vs_dense.diff > 0 for _, r in both.iterrows())
    lines.append(f"- **Equal steps.** Of {len(both)} models with all six projections "
                 f"factorized (and 2 or more seeds), {worse} are detectably worse than dense "
                 f"after Holm's correction ({raw} by their uncorrected intervals), "
                 f"{len(both) - worse - better} not distinguishable and {better} better.")

    def verdict(d) -> str:
        if d is None:
            return "no interval"
        return "detectable" if d.real else "not detectable after correction"
    for _, r in both.iterrows():
        lines.append(f"  - {r.model}: {r.val_loss:.3f} nats, {_nats(r.vs_dense)} against "
                     f"dense: {verdict(r.vs_dense)}" + ("" if r.vs_narrow is None else
                                                        f"; against {r.narrow} (same parameters, "
                                                        f"{r.narrow_loss:.3f}) {_nats(r.vs_narrow)}: "
                                                        f"{verdict(r.vs_narrow)}"))
    eq = comp[comp.vs_narrow.notna()]
    if len(eq):
        wins = sum(d.real and d.diff < 0 for d in eq.vs_narrow)
        losses = sum(d.real and d.diff > 0 for d in eq.vs_narrow)
        lines.append(f"- **Equal parameters.** Against a narrower dense model of the same "
                     f"parameter count (within 10 %), after Holm's correction "
                     f"{count_of(wins, len(eq), 'factorized models')} are detectably better, "
                     f"{losses} worse and {len(eq) - wins - losses} not distinguishable.")
    if init_diffs:
        a, b = inits
        shown = "; ".join(f"r={r} {d.diff:+.3f} ({d.low:+.3f} to {d.high:+.3f}, Holm p "
                          f"{d.p_holm:.2g})" for r, d in init_diffs)
        real = [r for r, d in init_diffs if d.real]
        lines.append(f"- **Init** ({a} − {b}, nats, 95 % CI): {shown}. Detectable after "
                     f"correction at {count_of(len(real), len(init_diffs), 'ranks')}"
                     + (f" ({', '.join(f'r={r}' for r in real)})" if real else "") + ".")
    for _, r in comp[~comp.model.str.startswith("both")].iterrows():
        lines.append(f"- **{r.model}**: {r.val_loss:.3f} nats, {_nats(r.vs_dense)} against "
                     f"dense: {verdict(r.vs_dense)}.")
    single = table[(table.factorize != "none") & (table.seeds < 2)]
    if len(single):
        lines.append("- **Other inits, seed 0 only** (no interval): " + "; ".join(
            f"{r.label} {r.val_loss:.3f} (lr {r.lr:g})" for _, r in single.iterrows()) + ".")
    rung = rate_above(runs, table)
    if rung:
        lines.append(rung)
    ranks = (4, 16, 64)
    shares = energy_beyond(runs, ranks)
    learned = energy_beyond(runs, ranks, "learned_singular_values")
    if shares:
        text = ("- **What rank the dense model uses.** The trained anchor models' block "
                "matrices W keep, on average, " + ", ".join(
                    f"{100 * v:.0f} %" for v in shares.values())
                + f" of their energy beyond rank {'/'.join(map(str, shares))}")
        if learned:
            gamma = init_decays(runs)
            text += ("; their learned part W − γ·W₀ (W₀ rebuilt from the seed; γ = "
                     f"{_span(gamma, '.3f')}, the factor by which weight decay shrank the init) "
                     + ", ".join(f"{100 * v:.0f} %" for v in learned.values())
                     + ". W still carries γ·W₀, a random matrix whose energy is spread over "
                     "every direction, so part of W's energy beyond each rank is left-over "
                     "init, not learned.")
        else:
            text += (". (W still carries part of its random init; the learned part "
                     "W − γ·W₀ is not in these records.)")
        lines.append(text)
    if students is not None and len(students):
        lines.append(teacher_line(students))
    lines.append(f"- **Cost.** {len(runs)} runs of {int(runs.iters.max()):,} steps, "
                 f"{sweep_seconds(runs) / 60:.0f} minutes of training wall time on "
                 f"{int(runs.torch_threads.max())} CPU threads, models trained together in "
                 "stacks.")
    return "\n".join(lines)
