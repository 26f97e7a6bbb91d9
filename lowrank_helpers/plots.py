"""Figures of the study. Each takes data (and an optional ``ax``) and returns the figure."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import MaxNLocator
import pandas as pd

from .results import epochs_frame

# The original's colours for ranks 4…128, extended to ranks 1 and 2 (and others, by cycling).
RANK_COLORS = {1: "tab:cyan", 2: "tab:olive", 4: "blue", 8: "green", 16: "red", 32: "purple",
               64: "orange", 128: "brown"}
_EXTRA = plt.get_cmap("tab10").colors
METHOD_STYLE = {"full": "-", "lora": "-", "ae": "--"}
METHOD_NAMES = {"full": "full-rank", "lora": "LoRA layers", "ae": "autoencoder layers"}


def rank_color(rank) -> str:
    if pd.isna(rank):
        return "black"
    return RANK_COLORS.get(int(rank), _EXTRA[int(np.log2(max(int(rank), 1))) % len(_EXTRA)])


def _ax(ax, figsize=(10, 5)):
    if ax is None:
        fig, ax = plt.subplots(figsize=figsize)
    return ax.figure, ax


def _model_label(method: str, rank, init: str) -> str:
    if method == "full":
        return "full-rank MLP"
    extra = "" if (method, init) in (("lora", "lora"), ("ae", "default")) else f", init {init}"
    return f"{method} r={int(rank)}{extra}"


def mean_band(df: pd.DataFrame, x: str, y: str) -> pd.DataFrame:
    """Mean, standard deviation, min, max and count of ``y`` over seeds, per ``x``."""
    return df.groupby(x)[y].agg(["mean", "std", "min", "max", "count"]).reset_index()


def plot_curves(runs: pd.DataFrame, metric: str = "test_accuracy", ax=None, title=None,
                band: str = "std"):
    """Test accuracy (or another per-epoch metric) against epoch, one line per model.

    Full-rank in black, one colour per rank, autoencoder layers dashed, as in the original.
    With several seeds per model: the mean line and a band (``band="std"``: ±1 standard
    deviation; ``"minmax"``: the range over seeds).
    """
    fig, ax = _ax(ax)
    epochs = epochs_frame(runs)
    if epochs.empty:
        ax.text(0.5, 0.5, "no records", ha="center", va="center", transform=ax.transAxes)
        return fig
    scale = 100 if metric.endswith("accuracy") else 1
    order = {"full": 0, "lora": 1, "ae": 2}
    keys = (epochs[["method", "rank", "init"]].drop_duplicates()
            .assign(o=lambda d: d.method.map(order), r=lambda d: d["rank"].fillna(0))
            .sort_values(["o", "init", "r"]))
    for _, key in keys.iterrows():
        sel = ((epochs.method == key.method) & (epochs.init == key.init)
               & (epochs["rank"].isna() if pd.isna(key["rank"]) else epochs["rank"] == key["rank"]))
        stats = mean_band(epochs[sel], "epoch", metric)
        n_seeds = int(stats["count"].max())
        label = _model_label(key.method, key["rank"], key.init)
        if n_seeds > 1:
            label += f" ({n_seeds} seeds)"
        color = rank_color(key["rank"])
        ax.plot(stats.epoch, stats["mean"] * scale, METHOD_STYLE[key.method], color=color,
                label=label, lw=1.5)
        if n_seeds > 1:
            lo, hi = ((stats["mean"] - stats["std"], stats["mean"] + stats["std"])
                      if band == "std" else (stats["min"], stats["max"]))
            ax.fill_between(stats.epoch, lo * scale, hi * scale, color=color, alpha=0.2, lw=0)
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(("test accuracy (%)" if scale == 100 else metric.replace("_", " ")))
    ax.set_title(title or "Test accuracy per epoch")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right", ncol=2 if len(keys) > 8 else 1)
    return fig


def plot_final_vs(runs: pd.DataFrame, x: str = "rank", metric: str = "final_test_accuracy",
                  ax=None, title=None):
    """Final test accuracy against rank (``x="rank"``) or parameter count (``x="params"``) for
    each factorized method; the full-rank level as a horizontal line. Mean ± std over seeds.
    """
    fig, ax = _ax(ax, figsize=(7, 4.5))
    if runs.empty:
        ax.text(0.5, 0.5, "no records", ha="center", va="center", transform=ax.transAxes)
        return fig
    scale = 100 if metric.endswith("accuracy") else 1
    factorized = runs[runs.method != "full"]
    for (method, init), group in factorized.groupby(["method", "init"], sort=False):
        stats = mean_band(group, x, metric).sort_values(x)
        label = METHOD_NAMES[method] + ("" if (method, init) in (("lora", "lora"),
                                                                 ("ae", "default"))
                                        else f" (init {init})")
        ax.errorbar(stats[x].astype(float), stats["mean"] * scale,
                    yerr=stats["std"].fillna(0) * scale, fmt="o" + METHOD_STYLE[method],
                    capsize=3, label=label)
    full = runs[runs.method == "full"][metric]
    if len(full):
        mean, std = full.mean() * scale, (full.std() if len(full) > 1 else 0.0) * scale
        ax.axhline(mean, color="black", lw=1.2, label=f"full-rank ({mean:.1f}%)"
                   if scale == 100 else "full-rank")
        if std > 0:
            ax.axhspan(mean - std, mean + std, color="black", alpha=0.1, lw=0)
        if x == "params":
            ax.axvline(runs[runs.method == "full"]["params"].iloc[0], color="black", lw=0.8,
                       ls=":", label="full-rank parameters")
    ax.set_xscale("log", base=2 if x == "rank" else 10)
    if x == "rank":
        ranks = sorted(factorized["rank"].dropna().unique().astype(int))
        ax.set_xticks(ranks, [str(r) for r in ranks])
    ax.set_xlabel("rank r" if x == "rank" else "trainable parameters")
    what = "epoch-1" if metric.startswith("epoch1") else "final"
    ax.set_ylabel(f"{what} test accuracy (%)" if scale == 100 else metric.replace("_", " "))
    ax.set_title(title or f"{what.capitalize()} test accuracy against "
                 f"{'rank' if x == 'rank' else 'parameters'}")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="lower right")
    return fig


def study_figures(runs: pd.DataFrame, dataset: str) -> dict[str, plt.Figure]:
    """The study's standard figures, keyed by the file name they are saved under."""
    runs = runs[runs.dataset == dataset]
    name = {"fashion_mnist": "Fashion-MNIST", "mnist": "MNIST"}.get(dataset, dataset)
    ae, lora = runs[runs.method.isin(["full", "ae"])], runs[runs.method.isin(["full", "lora"])]
    return {
        f"{dataset}_ae_vs_full.png": plot_curves(ae, title=f"{name}: autoencoder layers vs full-rank"),
        f"{dataset}_lora_vs_full.png": plot_curves(lora, title=f"{name}: LoRA layers vs full-rank"),
        f"{dataset}_all.png": plot_curves(runs, title=f"{name}: all models"),
        f"{dataset}_accuracy_vs_rank.png": plot_final_vs(runs, "rank", title=f"{name}: final "
                                                         "test accuracy against rank"),
        f"{dataset}_accuracy_vs_params.png": plot_final_vs(runs, "params", title=f"{name}: final "
                                                           "test accuracy against parameters"),
    }


