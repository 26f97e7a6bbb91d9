"""The language-model study's figures: functions of the records, returning figures."""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from .lm import dense_row, lm_table, study_runs
from ..methods import init_color, rank_color


def loss_vs_rank(table: pd.DataFrame, ax=None):
    """Held-out loss (mean ± std over seeds) of the fully factorized models against rank,
    one line per init, with the dense model as a band."""
    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(6, 4))
    dense = dense_row(table)
    ax.axhspan(dense.val_loss - dense.val_std, dense.val_loss + dense.val_std, color="0.85")
    ax.axhline(dense.val_loss, color="black", lw=1, label=f"{dense.label} ({dense.seeds} seeds)")
    both = table[table.factorize == "both"]
    for init, g in both.groupby("init"):
        g = g.sort_values("rank")
        ax.errorbar(g["rank"], g.val_loss, yerr=g.val_std.fillna(0), marker="o", capsize=3,
                    color=init_color(init), label=f"B·A, {init} init")
    for (fz, init), g in table[table.factorize.isin(["attn", "mlp"])].groupby(["factorize",
                                                                                "init"]):
        ax.errorbar(g["rank"], g.val_loss, yerr=g.val_std.fillna(0), marker="s" if fz == "attn"
                    else "^", ls="none", capsize=3, color=init_color(init),
                    label=f"{fz} only, {init} init")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("rank r")
    ax.set_ylabel("held-out loss (nats/char)")
    ax.set_title("Factorized projections against rank (each at its tuned lr)")
    ax.legend(fontsize=8)
    return fig


def loss_vs_params(table: pd.DataFrame, ax=None):
    """Held-out loss against parameter count: factorized models, and dense models of several
    widths (the equal-parameter control)."""
    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(6, 4))
    dense = table[table.factorize == "none"].sort_values("parameters")
    ax.errorbar(dense.parameters, dense.val_loss, yerr=dense.val_std.fillna(0), color="black",
                marker="D", capsize=3, label="dense, d_model " +
                ", ".join(str(d) for d in dense.d_model))
    for init, g in table[table.factorize == "both"].groupby("init"):
        g = g.sort_values("parameters")
        ax.errorbar(g.parameters, g.val_loss, yerr=g.val_std.fillna(0), marker="o", capsize=3,
                    color=init_color(init), label=f"B·A (d_model 128), {init} init")
        for _, r in g.iterrows():
            ax.annotate(f"r={r['rank']:.0f}", (r.parameters, r.val_loss), fontsize=7,
                        xytext=(3, 3), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("parameters")
    ax.set_ylabel("held-out loss (nats/char)")
    ax.set_title("Low rank or fewer parameters?")
    ax.legend(fontsize=8)
    return fig


def loss_curves(runs: pd.DataFrame, table: pd.DataFrame, init: str, ax=None):
    """Held-out loss during training (on the evaluation windows), seed mean, for the dense
    model and the fully factorized models of ``init``, each at its chosen rate."""
    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(6, 4))
    pick = table[(table.factorize == "none") & (table.d_model == dense_row(table).d_model)
                 | (table.factorize == "both") & (table.init == init)]
    for _, row in pick.iterrows():
        hist = [json.loads(Path(p).read_text())["history"]
                for p in runs[runs.run_id.isin(row.run_ids)].path]
        its = [h["iter"] for h in hist[0]]
        mean = np.mean([[h["val_loss"] for h in hh] for hh in hist], axis=0)
        ax.plot(its, mean, color=rank_color(row["rank"]), label=row.label)
    ax.set_xlabel("step")
    ax.set_ylabel("held-out loss (nats/char)")
    ax.set_title(f"Training curves ({init} init; dense in black)")
    ax.legend(fontsize=8)
    return fig


