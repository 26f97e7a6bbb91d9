"""The fair comparison's figures, from :func:`~lowrank_helpers.studies.tuned.tuned_table`."""
from __future__ import annotations


import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from ..methods import init_color, linestyle
from ..studies.theory import lr_multiplier
from .tuned import OPTIMIZER_LABELS, _family, _main, head_control, rescale_control
from ..studies.tuned import DENSE, TUNED_PROTOCOLS, split_budget


def _err(s: pd.Series) -> np.ndarray:
    """Half-width of a 95 % t-interval of the mean, per row (0 with one seed)."""
    from scipy import stats
    n = s.map(len)
    sd = s.map(lambda v: np.std(v, ddof=1) if len(v) > 1 else 0.0)
    t = n.map(lambda k: stats.t.ppf(0.975, k - 1) if k > 1 else 0.0)
    return (t * sd / np.sqrt(n)).to_numpy()


def _dense_lines(ax, table, opt, x_span=None):
    for r in table[(table.optimizer == opt) & table["rank"].isna()].itertuples():
        half = _err(pd.Series([r.test_values]))[0]
        ax.axhline(100 * r.mean_test, color="black", ls=linestyle(r.method),
                   lw=1.2, label=f"{r.model} (lr {r.lr:g})")
        ax.axhspan(100 * (r.mean_test - half), 100 * (r.mean_test + half), color="black",
                   alpha=0.08)


def _note_below(ax, low: float, ranks: bool = True) -> None:
    """Say which plotted points lie below the axis (the notebook's tables list them)."""
    below = [(x, y) for line in ax.get_lines() if line.get_marker() == "o"  # the data, not caps
             for x, y in zip(*line.get_data()) if np.isfinite(y) and y < low]
    if below:
        text = (f"below the axis at r = {', '.join(map(str, sorted({int(round(x)) for x, _ in below})))}"
                if ranks else f"{len(below)} points below the axis")
        ax.text(0.02, 0.02, text, transform=ax.transAxes, fontsize=7, color="gray")


def accuracy_vs_rank(table: pd.DataFrame, reference: pd.DataFrame | None = None,
                     ylim=(75, 92)) -> plt.Figure:
    """Final test accuracy against rank per init: the reference protocol (where its records
    are given) beside each tuned optimizer; dense baselines as lines with their 95 % band;
    error bars: 95 % intervals over seeds."""
    panels = (["reference"] if reference is not None and len(reference) else []) + \
        [o for o in TUNED_PROTOCOLS if (table.optimizer == o).any()]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.4), sharey=True,
                             squeeze=False)
    for ax, panel in zip(axes[0], panels):
        if panel == "reference":
            ref = reference.copy()
            g = ref.groupby(["method", "init", "rank"], dropna=False).final_test_accuracy
            summary = g.agg(list).rename("test_values").reset_index()
            for init, part in summary[summary["rank"].notna()].groupby("init"):
                part = part.sort_values("rank")
                mean = part.test_values.map(np.mean)
                ax.errorbar(part["rank"].astype(int), 100 * mean, yerr=100 * _err(part.test_values),
                            color=init_color(init), marker="o", ms=3, capsize=2, label=_family(init))
            for d in summary[summary["rank"].isna()].itertuples():
                ax.axhline(100 * np.mean(d.test_values), color="black", lw=1.2,
                           label="full-rank MLP")
            ax.set_title("reference protocol (plain SGD, lr 1e-3, 100 epochs)", fontsize=10)
        else:
            main = _main(table[table.optimizer == panel])
            for init, part in main.groupby("init", sort=False):
                part = part.sort_values("rank")
                ax.errorbar(part["rank"].astype(int), 100 * part.mean_test,
                            yerr=100 * _err(part.test_values), color=init_color(init), marker="o",
                            ms=3, capsize=2, label=_family(init))
            _dense_lines(ax, table, panel)
            epochs = int(main.epochs.iloc[0]) if len(main) else 0
            ax.set_title(f"tuned {OPTIMIZER_LABELS[panel]} ({epochs} epochs, lr per model)",
                         fontsize=10)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("rank r")
        if ylim is not None:
            ax.set_ylim(*ylim)
            _note_below(ax, ylim[0])
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("final test accuracy (%)")
    axes[0][-1].legend(fontsize=7, loc="lower right")
    fig.suptitle("Fashion-MNIST: final test accuracy against rank, per init (95 % intervals "
                 "over seeds)", fontsize=11)
    fig.tight_layout()
    return fig


def lr_vs_rank(table: pd.DataFrame) -> plt.Figure:
    """The chosen learning rate against rank per init, per optimizer. For SGD, dashed: the
    theory's prediction if a model's best rate were the dense model's divided by its
    effective-learning-rate multiplier (the average over directions, r·(Var A + Var B));
    dotted: divided by the per-direction multiplier (d·Var of a factor)."""
    opts = [o for o in TUNED_PROTOCOLS if (table.optimizer == o).any()]
    fig, axes = plt.subplots(1, len(opts), figsize=(5.6 * len(opts), 4.4), squeeze=False)
    for ax, opt in zip(axes[0], opts):
        part = table[table.optimizer == opt]
        main = _main(part)
        dense = part[part.method == DENSE[0]]   # the task's own dense init
        for init, p in main.groupby("init", sort=False):
            p = p.sort_values("rank")
            ax.plot(p["rank"].astype(int), p.lr, color=init_color(init), marker="o", ms=4,
                    label=_family(init))
            if opt == "sgd" and len(dense):
                ranks = p["rank"].astype(int).tolist()
                base = float(dense.lr.iloc[0])
                ax.plot(ranks, [base / lr_multiplier(init, r) for r in ranks],
                        color=init_color(init), ls="--", lw=0.9, alpha=0.7)
                ax.plot(ranks, [base / lr_multiplier(init, r, "directional") for r in ranks],
                        color=init_color(init), ls=":", lw=0.9, alpha=0.7)
        for d in part[part["rank"].isna()].itertuples():
            ax.axhline(d.lr, color="black", ls=linestyle(d.method), lw=1,
                       label=f"{d.model}")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("rank r")
        ax.set_ylabel("chosen learning rate")
        ax.set_title(f"{OPTIMIZER_LABELS[opt]}" + (": dashed = dense lr / average multiplier, "
                                                   "dotted = / per-direction" if opt == "sgd"
                                                   else " (no SGD-theory prediction)"),
                     fontsize=9)
        ax.grid(alpha=0.3, which="both")
    axes[0][0].legend(fontsize=7)
    fig.suptitle("The learning rate each model chose on the validation split", fontsize=11)
    fig.tight_layout()
    return fig