def save_figures(figures: dict[str, plt.Figure], img_dir, dpi: int = 110) -> list[str]:
    from pathlib import Path
    img_dir = Path(img_dir)
    img_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for fname, fig in figures.items():
        fig.savefig(img_dir / fname, dpi=dpi, bbox_inches="tight")
        paths.append(str(img_dir / fname))
    return paths


INIT_COLORS = {"lora": "tab:blue", "default": "tab:orange", "matched": "tab:green",
               "he": "tab:red", "spectral": "tab:purple"}


def plot_break_even(widths=(784, 512, 512, 10), ranks=None, ax=None):
    """Parameters of B·A over those of W against rank, per layer, with each break-even rank."""
    from .theory import break_even_rank, parameter_ratio
    fig, ax = _ax(ax, figsize=(7, 4.5))
    ranks = np.arange(1, 513) if ranks is None else np.asarray(ranks)
    for l, (d_in, d_out) in enumerate(zip(widths[:-1], widths[1:])):
        line, = ax.plot(ranks, [parameter_ratio(d_in, d_out, r) for r in ranks],
                        label=f"layer {l + 1}: {d_in} → {d_out}")
        r_star = break_even_rank(d_in, d_out)
        ax.axvline(r_star, color=line.get_color(), ls=":", lw=1)
        ax.annotate(f"r* = {r_star:.1f}", (r_star, 1), textcoords="offset points", xytext=(3, 6),
                    color=line.get_color(), fontsize=8)
    ax.axhline(1, color="black", lw=1)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("rank r")
    ax.set_ylabel("parameters of B·A / parameters of W")
    ax.set_title("Factorized against dense: cost per layer and break-even rank")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return fig


