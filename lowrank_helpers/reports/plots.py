"""Figures of the study from records. Each takes records (and an optional ``ax``) and returns
the figure; models are grouped as the tables group them (:func:`~lowrank_helpers.core.results.replicates`),
named, coloured and ordered by :mod:`lowrank_helpers.methods`."""
from __future__ import annotations

import io
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.ticker import MaxNLocator

from ..methods import METHODS, family_label, init_color, linestyle, model_label, rank_color
from ..core.results import epochs_frame, protocol_labels, replicates
from ..tasks import TASKS


def _ax(ax, figsize=(10, 5)):
    if ax is None:
        fig, ax = plt.subplots(figsize=figsize)
    return ax.figure, ax


def _with_protocol(label: str, protocol: str) -> str:
    return f"{label} [{protocol}]" if protocol else label


def mean_band(df: pd.DataFrame, x: str, y: str) -> pd.DataFrame:
    """Mean, standard deviation, min, max and count of ``y`` over seeds, per ``x``."""
    return df.groupby(x)[y].agg(["mean", "std", "min", "max", "count"]).reset_index()


def _no_records(ax):
    ax.text(0.5, 0.5, "no records", ha="center", va="center", transform=ax.transAxes)
    return ax.figure


def _entry(runs: pd.DataFrame) -> str:
    """What the runs' history entries are keyed by: "epoch" or "iter" (their task's)."""
    tasks = set(runs.task) if len(runs) and "task" in runs else set()
    return TASKS[next(iter(tasks))].entry if len(tasks) == 1 and next(iter(tasks)) in TASKS \
        else "epoch"


def plot_curves(runs: pd.DataFrame, metric: str = "test_accuracy", ax=None, title=None,
                band: str = "std"):
    """Test accuracy (or another metric of the history) against epoch (or step, for a task
    that evaluates every so many steps), one line per model.

    Full-rank in black, one colour per rank, autoencoder layers dashed, as in the original.
    With several seeds per model: the mean line and a band (``band="std"``: ±1 standard
    deviation; ``"minmax"``: the range over seeds). Records of several protocols: one line per
    model and protocol, the protocol's differing fields in brackets.
    """
    fig, ax = _ax(ax)
    runs = replicates(runs)
    if runs.empty:
        return _no_records(ax)
    runs = runs.assign(_protocol=protocol_labels(runs))
    scale = 100 if metric.endswith("accuracy") else 1
    key = _entry(runs)
    lines = 0
    for _, g in runs.groupby("group_id", sort=False):
        first = g.iloc[0]
        epochs = epochs_frame(g)
        if epochs.empty or metric not in epochs:
            continue
        stats = mean_band(epochs, key, metric)
        n_seeds = int(stats["count"].max())
        label = _with_protocol(first.model, first._protocol)
        if n_seeds > 1:
            label += f" ({n_seeds} seeds)"
        color = rank_color(first["rank"])
        ax.plot(stats[key], stats["mean"] * scale, linestyle(first.method), color=color,
                label=label, lw=1.5)
        lines += 1
        if n_seeds > 1:
            lo, hi = ((stats["mean"] - stats["std"], stats["mean"] + stats["std"])
                      if band == "std" else (stats["min"], stats["max"]))
            ax.fill_between(stats[key], lo * scale, hi * scale, color=color, alpha=0.2, lw=0)
    ax.set_xlabel("epoch" if key == "epoch" else "step")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(metric.replace("_", " ") + (" (%)" if scale == 100 else ""))
    ax.set_title(title or f"{metric.replace('_', ' ').capitalize()} per "
                 f"{'epoch' if key == 'epoch' else 'step'}")
    ax.grid(alpha=0.3)
    if lines:
        ax.legend(fontsize=8, loc="lower right" if scale == 100 else "upper right",
                  ncol=2 if lines > 8 else 1)
    return fig


