"""The extensions comparison's figures (``notebooks/extensions.ipynb``, README): the score
against trainable parameters and optimizer state, and the held-out curves, one style per row
in every figure."""
from __future__ import annotations

import math

import pandas as pd

from ..core.stats import mean_interval
from ..studies.lm import load_lm_records
from .extensions import DENSE, METRICS, NARROW, _is_narrow


def _styles(names) -> dict[str, dict]:
    """A colour and marker per row name, the same in every figure: dense black (the narrower
    dense models hollow), the others
    through matplotlib's ten colours, the marker changing when the colours come round again
    (no two of the first 40 rows look alike)."""
    from ..methods.naming import COLOR_CYCLE as cycle
    markers = ("o", "s", "^", "D")
    out, i = {}, 0
    for name in dict.fromkeys(names):
        if name == DENSE:
            out[name] = {"color": "black", "marker": "o"}
            continue
        if _is_narrow([name])[0]:                       # dense's, hollow
            out[name] = {"color": "black", "marker": "o", "markerfacecolor": "white"}
            continue
        out[name] = {"color": cycle[i % len(cycle)],
                     "marker": markers[(i // len(cycle)) % len(markers)]}
        i += 1
    return out


def _short(v: float, _pos=None) -> str:
    """An axis number the short way: 30k, 200k, 1.5M."""
    for unit, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= unit:
            return f"{v / unit:g}{suffix}"
    return f"{v:g}"


def _log_axis(axis) -> None:
    """Log ticks at 1, 2 and 5 of each decade, labelled the short way, no minor labels."""
    from matplotlib import ticker
    axis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(ticker.FuncFormatter(_short))
    axis.set_minor_formatter(ticker.NullFormatter())


def extensions_figure(table: pd.DataFrame, part: str = "lm"):
    """The score against trainable parameters and against optimizer-state bytes, one marker
    per model and rank (its seeds' mean and 95 % interval)."""
    import matplotlib.pyplot as plt
    header, _, scale = METRICS[part]
    fig, axes = plt.subplots(1, 2, figsize=(14, 4.5), sharey=True)
    # the narrower dense models as one series: dense at fewer parameters
    series = table.name.where(~_is_narrow(table.name), NARROW.format(shape="equal parameters"))
    styles = _styles(series)
    for name, g in table.groupby(series, sort=False):
        half = [0.0 if math.isnan(hi) else scale * (hi - m)
                for m, _, hi in map(mean_interval, g.scores)]
        for ax, x in zip(axes, ("parameters", "optimizer_state_bytes")):
            ax.errorbar(g[x], g.score * scale, yerr=half, capsize=3, label=name,
                        linestyle="-" if len(g) > 1 else "none", **styles[name])
    axes[0].set(xscale="log", xlabel="trainable parameters", ylabel=header)
    axes[1].set(xscale="log", xlabel="optimizer state (bytes, from the state tensors)")
    for ax in axes:
        _log_axis(ax.xaxis)
    axes[1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1))  # off the data
    task = "the character transformer" if part == "lm" else "the Fashion-MNIST MLP"
    fig.suptitle(f"The extensions on {task} at each rank, against dense and plain B·A "
                 "(mean, 95 % CI)")
    fig.tight_layout()
    return fig


def extensions_curves(table: pd.DataFrame, rank: int, cfg):
    """Held-out loss against steps at ``rank``: every model's seeds at its chosen rate (mean
    over seeds at each evaluation), beside dense and plain B·A; read from the records."""
    import matplotlib.pyplot as plt
    from pathlib import Path
    runs = pd.concat([load_lm_records(d) for d in (cfg.lm_dir, cfg.results_dir)
                      if Path(d).is_dir()], ignore_index=True)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    rows = table[(table["rank"] == rank) | (table.name == DENSE)]
    styles = _styles(table.name)
    for _, r in rows.iterrows():
        hist = runs[runs.run_id.isin(r.run_ids)].drop_duplicates("run_id").history
        curves = pd.DataFrame([{h["iter"]: h["val_loss"] for h in hs} for hs in hist])
        if curves.empty:
            continue
        mean = curves.mean()
        seeds = f"{r.seeds} seed{'s' * (r.seeds != 1)}"
        ax.plot(mean.index, mean.values, label=f"{r['name']} ({seeds})", markersize=3,
                linestyle="--" if r["name"] == DENSE else "-", **styles[r["name"]])
    ax.set(xlabel="step", ylabel="held-out loss (nats/char)",
           title=f"Held-out loss during training at rank {rank} (mean over seeds)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
