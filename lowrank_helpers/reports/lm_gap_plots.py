"""Figures of where the language model's gap comes from (:mod:`.lm_gap`): functions of the
tables, returning figures."""
from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from ..methods import init_color, rank_color


def _mean_std(xs) -> tuple[float, float]:
    xs = [float(x) for x in xs] if isinstance(xs, list) else []
    if not xs:
        return math.nan, math.nan
    return float(np.mean(xs)), float(np.std(xs, ddof=1)) if len(xs) > 1 else 0.0


def svd_figure(table: pd.DataFrame, ax=None):
    """Held-out loss against rank: from scratch (each init), SVD-started and trained on, and
    SVD-truncated with no further step; the dense model as a band (mean ± std over seeds)."""
    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(6, 4))
    d, ds = _mean_std(table.dense_losses.iloc[0])
    ax.axhspan(d - ds, d + ds, color="0.85")
    ax.axhline(d, color="black", lw=1, label="dense")
    ranks = table["rank"]
    series = [("svd_losses", "SVD-started, trained on", "tab:green", "o", "-"),
              ("truncated_losses", "SVD-truncated, untrained", "tab:green", "x", ":")]
    series += [(c, f"from scratch, {c[len('scratch_'):-len('_losses')]} init",
                init_color(c[len("scratch_"):-len("_losses")]), "s", "--")
               for c in table.columns if c.startswith("scratch_") and c.endswith("_losses")]
    for col, label, color, marker, ls in series:
        stats = [_mean_std(x) for x in table[col]]
        ax.errorbar(ranks, [m for m, _ in stats], yerr=[s for _, s in stats], marker=marker,
                    ls=ls, color=color, capsize=3, label=label)
    from matplotlib.ticker import FormatStrFormatter
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")       # an untrained low-rank truncation can lie far above the rest
    ax.yaxis.set_major_formatter(FormatStrFormatter("%.2f"))
    ax.yaxis.set_minor_formatter(FormatStrFormatter("%.2f"))
    ax.tick_params(axis="y", which="minor", labelsize=7)
    ax.set_xticks(list(ranks), [str(r) for r in ranks])
    ax.set_xlabel("rank r of every projection")
    ax.set_ylabel("held-out loss (nats/char, log scale)")
    ax.set_title("From scratch, or from the dense model's SVD?")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def student_figure(table: pd.DataFrame):
    """KL to the teacher against student rank, one panel per teacher rank k: every rate tried
    (seed 0, small points) and the chosen rate (mean ± std over seeds); the dense student at
    the right, k marked."""
    ks = sorted(table.teacher_rank.unique())
    fig, axes = plt.subplots(1, len(ks), figsize=(5 * len(ks), 4), squeeze=False)
    for ax, k in zip(axes[0], ks):
        g = table[table.teacher_rank == k]
        fact = g[g["rank"].notna()].sort_values("rank")
        top = 2 * max(fact["rank"].max() if len(fact) else k, k)
        xs = [int(r) for r in fact["rank"]] + [top]
        rows = list(fact.itertuples()) + list(g[g["rank"].isna()].itertuples())
        for x, r in zip(xs, rows):
            for lr, v in r.every_rate.items():
                ax.plot(x, max(v, 1e-6), ".", color="0.6", ms=4)
            m, s = _mean_std(r.kl)
            ax.errorbar(x, max(m, 1e-6), yerr=s, marker="o", capsize=3,
                        color="black" if x == top else rank_color(x))
        ax.axvline(k, color="tab:red", lw=1, ls=":", label=f"teacher rank k={k}")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(xs, [str(x) for x in xs[:-1]] + ["dense"])
        ax.set_xlabel("student rank")
        ax.set_ylabel("KL(teacher ‖ student), held-out (nats/char)")
        ax.set_title(f"Students of a rank-{k} teacher (grey: every rate)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def scale_figure(table: pd.DataFrame, ax=None):
    """The gap to dense (factorized − dense of the same width, Welch's 95 % interval)
    against width, one line per rank fraction r/d and init."""
    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(6, 4))
    ax.axhline(0, color="black", lw=1)
    for (frac, init), g in table.groupby(["fraction", "init"]):
        g = g[g.gap.notna()].sort_values("d_model")
        if g.d_model.nunique() < 2:
            continue
        diffs = [d.diff for d in g.gap]
        err = [[d.diff - d.low for d in g.gap], [d.high - d.diff for d in g.gap]]
        ax.errorbar(g.d_model, diffs, yerr=err, marker="o", capsize=3,
                    ls="-" if init == "default" else "--",
                    color=rank_color(int(round(32 * frac))),
                    label=f"r = d/{round(1 / frac)}, {init} init")
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted(table.d_model.unique()), [str(d) for d in
                                                   sorted(table.d_model.unique())])
    layers = "/".join(map(str, table.attrs.get("protocol", {}).get("n_layer", []))) or "?"
    ax.set_xlabel(f"d_model ({layers} layers, head size 32)")
    ax.set_ylabel("factorized − dense, held-out (nats/char)")
    ax.set_title("Does the gap grow with width?")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def gap_figures(tables: dict) -> dict[str, plt.Figure]:
    """The figures of :func:`~.lm_gap.gap_tables`'s tables by file name, each where its
    table has rows. Closed: display them one by one."""
    svd, students, scale = tables["svd"], tables["students"], tables["scale"]
    figs = {}
    if len(svd):
        figs["shakespeare_svd_start.png"] = svd_figure(svd)
    if len(students):
        figs["shakespeare_students.png"] = student_figure(students)
    series = scale[scale.gap.notna()].groupby(["fraction", "init"]).d_model.nunique() \
        if len(scale) else pd.Series(dtype=int)
    if (series >= 2).any():                 # a gap measured at two widths or more
        figs["shakespeare_scale.png"] = scale_figure(scale)
    for fig in figs.values():
        plt.close(fig)
    return figs
