"""An ipywidgets panel over stored records: pick task, protocol, methods, ranks and seed."""
from __future__ import annotations

import ipywidgets as widgets
import matplotlib.pyplot as plt
import pandas as pd

from ..methods import METHODS
from .plots import figure_png, plot_curves, plot_final_vs
from ..core.results import replicates
from ..tasks import TASKS

ALL_SEEDS = "all (mean ± std)"


class Explorer(widgets.VBox):
    """Controls on top, the figure (curves and final accuracy against rank) below.

    A protocol is everything that trains and evaluates runs alike (task, widths and the
    training protocol: ``protocol_id``), so the curves never pool unlike runs. Every control
    change redraws the figure from the records; nothing is retrained.
    """

    def __init__(self, records: pd.DataFrame):
        if records.empty:
            raise ValueError("no records to explore: run the study first (lowrank-study)")
        self.records = replicates(records).assign(
            _label=lambda r: r.protocol + ", widths " + r.widths)
        style = {"description_width": "70px"}
        self.task = widgets.Dropdown(options=sorted(self.records.task.unique()),
                                     description="task", style=style)
        self.protocol = widgets.Dropdown(description="protocol", style=style,
                                         layout={"width": "640px"})
        self.methods = widgets.SelectMultiple(description="methods", style=style, rows=3)
        self.ranks = widgets.SelectMultiple(description="ranks", style=style, rows=8)
        self.seed = widgets.Dropdown(description="seed", style=style)
        self.metric = widgets.Dropdown(description="curves", style=style)
        # an Image widget, not an Output one: papermill/nbclient can hang on a cell that fills an
        # Output widget (jupyter/nbclient#312); the figure is a picture either way
        self.image = widgets.Image(format="png")
        self._updating = False
        self.figure = None
        controls = widgets.HBox([widgets.VBox([self.task, self.protocol, self.seed,
                                               self.metric]), self.methods, self.ranks])
        super().__init__([controls, self.image])
        self.task.observe(self._on_task, "value")
        self.protocol.observe(lambda change: self._updating or self._on_protocol(), "value")
        for w in (self.methods, self.ranks, self.seed, self.metric):
            w.observe(lambda change: self.draw(), "value")
        self._on_task()

    def __repr__(self) -> str:
        # what a notebook shows where the widget cannot render (no kernel, saved output)
        return (f"<Explorer panel over {len(self.records)} records: run the notebook with a "
                "kernel (JupyterLab) to use it>")

    def _subset(self) -> pd.DataFrame:
        r = self.records
        return r[(r.task == self.task.value) & (r.protocol_id == self.protocol.value)]

    def _on_task(self, change=None) -> None:
        sub = self.records[self.records.task == self.task.value]
        counts = sub.groupby("protocol_id")._label.agg(["first", "size"])
        counts = counts.sort_values("size", ascending=False, kind="stable")  # most runs first
        options = [(f"{row['first']} ({row['size']} runs)", pid) for pid, row in counts.iterrows()]
        self._updating = True  # one redraw, by _on_protocol below
        self.protocol.options = options
        # Select explicitly: ipywidgets 8 leaves a Dropdown created without options at
        # value None when its options are set later, which would select no records at all.
        self.protocol.value = options[0][1]
        self._updating = False
        self._on_protocol()

    def _on_protocol(self, change=None) -> None:
        sub = self._subset()
        self._updating = True  # fill the options without drawing once per control
        self.methods.options = [m for m in METHODS if m in set(sub.method)]
        self.methods.value = tuple(self.methods.options)
        ranks = sorted(int(r) for r in sub["rank"].dropna().unique())
        self.ranks.options = ranks
        self.ranks.value = tuple(ranks)
        self.seed.options = [ALL_SEEDS] + sorted(int(s) for s in sub.seed.unique())
        self.seed.value = ALL_SEEDS
        recorded = {k for h in sub.history if h for k in h[0]}  # the task's metrics recorded
        metrics = [m for m in TASKS[self.task.value].metrics if m in recorded]
        keep = self.metric.value if self.metric.value in metrics else metrics[0]
        self.metric.options = [(m.replace("_", " "), m) for m in metrics]
        self.metric.value = keep
        self._updating = False
        self.draw()

    def selection(self) -> pd.DataFrame:
        """The records the controls select."""
        sub = self._subset()
        sub = sub[sub.method.isin(self.methods.value)]
        sub = sub[sub["rank"].isna() | sub["rank"].isin(self.ranks.value)]
        if self.seed.value != ALL_SEEDS:
            sub = sub[sub.seed == self.seed.value]
        return sub

    def draw(self) -> None:
        if self._updating:
            return
        sub = self.selection()
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.8),
                                       gridspec_kw={"width_ratios": [3, 2]})
        plot_curves(sub, metric=self.metric.value, ax=ax1,
                    title=f"{self.metric.value.replace('_', ' ')} per epoch")
        plot_final_vs(sub, "rank", ax=ax2)
        fig.tight_layout()
        self.image.value = figure_png(fig)
        plt.close(fig)
        self.figure = fig  # the figure on show (for tests and for saving)


def explorer(records: pd.DataFrame) -> Explorer:
    """The explorer panel over ``records`` (from :func:`lowrank_helpers.load_records`)."""
    return Explorer(records)