def plot_final_vs(runs: pd.DataFrame, x: str = "rank", metric: str = "final_test_accuracy",
                  ax=None, title=None):
    """Final test accuracy against rank (``x="rank"``) or parameter count (``x="params"``) for
    each factorized method (and init); the full-rank level as a horizontal line. Mean ± std
    over seeds; records of several protocols: one line per protocol.
    """
    fig, ax = _ax(ax, figsize=(7, 4.5))
    runs = replicates(runs)
    if runs.empty:
        return _no_records(ax)
    runs = runs.assign(_protocol=protocol_labels(runs))
    scale = 100 if metric.endswith("accuracy") else 1
    factorized = runs[runs["rank"].notna()]
    for (method, init, _), group in factorized.groupby(["method", "init", "protocol_id"],
                                                       sort=False):
        stats = mean_band(group, x, metric).sort_values(x)
        ax.errorbar(stats[x].astype(float), stats["mean"] * scale,
                    yerr=stats["std"].fillna(0) * scale, fmt="o" + linestyle(method),
                    color=init_color(init), capsize=3,
                    label=_with_protocol(family_label(method, init), group._protocol.iloc[0]))
    for _, full in runs[runs["rank"].isna()].groupby(["group_id"], sort=False):
        values, first = full[metric], full.iloc[0]
        mean, std = values.mean() * scale, (values.std() if len(values) > 1 else 0.0) * scale
        name = model_label(first.method, None, first.init)
        name += f" ({mean:.1f}%)" if scale == 100 else ""
        line = ax.axhline(mean, color="black", lw=1.2, label=_with_protocol(name, first._protocol),
                          ls="-" if not first._protocol else (0, (5, 2 + len(ax.lines))))
        if std > 0:
            ax.axhspan(mean - std, mean + std, color=line.get_color(), alpha=0.1, lw=0)
        if x == "params":
            ax.axvline(first.params, color="black", lw=0.8, ls=":",
                       label=f"{model_label(first.method, None, first.init)} parameters")
    ax.set_xscale("log", base=2 if x == "rank" else 10)
    if x == "rank" and len(factorized):
        ranks = sorted(factorized["rank"].dropna().unique().astype(int))
        ax.set_xticks(ranks, [str(r) for r in ranks])
    ax.set_xlabel("rank r" if x == "rank" else "trainable parameters")
    what = "epoch-1" if metric.startswith("epoch1") else "final"
    shown = metric.replace("final_", "").replace("epoch1_", "").replace("_", " ")
    ax.set_ylabel(f"{what} {shown} (%)" if scale == 100 else f"{what} {shown}")
    ax.set_title(title or f"{what.capitalize()} {shown} against "
                 f"{'rank' if x == 'rank' else 'parameters'}")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="lower right" if scale == 100 else "upper right")
    return fig


def study_figures(runs: pd.DataFrame, task: str) -> dict[str, plt.Figure]:
    """The study's standard figures of one task, keyed by the file name they are saved under:
    each factorized method against full-rank, all models, and the task's headline metric
    (final test accuracy for the MLP, held-out loss for the transformer) against rank and
    against parameters."""
    runs = runs[runs.task == task] if len(runs) else runs
    name = TASKS[task].title if task in TASKS else task
    metric = TASKS[task].score if task in TASKS else "test_accuracy"
    what = "accuracy" if metric == "test_accuracy" else metric
    present = set(runs.method) if len(runs) else set()
    dense = [m for m, spec in METHODS.items() if not spec.factorized and m in present]
    figures = {}
    for method, spec in METHODS.items():
        if spec.factorized and method in present:
            figures[f"{task}_{method}_vs_full.png"] = plot_curves(
                runs[runs.method.isin([*dense, method])], metric,
                title=f"{name}: {spec.label} vs "
                      f"{' and '.join(METHODS[d].label for d in dense) or 'no dense model'}")
    figures[f"{task}_all.png"] = plot_curves(runs, metric, title=f"{name}: all models")
    shown = metric.replace("_", " ")
    figures[f"{task}_{what}_vs_rank.png"] = plot_final_vs(
        runs, "rank", f"final_{metric}", title=f"{name}: final {shown} against rank")
    figures[f"{task}_{what}_vs_params.png"] = plot_final_vs(
        runs, "params", f"final_{metric}", title=f"{name}: final {shown} against parameters")
    return figures


def save_figures(figures: dict[str, plt.Figure], img_dir, dpi: int = 110) -> list[str]:
    img_dir = Path(img_dir)
    img_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for fname, fig in figures.items():
        fig.savefig(img_dir / fname, dpi=dpi, bbox_inches="tight")
        paths.append(str(img_dir / fname))
    return paths


def figure_png(fig, dpi: int = 90) -> bytes:
    """The figure as PNG bytes (what the panels show in their Image widgets)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()
