"""An ipywidgets panel to try an init and a rank: signal and gradients at init, predicted
against measured, and the first layer's singular values, redrawn live."""
from __future__ import annotations

import ipywidgets as widgets
import matplotlib.pyplot as plt
import numpy as np
import torch

from ..methods import method_for_init
from ..models.mlp import MLP
from .plots import figure_png
from ..studies.theory import signal_table, singular_values


def _per_layer(ax, table, quantity: str, color, label: str) -> None:
    """Predicted (squares and line) and measured (circles: RMS over draws; gray dots: single
    draws) per-layer values of ``measured_<quantity>`` / ``predicted_<quantity>``."""
    g = table.groupby("layer")
    rms = g[f"measured_{quantity}"].apply(lambda v: float(np.sqrt(np.mean(np.square(v)))))
    ax.plot(rms.index, g[f"predicted_{quantity}"].first(), "s-", color=color,
            label=f"{label}predicted")
    ax.plot(rms.index, rms, "o", color=color, mfc="none", ms=9,
            label=f"{label}measured (RMS over draws)")
    for layer, values in g[f"measured_{quantity}"]:
        ax.plot([layer] * len(values), values, ".", color="gray", alpha=0.5)
    ax.set_yscale("log")
    ax.set_xticks(list(rms.index))
    ax.set_xlabel("layer")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")


class InitPanel(widgets.VBox):
    """Choose an init and a rank: the predicted and measured per-layer RMS at init (over a few
    draws) of the forward signal and of the gradients of A and B, and the singular values of
    the first layer's B·A against a dense W, redraw live."""

    def __init__(self, x, y, ranks, inits, seeds=(0, 1, 2, 3, 4)):
        self.x, self.y, self.seeds = x, y, tuple(seeds)
        self.init = widgets.Dropdown(options=list(inits), value=list(inits)[0], description="init")
        self.rank = widgets.SelectionSlider(options=list(ranks),
                                            value=list(ranks)[len(ranks) // 2],
                                            description="rank", continuous_update=False)
        self.image = widgets.Image(format="png")  # not an Output widget: see Explorer
        for w in (self.init, self.rank):
            w.observe(self.redraw, "value")
        super().__init__([widgets.HBox([self.init, self.rank]), self.image])
        self.redraw()

    def figure(self):
        init, rank = self.init.value, self.rank.value
        t = signal_table([rank], [init], self.seeds, self.x, self.y)
        fig, (left, mid, right) = plt.subplots(1, 3, figsize=(15, 3.6))
        _per_layer(left, t, "std", "C0", "")
        left.set_ylabel("pre-activation RMS at init")
        left.set_title(f"init {init!r}, rank {rank}: forward")
        _per_layer(mid, t, "grad_A", "C1", "∂ℓ/∂A ")
        _per_layer(mid, t, "grad_B", "C2", "∂ℓ/∂B ")
        mid.set_ylabel("per-sample gradient RMS at init")
        mid.set_title("backward (gray: single draws)")
        method, name = method_for_init(init)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seeds[0])
            factorized = singular_values(MLP(method, rank, name))[0]
            torch.manual_seed(self.seeds[0])
            dense = singular_values(MLP("full"))[0]
        right.plot(range(1, len(dense) + 1), dense, "--", color="black", label="dense W (default)")
        right.plot(range(1, len(factorized) + 1), factorized, label=f"B·A, init {init!r}")
        right.set_xscale("log")
        right.set_yscale("log")
        right.set_ylim(bottom=1e-4)
        right.set_xlabel("index i")
        right.set_ylabel("singular value of layer 1")
        right.legend(fontsize=8)
        right.grid(alpha=0.3, which="both")
        fig.tight_layout()
        return fig

    def redraw(self, *_):
        fig = self.figure()
        self.image.value = figure_png(fig)
        plt.close(fig)

    def __repr__(self) -> str:  # where widgets cannot render (a plain console, a static view)
        return (f"InitPanel(init={self.init.value!r}, rank={self.rank.value}): a live panel; "
                "open the notebook in JupyterLab with a running kernel to use it")
