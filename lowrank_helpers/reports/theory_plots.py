"""Figures of the init theory: break-even ranks, signal and gradients at init predicted
against measured, and singular values. Each takes data (and optional axes) and returns the
figure."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from ..methods import init_color
from ..studies.theory import break_even_rank, parameter_ratio


def _ax(ax, figsize=(7, 4.5)):
    if ax is None:
        fig, ax = plt.subplots(figsize=figsize)
    return ax.figure, ax


def plot_break_even(widths=(784, 512, 512, 10), ranks=None, ax=None):
    """Parameters of B·A over those of W against rank, per layer, with each break-even rank."""
    fig, ax = _ax(ax)
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
    prediction (:func:`~lowrank_helpers.studies.theory.predict_backward_std`), dotted: its δ in the
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
    fig, ax = _ax(ax)
    for label, values in spectra.items():
        sv = np.asarray(values[layer])
        init = label.split()[0]
        ax.plot(np.arange(1, len(sv) + 1), sv, label=label,
                color="black" if "dense" in label else init_color(init),
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