def plot_signal(table: pd.DataFrame, measured: str = "measured_std",
                predicted: str = "predicted_std", ylabel: str = "pre-activation RMS at init",
                dense: list | None = None, axes=None, rms: bool | None = None):
    """One panel per init: the predicted value per layer against rank (lines) and the measured
    one (points: root mean square over seeds for an RMS — ``rms``, by default for columns
    named ``*_std`` or ``*_grad_*`` — and the mean otherwise; bars: spread of single
    draws, 16th to 84th percentile). ``dense``: the dense layers' values, as dotted lines.
    Given ``axes`` (one per init), it draws into them and leaves the figure's title and layout
    to the caller."""
    inits = list(dict.fromkeys(table["init"]))
    own = axes is None
    if own:
        fig, axes = plt.subplots(1, len(inits), figsize=(3.2 * len(inits), 3.6), sharey=True,
                                 squeeze=False)
        axes = axes[0]
    fig = axes[0].figure
    layers = sorted(table["layer"].unique())
    colors = plt.get_cmap("viridis")(np.linspace(0, 0.85, len(layers)))
    if rms is None:
        rms = measured.endswith("_std") or "_grad_" in measured
    for ax, init in zip(axes, inits):
        t = table[table["init"] == init]
        for color, layer in zip(colors, layers):
            tl = t[t["layer"] == layer].groupby("rank")
            pred = tl[predicted].first()
            ax.plot(pred.index, pred.values, color=color, lw=1.5, label=f"layer {layer}")
            centre = (tl[measured].apply(lambda v: np.sqrt(np.mean(np.square(v)))) if rms
                      else tl[measured].mean())
            lo, hi = tl[measured].quantile(0.16), tl[measured].quantile(0.84)
            ax.errorbar(centre.index, centre.values, fmt="o", ms=4, color=color,
                        yerr=[np.clip(centre - lo, 0, None), np.clip(hi - centre, 0, None)],
                        capsize=2, lw=0.8)
            if dense is not None:
                ax.axhline(dense[layer - 1], color=color, ls=":", lw=1)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ranks = sorted(t["rank"].unique())
        ax.set_xticks(ranks, [str(int(r)) for r in ranks], fontsize=7)
        ax.set_title(f"init {init!r}", fontsize=10)
        ax.set_xlabel("rank r")
        ax.grid(alpha=0.3, which="both")
    axes[0].set_ylabel(ylabel)
    axes[0].legend(fontsize=7)
    if own:
        fig.suptitle("lines: predicted; points: measured (bars: spread over single draws)"
                     + ("; dotted: dense layers" if dense is not None else ""), fontsize=9)
        fig.tight_layout()
    return fig


def plot_gradients(table: pd.DataFrame, dense: list[dict] | None = None):
    """Per-sample gradient RMS at init, predicted (lines) against measured (points), one column
    per init: at each layer's output (δ = ∂ℓ/∂z), of A and of B. ``dense``: a dense MLP's
    prediction (:func:`~lowrank_helpers.theory.predict_backward_std`), dotted: its δ in the
    first row, its ∂ℓ/∂W in the others."""
    inits = list(dict.fromkeys(table["init"]))
    rows = [("delta", "RMS of ∂ℓ/∂z (layer output)"), ("A", "RMS of ∂ℓ/∂A"),
            ("B", "RMS of ∂ℓ/∂B")]
    fig, axes = plt.subplots(len(rows), len(inits), figsize=(3.2 * len(inits), 3.2 * len(rows)),
                             sharey="row", squeeze=False)
    for ax_row, (key, label) in zip(axes, rows):
        ref = None if dense is None else [d["delta" if key == "delta" else "W"] for d in dense]
        plot_signal(table, measured=f"measured_grad_{key}", predicted=f"predicted_grad_{key}",
                    ylabel=label, dense=ref, axes=ax_row)
    for ax in axes[1:].ravel():
        ax.set_title("")
    fig.suptitle("Per-sample gradients at init — lines: predicted; points: measured (bars: spread "
                 "over single draws)" + ("; dotted: a dense MLP (δ, then ∂ℓ/∂W)"
                                         if dense is not None else ""), fontsize=9)
    fig.tight_layout()
    return fig


def plot_spectra(spectra: dict[str, list], layer: int = 0, ax=None, title=None):
    """Singular values (largest first) of one layer's weight for each labelled model."""
    fig, ax = _ax(ax, figsize=(7, 4.5))
    for label, values in spectra.items():
        sv = np.asarray(values[layer])
        init = label.split()[0]
        ax.plot(np.arange(1, len(sv) + 1), sv, label=label, color=INIT_COLORS.get(init),
                ls="-" if "dense" not in label else "--", lw=1.5)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_ylim(bottom=1e-4)
    ax.set_xlabel("index i")
    ax.set_ylabel("singular value σ_i")
    ax.set_title(title or f"Singular values of layer {layer + 1}'s weight")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return fig
