"""The language-model study's tables and answers, computed from its records.

Every model is reported at its chosen rate (:func:`~lowrank_helpers.lm_study.choose_lr`, on the
tuning slice); every difference is Welch's interval over seeds (:mod:`lowrank_helpers.stats`).
Losses are held-out (the corpus's last 10 %), in nats per character; bits are nats / ln 2.
"""
from __future__ import annotations

import math

import pandas as pd

from .lm_study import choose_lr
from .stats import welch

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


def anchor_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """The dense model trained on the whole training split (tune_chars 0) at d_model 128."""
    return runs[(runs.factorize == "none") & (runs.tune_chars == 0)]


def study_runs(runs: pd.DataFrame) -> pd.DataFrame:
    return runs[runs.tune_chars > 0]


def lm_table(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per model at its chosen rate: seeds, held-out loss (nats and bits, mean and
    std), parameters, training FLOPs per token, seconds per run (its stack's wall time over
    the models trained in it) and the rates tried."""
    rows = []
    for key, g in study_runs(runs).groupby("model_key"):
        lr = choose_lr(g)
        tried = sorted(g[g.seed == 0].lr.unique())
        at = g[g.lr == lr] if lr is not None else g.iloc[:0]
        first = g.iloc[0]
        rows.append({
            "model_key": key, "label": first.label, "factorize": first["factorize"],
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
    d_model = d_model or int(dense.d_model.max())
    return dense[dense.d_model == d_model].iloc[0]


def versus(a: pd.Series, b: pd.Series):
    """Welch's difference of held-out loss, a − b (nats; negative: a is better), or None
    with fewer than 2 seeds on a side."""
    if len(a.losses) < 2 or len(b.losses) < 2:
        return None
    return welch(a.losses, b.losses)


def narrow_for(table: pd.DataFrame, row: pd.Series) -> pd.Series | None:
    """The narrower dense model closest in parameters to ``row`` (within 10 %), or None."""
    dense = table[(table.factorize == "none") & (table.d_model < dense_row(table).d_model)]
    if dense.empty:
        return None
    best = dense.iloc[(dense.parameters - row.parameters).abs().argmin()]
    return best if abs(best.parameters / row.parameters - 1) <= 0.10 else None


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
    its seconds)."""
    return float((runs.seconds / runs.stack_size).sum())


def energy_beyond(runs: pd.DataFrame, ranks) -> dict[int, float]:
    """Mean over the trained anchor models' block matrices (all seeds) of the share of each
    matrix's energy Σσ² that lies beyond rank r: how much rank the dense model uses."""
    import json
    from pathlib import Path
    import numpy as np
    shares = {r: [] for r in ranks}
    for path in anchor_runs(runs).path:
        rec = json.loads(Path(path).read_text())
        for sv in rec.get("analysis", {}).get("singular_values", {}).values():
            e = np.asarray(sv) ** 2
            for r in ranks:
                shares[r].append(float(e[r:].sum() / e.sum()))
    return {r: float(np.mean(v)) for r, v in shares.items() if v}


def teacher_line(students: pd.DataFrame) -> str:
    """The teacher–student answer: how far above the Eckart–Young floor the best students
    end (a share of the teacher's energy, which is 1)."""
    from .teacher import best_students
    best = best_students(students)
    worst = best.loc[best.excess.idxmax()]
    return (f"- **Teacher–student.** Against linear teachers (spectra "
            f"{', '.join(sorted(best.spectrum.unique()))}; students of rank "
            f"{int(best['rank'].min())}–{int(best['rank'].max())}), the best student of every "
            f"rank and init ends within {worst.excess:.1e} of the teacher's energy above the "
            f"Eckart–Young floor (largest: {worst.spectrum}, {worst.init} init, "
            f"r={int(worst['rank'])}; {len(best)} students), so the loss against rank follows "
            "the spectrum: the factorization and the optimizer find what a rank allows.")


def lm_answer(runs: pd.DataFrame, students: pd.DataFrame | None = None) -> str:
    """The README's answer, in sentences, from the records (and the teacher–student
    students, if given)."""
    table = lm_table(runs)
    anc = anchor_summary(runs)
    dense = dense_row(table)
    comp = lm_comparisons(table)
    both = comp[comp.model.str.startswith("both") & comp.vs_dense.notna()]
    lines = [f"- **Anchor.** The dense model at nanoGPT's CPU configuration, trained on the "
             f"whole training split at lr 1e-3, ends at held-out loss {anc['val_loss']:.3f} ± "
             f"{anc['val_std']:.3f} nats ({anc['val_bits']:.3f} bits/char, {anc['seeds']} "
             f"seeds), against nanoGPT's {anc['nanogpt']:.3f}: "
             f"{'within' if anc['within'] else 'outside'} the ±0.05 the issue asks."]
    lines.append(f"- **Dense, tuned.** At its chosen rate {dense.lr:g} (trained without the "
                 f"tuning slice) the dense model gets {dense.val_loss:.3f} ± "
                 f"{dense.val_std:.3f} nats ({dense.seeds} seeds).")
    worse = sum(r.vs_dense.low > 0 for _, r in both.iterrows())
    better = sum(r.vs_dense.high < 0 for _, r in both.iterrows())
    lines.append(f"- **Equal steps.** Of {len(both)} models with all six projections "
                 f"factorized (and 2 or more seeds), {worse} are detectably worse than dense, "
                 f"{len(both) - worse - better} not distinguishable and {better} better "
                 "(Welch 95 % intervals over seeds).")
    for _, r in both.iterrows():
        lines.append(f"  - {r.model}: {r.val_loss:.3f} nats, {_nats(r.vs_dense)} against "
                     "dense" + ("" if r.vs_narrow is None else
                                f"; against {r.narrow} (same parameters, "
                                f"{r.narrow_loss:.3f}) {_nats(r.vs_narrow)}"))
    eq = comp[comp.vs_narrow.notna()]
    if len(eq):
        wins = sum(d.high < 0 for d in eq.vs_narrow)
        losses = sum(d.low > 0 for d in eq.vs_narrow)
        lines.append(f"- **Equal parameters.** Against a narrower dense model of the same "
                     f"parameter count (within 10 %), {wins} of {len(eq)} factorized models "
                     f"are detectably better, {losses} worse, {len(eq) - wins - losses} not "
                     "distinguishable.")
    init_rows = table[(table.factorize == "both") & (table.seeds >= 2)]
    inits = sorted(init_rows["init"].unique())
    if len(inits) == 2:
        a, b = inits
        parts = []
        for rank, g in init_rows.groupby("rank"):
            if len(g) == 2:
                d = versus(g[g["init"] == a].iloc[0], g[g["init"] == b].iloc[0])
                parts.append(f"r={int(rank)} {d.diff:+.3f} ({d.low:+.3f} to {d.high:+.3f})")
        lines.append(f"- **Init** ({a} − {b}, nats, 95 % CI): " + "; ".join(parts) + ".")
    for _, r in comp[~comp.model.str.startswith("both")].iterrows():
        lines.append(f"- **{r.model}**: {r.val_loss:.3f} nats, {_nats(r.vs_dense)} against "
                     "dense.")
    single = table[(table.factorize != "none") & (table.seeds < 2)]
    if len(single):
        lines.append("- **Other inits, seed 0 only** (no interval): " + "; ".join(
            f"{r.label} {r.val_loss:.3f} (lr {r.lr:g})" for _, r in single.iterrows()) + ".")
    shares = energy_beyond(runs, (4, 16, 64))
    if shares:
        lines.append("- **What rank the dense model uses.** The trained anchor models' block "
                     "matrices keep, on average, " + ", ".join(
                         f"{100 * v:.0f} % of their energy beyond rank {r}"
                         for r, v in shares.items()) + ".")
    if students is not None and len(students):
        lines.append(teacher_line(students))
    lines.append(f"- **Cost.** {len(runs)} runs of {int(runs.iters.max()):,} steps, "
                 f"{sweep_seconds(runs) / 60:.0f} minutes of training wall time on "
                 f"{int(runs.torch_threads.max())} CPU threads, models trained together in "
                 "stacks.")
    return "\n".join(lines)


def lm_speed(path) -> str:
    """The LM benchmark's table (``benchmarks/bench_lm.py`` JSON at ``path``)."""
    import json
    from pathlib import Path
    b = json.loads(Path(path).read_text())
    out = [f"| {b['steps']} steps of {b['tokens_per_step']} tokens, {b['models']} models "
           f"(median of {b['repeats']}, {b['torch_threads']} threads) | one at a time | "
           "together (torch.func) | speed-up |", "|---|---:|---:|---:|"]
    for name, g in b.items():
        if isinstance(g, dict) and "speedup" in g:
            out.append(f"| {name}: tokens/s | {g['tokens_per_s_one']:,.0f} "
                       f"({g['ms_per_step_one']:.1f} ms/step) | "
                       f"{g['tokens_per_s_together']:,.0f} | {g['speedup']:.2f}× |")
    out.append(f"| nanoGPT's reported {NANOGPT_CPU['ms_per_iter']:g} ms/step (not timed "
               f"here) | {b['nanogpt_reference_tokens_per_s']:,.0f} | | |")
    out.append(f"\nDense, one at a time, over nanoGPT's reported rate: "
               f"{b['dense_one_over_nanogpt']:.2f}×; trained together: "
               f"{b['dense_together_over_nanogpt']:.2f}×.")
    return "\n".join(out)