def _energy_tail(spectra: dict[str, list[float]]) -> dict[str, np.ndarray]:
    """Share of each projection kind's energy Σσ² beyond rank r (r = 1…n), mean over blocks."""
    by = {}
    for name, sv in spectra.items():
        e = np.asarray(sv) ** 2
        by.setdefault(name.split(".", 1)[1], []).append(1 - np.cumsum(e) / e.sum())
    return {name: np.mean(tails, axis=0) for name, tails in by.items()}


def teacher_figure(students: pd.DataFrame, analysis: dict | None = None,
                   tolerance: float = 1e-3):
    """Left: every teacher–student student's excess over the Eckart–Young floor (its loss
    minus the best rank-r loss, a share of the teacher's energy) against its rank, one colour
    per learning rate, one marker per spectrum: no student is left out. Right: the share of
    each trained dense LM projection's energy (Σσ²) beyond rank r, mean over blocks, for the
    trained W (solid) and for its learned part W − γ·W₀ (dashed; γ: the init's shrinkage by
    weight decay), from an anchor record's ``analysis``."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    ax = axes[0]
    df = students.assign(excess=(students.loss - students.floor).clip(lower=0))
    rates = sorted(df.lr.unique())
    colors = plt.cm.viridis(np.linspace(0, 0.85, len(rates)))
    markers = dict(zip(sorted(df.spectrum.unique()), "osD^v"))
    inits = sorted(df["init"].unique())
    for (lr, color) in zip(rates, colors):
        for spectrum, marker in markers.items():
            g = df[(df.lr == lr) & (df.spectrum == spectrum)]
            # a small offset per init keeps the students of one rank apart
            x = g["rank"] * 2 ** (0.08 * (g["init"].map(inits.index) - (len(inits) - 1) / 2))
            ax.scatter(x, g.excess + 1e-7, s=12, color=color, marker=marker, alpha=0.8,
                       label=f"lr {lr:g}" if spectrum == next(iter(markers)) else None)
    for spectrum, marker in markers.items():
        ax.scatter([], [], color="0.4", marker=marker, s=12, label=f"{spectrum} spectrum")
    ax.axhline(tolerance, color="black", ls=":", lw=1)
    ax.annotate(f"{tolerance:g}", (df["rank"].min(), tolerance), fontsize=7, xytext=(0, 2),
                textcoords="offset points")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("student rank r")
    ax.set_ylabel("loss − Eckart–Young floor (+1e-7)")
    ax.set_title(f"Linear teachers: all {len(df)} students, every rate", fontsize=10)
    ax.legend(fontsize=7, ncol=2)
    ax = axes[1]
    analysis = analysis or {}
    for key, ls, what in (("singular_values", "-", "W"), ("learned_singular_values", "--",
                                                              "W − γW₀")):
        if key not in analysis:
            continue
        for k, (name, tail) in enumerate(_energy_tail(analysis[key]).items()):
            ax.plot(np.arange(1, len(tail) + 1), tail, ls=ls, color=f"C{k}",
                    label=f"{name}, {what}")
    if analysis:
        ax.set_xscale("log", base=2)
        ax.set_xlabel("rank r")
        ax.set_ylabel("energy beyond rank r")
        ax.set_title("Trained dense LM (d=128): W and its learned part W − γW₀", fontsize=10)
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return fig


def lm_figures(runs: pd.DataFrame, init: str = "lora", students: pd.DataFrame | None = None,
               analysis: dict | None = None) -> dict[str, plt.Figure]:
    """The LM study's figures by file name (``save_figures`` writes them); ``init``: the
    factorized models whose training curves are drawn. Closed: display them one by one."""
    table = lm_table(runs)
    figs = {"shakespeare_loss_vs_rank.png": loss_vs_rank(table),
            "shakespeare_loss_vs_params.png": loss_vs_params(table),
            "shakespeare_curves.png": loss_curves(study_runs(runs), table, init)}
    if students is not None:
        figs["shakespeare_teacher_student.png"] = teacher_figure(students, analysis)
    for fig in figs.values():
        plt.close(fig)
    return figs