def accuracy_vs_params(table: pd.DataFrame) -> plt.Figure:
    """Final test accuracy against trainable parameters, per optimizer and init."""
    opts = [o for o in TUNED_PROTOCOLS if (table.optimizer == o).any()]
    fig, axes = plt.subplots(1, len(opts), figsize=(5.4 * len(opts), 4.2), sharey=True,
                             squeeze=False)
    for ax, opt in zip(axes[0], opts):
        part = table[table.optimizer == opt]
        for init, p in _main(part).groupby("init", sort=False):
            p = p.sort_values("params")
            ax.errorbar(p.params, 100 * p.mean_test, yerr=100 * _err(p.test_values),
                        color=init_color(init), marker="o", ms=3, capsize=2, label=_family(init))
        for d in part[part["rank"].isna()].itertuples():
            ax.errorbar([d.params], [100 * d.mean_test], yerr=[100 * _err(pd.Series([d.test_values]))[0]],
                        color="black", marker="s" if linestyle(d.method) == "-" else "D", ms=6,
                        ls="none", label=d.model)
        ax.set_xscale("log")
        ax.set_xlabel("trainable parameters")
        ax.set_title(f"tuned {OPTIMIZER_LABELS[opt]}", fontsize=10)
        ax.grid(alpha=0.3)
        ax.set_ylim(75, 92)
        _note_below(ax, 75, ranks=False)
    axes[0][0].set_ylabel("final test accuracy (%)")
    axes[0][-1].legend(fontsize=7, loc="lower right")
    fig.suptitle("Fashion-MNIST: accuracy against trainable parameters", fontsize=11)
    fig.tight_layout()
    return fig


def controls(table: pd.DataFrame) -> plt.Figure:
    """Left: dense output layer minus factorized output layer, per rank and init; right:
    A → cA, B → B/c minus c = 1; both with Welch's 95 % intervals, per optimizer."""
    head, resc = head_control(table), rescale_control(table)
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2))
    shift = {"sgd": -0.06, "adamw": 0.06}
    for opt, mark in (("sgd", "o"), ("adamw", "s")):
        h = head[head.optimizer == opt] if len(head) else head
        for init, p in (h.groupby("init") if len(h) else []):
            x = np.log2(p["rank"]) + shift[opt]
            a.errorbar(x, 100 * p["diff"], yerr=[100 * (p["diff"] - p.low), 100 * (p.high - p["diff"])],
                       color=init_color(init), marker=mark, ls="none", capsize=2,
                       label=f"{init}, {OPTIMIZER_LABELS[opt]}")
        r = resc[resc.optimizer == opt] if len(resc) else resc
        for (init, rank), p in (r.groupby(["init", "rank"]) if len(r) else []):
            x = np.log2(p.c) + shift[opt] + (0.02 if rank > 8 else -0.02)
            b.errorbar(x, 100 * p["diff"], yerr=[100 * (p["diff"] - p.low), 100 * (p.high - p["diff"])],
                       color=init_color(init), marker=mark, ls="-" if rank > 8 else "--",
                       capsize=2, label=f"{init} r={rank}, {OPTIMIZER_LABELS[opt]}")
    for ax in (a, b):
        ax.axhline(0, color="black", lw=0.8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    a.set_xticks(np.log2(sorted(set(head["rank"]))) if len(head) else [])
    a.set_xticklabels(sorted(set(head["rank"])) if len(head) else [])
    a.set_xlabel("rank r")
    a.set_ylabel("dense head − factorized head (points)")
    a.set_title("dense output layer", fontsize=10)
    b.set_xticks(np.log2(sorted(set(resc.c))) if len(resc) else [])
    b.set_xticklabels([f"{c:g}" for c in sorted(set(resc.c))] if len(resc) else [])
    b.set_xlabel("c (A → cA, B → B/c)")
    b.set_ylabel("rescaled − c=1 (points)")
    b.set_title("rescaling the factors, each at its own tuned rate", fontsize=10)
    fig.suptitle("Controls (Welch 95 % intervals)", fontsize=11)
    fig.tight_layout()
    return fig


def tuned_figures(table: pd.DataFrame, reference: pd.DataFrame | None = None) -> dict:
    """The figures keyed by the file names the notebook saves them under (the study's rows;
    the convergence check's are left out)."""
    table = split_budget(table)[0]
    figs = {"tuned_accuracy_vs_rank.png": accuracy_vs_rank(table, reference),
            "tuned_lr_vs_rank.png": lr_vs_rank(table),
            "tuned_accuracy_vs_params.png": accuracy_vs_params(table)}
    if len(head_control(table)) or len(rescale_control(table)):
        figs["tuned_controls.png"] = controls(table)
    return figs
