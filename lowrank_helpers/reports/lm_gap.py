"""Where the language model's gap comes from: representation or optimization, and how it
moves with width. Tables and sentences from the records of the language-model study's
``svd`` and ``teacher`` phases and of its scale series (the study at other widths).

- :func:`svd_table`, per rank: the from-scratch models (each init), the SVD-started model
  (:mod:`~lowrank_helpers.methods.svd_start`) and the untrained SVD truncation of the dense
  seeds, each mean ± std of the held-out loss over seeds;
- :func:`student_table`, per teacher rank k and student: the KL to the teacher at every rate
  tried (seed 0) and at the chosen rate (every seed);
- the scale series' and the longer budget's tables (:mod:`.lm_scale`): the gap to the dense
  model at each width, and its change from 2,000 to 8,000 steps.

:func:`gap_answer` says it in sentences; every Welch test it makes is one family, corrected by
Holm's method (:func:`~lowrank_helpers.core.stats.correct`).
"""
from __future__ import annotations

import math

import pandas as pd

from ..core.stats import correct, mean_interval
from ..studies.search import choose
from .lm import dense_row, lm_table, sweep_seconds
from .lm_scale import _diff, budget_lines, scale_lines, scale_table


# -- the SVD-started control ------------------------------------------------------------------
def svd_table(runs: pd.DataFrame, truncated: pd.DataFrame) -> pd.DataFrame:
    """One row per rank of the control: the SVD-started model at its chosen rate, the
    from-scratch models of the same rank (each init with 2 or more seeds), the untrained
    truncations; held-out losses per seed in ``*_losses``. Only SVD-started runs and
    truncations of the dense model's current choice (its rate and width) enter."""
    if runs.empty or not (runs.method == "svd_start").any():
        return pd.DataFrame()
    dense = dense_row(lm_table(runs))
    own = runs[(runs.method == "svd_start") & (runs.d_model == dense.d_model)
               & runs.options.map(lambda o: isinstance(o, dict)
                                  and o.get("dense_lr") == dense.lr)]
    svd = lm_table(own, methods=("svd_start",)) if len(own) else pd.DataFrame()
    if svd.empty:
        return svd
    scratch = lm_table(runs)
    scratch = scratch[(scratch.factorize == "both") & (scratch.seeds >= 2)
                      & (scratch.d_model == dense.d_model)]
    if len(truncated):
        truncated = truncated[(truncated.dense_lr == dense.lr)
                              & (truncated.d_model == dense.d_model)]
    steps = int(runs[runs.tune_chars > 0].iters.max())
    rows = []
    for _, s in svd.iterrows():
        r = int(s["rank"])
        row = {"rank": r, "svd_lr": s.lr, "svd_losses": s.losses, "svd_lrs_tried": s.lrs_tried,
               "svd_edge": bool(s.edge), "dense_losses": dense.losses, "dense_lr": dense.lr,
               "steps": steps}
        cut = truncated[truncated["rank"] == r] if len(truncated) else truncated
        row["truncated_losses"] = list(cut.sort_values("seed").val_loss) if len(cut) else []
        for _, f in scratch[scratch["rank"] == r].iterrows():
            row[f"scratch_{f['init']}_losses"] = f.losses
            row[f"scratch_{f['init']}_lr"] = f.lr
        rows.append(row)
    return pd.DataFrame(rows).sort_values("rank").reset_index(drop=True)


def _mean(xs) -> float:
    return sum(xs) / len(xs) if xs else math.nan


