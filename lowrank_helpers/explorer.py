"""An ipywidgets panel over stored records: pick data set, protocol, methods, ranks and seed."""
from __future__ import annotations

import ipywidgets as widgets
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

from .models import MLP
from .plots import plot_curves, plot_final_vs
from .theory import method_for_init, signal_table, singular_values

ALL_SEEDS = "all (mean ± std)"
METRICS = {"test accuracy": "test_accuracy", "test loss": "test_loss",
           "train loss": "train_loss"}
PROTOCOL = ["epochs", "lr", "batch_size", "optimizer", "momentum", "weight_decay", "shuffle",
            "train_subset"]


def _protocol_label(row) -> str:
    text = f"{row.optimizer} lr={row.lr:g} batch {row.batch_size}, {row.epochs} epochs"
    if row.momentum:
        text += f", momentum {row.momentum:g}"
    if row.weight_decay:
        text += f", wd {row.weight_decay:g}"
    if row.shuffle:
        text += ", shuffled"
    if pd.notna(row.train_subset):
        text += f", {int(row.train_subset)} train samples"
    return text


class Explorer(widgets.VBox):
    """Controls on top, the figure (curves and final accuracy against rank) below.

    Every control change redraws the figure from the records; nothing is retrained.
    """

    def __init__(self, records: pd.DataFrame):
        if records.empty:
            raise ValueError("no records to explore: run the study first (lowrank-study)")
        self.records = records.assign(protocol=[_protocol_label(r) for r in records.itertuples()])
        style = {"description_width": "70px"}
        self.dataset = widgets.Dropdown(options=sorted(self.records.dataset.unique()),
                                        description="data set", style=style)
        self.protocol = widgets.Dropdown(description="protocol", style=style,
                                         layout={"width": "420px"})
        self.methods = widgets.SelectMultiple(description="methods", style=style, rows=3)
        self.ranks = widgets.SelectMultiple(description="ranks", style=style, rows=8)
        self.seed = widgets.Dropdown(description="seed", style=style)
        self.metric = widgets.Dropdown(options=list(METRICS), description="curves", style=style)
        # an Image widget, not an Output one: papermill/nbclient can hang on a cell that fills an
        # Output widget (jupyter/nbclient#312); the figure is a picture either way
        self.image = widgets.Image(format="png")
        self._updating = False
        self.figure = None
        controls = widgets.HBox([widgets.VBox([self.dataset, self.protocol, self.seed,
                                               self.metric]), self.methods, self.ranks])
        super().__init__([controls, self.image])
        self.dataset.observe(self._on_dataset, "value")
        self.protocol.observe(lambda change: self._updating or self._on_protocol(), "value")
        for w in (self.methods, self.ranks, self.seed, self.metric):
            w.observe(lambda change: self.draw(), "value")
        self._on_dataset()

    def __repr__(self) -> str:
        # what a notebook shows where the widget cannot render (no kernel, saved output)
        return (f"<Explorer panel over {len(self.records)} records: run the notebook with a "
                "kernel (JupyterLab) to use it>")

    def _subset(self) -> pd.DataFrame:
        r = self.records
        return r[(r.dataset == self.dataset.value) & (r.protocol == self.protocol.value)]

    def _on_dataset(self, change=None) -> None:
        protocols = self.records[self.records.dataset == self.dataset.value].protocol
        options = list(protocols.value_counts().index)  # most runs first
        self._updating = True  # one redraw, by _on_protocol below
        self.protocol.options = options
        # Select explicitly: ipywidgets 8 leaves a Dropdown created without options at
        # value None when its options are set later, which would select no records at all.
        self.protocol.value = options[0]
        self._updating = False
        self._on_protocol()

    def _on_protocol(self, change=None) -> None:
        sub = self._subset()
        self._updating = True  # fill the options without drawing once per control
        self.methods.options = [m for m in ("full", "lora", "ae") if m in set(sub.method)]
        self.methods.value = tuple(self.methods.options)
        ranks = sorted(int(r) for r in sub["rank"].dropna().unique())
        self.ranks.options = ranks
        self.ranks.value = tuple(ranks)
        self.seed.options = [ALL_SEEDS] + sorted(int(s) for s in sub.seed.unique())
        self.seed.value = ALL_SEEDS
        self._updating = False
        self.draw()

    def selection(self) -> pd.DataFrame:
        """The records the controls select."""
        sub = self._subset()
        sub = sub[sub.method.isin(self.methods.value)]
        sub = sub[(sub.method == "full") | sub["rank"].isin(self.ranks.value)]
        if self.seed.value != ALL_SEEDS:
            sub = sub[sub.seed == self.seed.value]
        return sub

    def draw(self) -> None:
        if self._updating:
            return
        sub = self.selection()
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.8),
                                       gridspec_kw={"width_ratios": [3, 2]})
        plot_curves(sub, metric=METRICS[self.metric.value], ax=ax1,
                    title=f"{self.metric.value} per epoch")
        plot_final_vs(sub, "rank", ax=ax2)
        fig.tight_layout()
        self.image.value = _png(fig)
        plt.close(fig)
        self.figure = fig  # the figure on show (for tests and for saving)


def _png(fig, dpi: int = 90) -> bytes:
    import io
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def explorer(records: pd.DataFrame) -> Explorer:
    """The explorer panel over ``records`` (from :func:`lowrank_helpers.load_records`)."""
    return Explorer(records)


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
        self.image.value = _png(fig)
        plt.close(fig)

    def __repr__(self) -> str:  # where widgets cannot render (a plain console, a static view)
        return (f"InitPanel(init={self.init.value!r}, rank={self.rank.value}): a live panel; "
                "open the notebook in JupyterLab with a running kernel to use it")