def svd_lines(table: pd.DataFrame) -> list[str]:
    """The control's sentences (one Holm family: SVD-started − from-scratch for each init
    and rank, and SVD-started − dense at each rank)."""
    if table.empty:
        return []
    inits = sorted(c[len("scratch_"):-len("_losses")] for c in table.columns
                   if c.startswith("scratch_") and c.endswith("_losses"))
    tests = []
    for _, r in table.iterrows():
        for i in inits:
            other = r.get(f"scratch_{i}_losses")
            if isinstance(other, list):
                tests.append(("scratch", int(r["rank"]), i, _diff(r.svd_losses, other)))
        tests.append(("dense", int(r["rank"]), None, _diff(r.svd_losses, r.dense_losses)))
    fixed = correct([d for *_, d in tests])
    tests = [(*t[:3], d) for t, d in zip(tests, fixed)]
    n = sum(d is not None for *_, d in tests)
    lines = [f"- **SVD-started control** (the dense model at its chosen rate "
             f"{table.dense_lr.iloc[0]:g}, each seed cut to rank r by its SVD; held-out "
             f"loss, nats; Welch's 95 % intervals, Holm's correction over these {n} tests):"]
    for _, r in table.iterrows():
        rank = int(r["rank"])
        parts = []
        if r.truncated_losses:
            parts.append(f"untrained {_mean(r.truncated_losses):.3f}")
        edge = ", at the edge of its grid" if r.svd_edge else ""
        parts.append(f"SVD-started and trained on {_mean(r.svd_losses):.3f} (lr {r.svd_lr:g}"
                     f"{edge}, {_seeds(len(r.svd_losses))})")
        for i in inits:
            other = r.get(f"scratch_{i}_losses")
            if isinstance(other, list):
                parts.append(f"from scratch ({i} init) {_mean(other):.3f}")
        text = f"  - r={rank}: " + "; ".join(parts)
        verdicts = []
        for kind, rr, i, d in tests:
            if rr != rank or d is None:
                continue
            what = f"against from scratch ({i} init)" if kind == "scratch" else "against dense"
            verdict = ("detectably lower" if d.real and d.diff < 0 else "detectably higher"
                       if d.real else "not distinguishable")
            verdicts.append(f"{what} {d.diff:+.3f} ({d.low:+.3f} to {d.high:+.3f}, Holm p "
                            f"{d.p_holm:.2g}): {verdict}")
        lines.append(text + (". SVD-started " + "; ".join(verdicts) if verdicts else "") + ".")
    steps = int(table.steps.iloc[0])
    caveat = (f" The SVD-started model has also had the dense run's {steps:,} steps, so this is "
              "a control on the solution, not on compute.")
    if n == 0:
        lines.append("- **So**: no test yet (fewer than 2 seeds on a side)." + caveat)
        return lines
    below = sorted({rr for kind, rr, _, d in tests if kind == "scratch" and d is not None
                    and d.real and d.diff < 0})
    every = sorted({rr for kind, rr, i, d in tests if kind == "scratch" and d is not None
                    and d.real and d.diff < 0 and all(
                        dd is not None and dd.real and dd.diff < 0 for k2, r2, i2, dd in tests
                        if k2 == "scratch" and r2 == rr)})
    lines.append(
        f"- **So**: the SVD-started model ends detectably below a from-scratch one at "
        f"{_ranks(below)}, below every init tested at {_ranks(every)}. Where it does, a rank-r "
        "solution better than the one B·A finds from scratch exists and B·A training keeps "
        "it: there, at least part of the gap is optimization. Where it does not, these seeds "
        "cannot tell the two apart." + caveat)
    return lines


def _seeds(n: int) -> str:
    return f"{n} seed" + ("" if n == 1 else "s")


def _ranks(rs) -> str:
    return "no rank" if not rs else ", ".join(f"r={r}" for r in rs)


# -- the teacher–student students -------------------------------------------------------------
def student_table(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per student of each teacher: its rank (None: dense), the teacher's rank, KL to
    the teacher (held-out, nats) at the chosen rate (per seed) and at every rate tried
    (seed 0)."""
    from ..tasks import TASKS
    rows = []
    for key, g in runs.groupby("model_key"):
        lr = choose(g).lr
        at = g[g.lr == lr].sort_values("seed")
        first = g.iloc[0]
        every = g[g.seed == 0].sort_values("lr")
        rows.append({"teacher_rank": TASKS[first.task].teacher_rank,
                     "rank": None if first.method == "full" else int(first["rank"]),
                     "label": first.label, "lr": lr, "kl": list(at.final_val_kl),
                     "loss": list(at.final_val_loss),
                     "every_rate": dict(zip(every.lr, every.final_val_kl))})
    t = pd.DataFrame(rows)
    if t.empty:
        return t
    t["_o"] = t["rank"].fillna(1e9)
    return t.sort_values(["teacher_rank", "_o"]).drop(columns="_o").reset_index(drop=True)


def student_lines(table: pd.DataFrame) -> list[str]:
    """The students' sentences (one Holm family: each factorized student − the dense student
    of its teacher)."""
    if table.empty:
        return []
    tests = []
    for k, g in table.groupby("teacher_rank"):
        dense = g[g["rank"].isna()]
        for _, s in g[g["rank"].notna()].iterrows():
            d = _diff(s.kl, dense.kl.iloc[0]) if len(dense) else None
            tests.append((int(k), int(s["rank"]), d))
    fixed = iter(correct([d for *_, d in tests]))
    tests = [(k, r, next(fixed)) for k, r, _ in tests]
    n = sum(d is not None for *_, d in tests)
    lines = [f"- **Teacher–student (transformer teachers)**: the anchor cut to rank k by its "
             "SVD is the teacher; students of its shape learn its distributions from scratch. "
             "KL(teacher ‖ student) on the held-out split, nats per character, mean and 95 % "
             f"interval over seeds at each student's chosen rate; Welch's differences to the "
             f"dense student, Holm over these {n}:"]
    for k, g in table.groupby("teacher_rank"):
        parts = []
        for _, s in g.iterrows():
            m, lo, hi = mean_interval(s.kl)
            name = "dense" if pd.isna(s["rank"]) else f"r={int(s['rank'])}"
            every = ", ".join(f"{v:.3f}" for v in s.every_rate.values())
            tail = ""
            if not pd.isna(s["rank"]):
                d = next(d for kk, rr, d in tests if kk == k and rr == int(s["rank"]))
                if d is not None:
                    tail = (f"; − dense {d.diff:+.3f} ({d.low:+.3f} to {d.high:+.3f}, Holm p "
                            f"{d.p_holm:.2g})")
            ci = "" if math.isnan(lo) else f" ({lo:.3f} to {hi:.3f})"
            parts.append(f"{name} {m:.3f}{ci}, lr {s.lr:g}, {_seeds(len(s.kl))}; every rate "
                         f"(seed 0, lr {', '.join(f'{x:g}' for x in s.every_rate)}): "
                         f"{every}{tail}")
        lines.append(f"  - k={int(k)}: " + "; ".join(parts) + ".")
    able = [(k, r, d) for k, r, d in tests if r >= k and d is not None]   # can express it
    above = [f"r={r} (k={k})" for k, r, d in able if d.real and d.diff > 0]
    if able:
        rest = len(able) - len(above)
        lines.append(
            f"- **So** (students that can express their teacher exactly, r ≥ k): "
            f"{len(above)} of {len(able)} end detectably farther from it than the dense "
            f"student of the same steps" + (f" ({', '.join(above)})" if above else "")
            + (f"; {rest} not distinguishable from it" if rest else "") + ". Where they do, "
            "B·A from scratch does not reach, in this budget, as close to a rank-k solution that "
            "exists as a dense model does: an optimization gap, not one of representation. The "
            "dense student does not reach the teacher either (its KL is above 0), so this "
            "measures how far each gets in the same steps, not whether either would converge.")
    return lines


def gap_tables(results_dir, scale_dirs=(), budget_dir=None) -> dict:
    """The tables from the study's records in ``results_dir`` (the SVD-started control, its
    ``distill/`` students), the scale series' in ``scale_dirs`` (with the study's own width)
    and the longer budget's in ``budget_dir``: ``svd`` (:func:`svd_table`), ``students``
    (:func:`student_table`), ``scale`` (:func:`scale_table`), and the records ``runs`` and
    ``budget`` (:func:`budget_lines` compares them)."""
    from pathlib import Path
    from ..core.results import load_records
    from ..studies.distill import DISTILL_DIR
    from ..studies.lm import load_lm_records
    from ..studies.svd import load_truncated
    runs = load_lm_records(results_dir)
    students = Path(results_dir) / DISTILL_DIR
    students = load_records(students) if students.is_dir() else pd.DataFrame()
    own = Path(results_dir).resolve()
    others = [load_lm_records(d) for d in scale_dirs
              if Path(d).is_dir() and Path(d).resolve() != own]
    scale = pd.concat([runs] + [o for o in others if len(o)], ignore_index=True)
    scale = scale.drop_duplicates("run_id")
    budget = load_lm_records(budget_dir) if budget_dir and Path(budget_dir).is_dir() else \
        pd.DataFrame()
    return {"svd": svd_table(runs, load_truncated(results_dir)),
            "students": student_table(students) if len(students) else pd.DataFrame(),
            "scale": scale_table(scale), "runs": runs, "budget": budget,
            "students_runs": students, "scale_runs": scale}


def gap_answer(tables: dict) -> str:
    """The README's "why" block from :func:`gap_tables`: the SVD-started control, the
    students, the budget, the scale series (each part where its records exist)."""
    parts = [("SVD-started control", svd_lines(tables["svd"])),
             ("Teacher–student (transformer teachers)", student_lines(tables["students"])),
             ("Budget", budget_lines(tables["runs"], tables["budget"])),
             ("Scale series", scale_lines(tables["scale"]))]
    lines = [line for _, part in parts for line in part]
    missing = [name for name, part in parts if not part]
    if missing:
        lines.append("- **Not yet in the records**: " + "; ".join(missing) + ".")
    if len(missing) < len(parts):
        lines.append(cost_line(tables))
    return "\n".join(lines)


def cost_line(tables: dict) -> str:
    """The CPU wall time of this section's runs, summed over the stacks they trained in."""
    def minutes(df) -> tuple[int, float]:
        if df is None or df.empty:
            return 0, 0.0
        return len(df), sweep_seconds(df) / 60
    runs, scale = tables["runs"], tables["scale_runs"]
    own = runs.d_model.max() if len(runs) else None
    if len(scale):                        # the series' own models: head size 32, another width
        scale = scale[(scale.d_model == scale.n_head * 32) & (scale.d_model != own)]
    parts = [("SVD-started", minutes(runs[runs.method == "svd_start"]) if len(runs) else (0, 0)),
             ("students", minutes(tables["students_runs"])),
             ("longer budget", minutes(tables["budget"])),
             ("other widths", minutes(scale))]
    shown = [f"{what} {n} run{'s' * (n != 1)}, {m:.0f} min" for what, (n, m) in parts if n]
    frames = [f for f in (runs[runs.method == "svd_start"] if len(runs) else None,
                          tables["students_runs"], tables["budget"],
                          scale)
              if f is not None and len(f)]
    threads = sorted({int(t) for f in frames for t in f.torch_threads.dropna()})
    on = "/".join(map(str, threads)) or "?"
    total_n = sum(n for _, (n, _) in parts)
    total_m = sum(m for _, (_, m) in parts)
    shown.append(f"in all {total_n} run{'s' * (total_n != 1)}, {total_m:.0f} min "
                 f"({total_m / 60:.1f} h)")
    return ("- **Cost** of this section: " + "; ".join(shown) + f" of training wall time (on "
            f"{on} CPU thread{'s' if threads != [1] else ''} per stack, a stack's time shared "
            "among its models; the dense checkpoints the controls retrain are not counted).")
