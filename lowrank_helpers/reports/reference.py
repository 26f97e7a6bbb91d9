"""Tables and computed prose from records: every number in them is computed here.

Rows are models trained alike: records are grouped by ``group_id`` (task, model, protocol),
so only the seed ever replicates, and a run stored twice counts once. A table over records of
several protocols gets one row per protocol, labelled by the fields that differ; prose that
compares models refuses such a mix, naming those fields.

The original study's numbers are read off its three figures (LoRALinear README; Fashion-MNIST,
its protocol, one seed), to about ±2 points at epoch 1 and ±0.5 at epoch 100. They appear only
beside runs of that protocol on that task (:func:`~lowrank_helpers.core.results.is_reference`). The original shows ranks 4…128
only; it has no published numbers for ranks 1 and 2.
"""
from __future__ import annotations

import pandas as pd

from ..methods import METHODS
from ..core.results import is_reference, protocol_labels, replicates
from ..tasks import TASKS

#: (method, rank) -> (epoch-1 accuracy, epoch-100 accuracy) in %, as text (some are ranges).
ORIGINAL = {
    ("full", None): ("52.5", "84.5"),
    ("lora", 4): ("43", "75.5"), ("lora", 8): ("62", "82.2"), ("lora", 16): ("61", "85.2"),
    ("lora", 32): ("62.5", "86.4"), ("lora", 64): ("60", "86.2"), ("lora", 128): ("40", "86.5"),
    ("ae", 4): ("10–13", "82.3"),
    **{("ae", r): ("10–14", "83.5–84.5") for r in (8, 16, 32, 64, 128)},
}


def _rank(value) -> int | None:
    return None if pd.isna(value) else int(value)


def original_of(row) -> tuple[str, str] | None:
    """The original's (epoch 1, epoch 100) numbers for the model of ``row``, if it is one the
    original trained and ``row`` was trained under the original's protocol."""
    if not is_reference(row) or row["method"] not in METHODS:
        return None
    if METHODS[row["method"]].own_init != row["init"]:  # the original used each method's own
        return None
    return ORIGINAL.get((row["method"], _rank(row["rank"])))


def _midpoint(text: str) -> float:
    lo, _, hi = text.partition("–")
    return (float(lo) + float(hi or lo)) / 2


def _fmt(values: pd.Series) -> str:
    values = values.dropna() * 100
    if len(values) == 0:
        return "—"
    if len(values) == 1:
        return f"{values.iloc[0]:.1f}"
    return f"{values.mean():.1f} ± {values.std():.1f}"


def _groups(runs: pd.DataFrame):
    """(first row, rows) per model trained alike, seeds de-duplicated, in registry order."""
    runs = replicates(runs)
    if runs.empty:
        return
    runs = runs.assign(_protocol=protocol_labels(runs))
    for _, g in runs.groupby("group_id", sort=False):
        yield g.iloc[0], g.sort_values("seed")


def _score_task(runs: pd.DataFrame):
    """The one task of ``runs`` if its headline metric is not test accuracy, else None."""
    tasks = set(runs.task) if len(runs) else set()
    if len(tasks) == 1 and next(iter(tasks)) in TASKS:
        task = TASKS[next(iter(tasks))]
        return task if task.score != "test_accuracy" else None
    return None


def _fmt_score(values: pd.Series) -> str:
    values = values.dropna()
    if len(values) == 0:
        return "—"
    if len(values) == 1:
        return f"{values.iloc[0]:.3f}"
    return f"{values.mean():.3f} ± {values.std():.3f}"


def score_table(runs: pd.DataFrame) -> pd.DataFrame:
    """:func:`comparison_table` of a task whose headline metric is not accuracy (the
    transformer's held-out loss): per model the metric at the first evaluation and at the end
    (read on the whole split), mean ± std over seeds."""
    task = _score_task(runs)
    metric = task.score
    rows = []
    for first, g in _groups(runs):
        start = [h[0].get(metric) for h in g.history if h]
        rows.append({"model": first.model, "protocol": first._protocol,
                     "parameters": f"{int(first.params):,}", "seeds": len(g),
                     f"{metric} at {task.entry} {g.history.iloc[0][0][task.entry]}"
                     if len(g.history.iloc[0]) else "first": _fmt_score(pd.Series(start)),
                     "budget": first.protocol,
                     f"final {metric}": _fmt_score(g[f"final_{metric}"])})
    table = pd.DataFrame(rows)
    if not table.empty and not (table.protocol != "").any():
        table = table.drop(columns="protocol")
    return table


def comparison_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Epoch-1 and final test accuracy per model (mean ± std over seeds when there are several)
    and, for runs of the original's protocol, the original's numbers and the final difference
    to the original's midpoint. One row per model and protocol; a ``protocol`` column names
    what differs where the records mix protocols. A task whose headline metric is another
    (the transformer's held-out loss) gets :func:`score_table`.

    ``runs`` is :func:`lowrank_helpers.load_records` output.
    """
    if _score_task(runs) is not None:
        return score_table(runs)
    rows = []
    for first, g in _groups(runs):
        orig = original_of(first)
        final = g.final_test_accuracy.dropna()
        diverged = g.diverged_epoch.notna().sum()
        rows.append({
            "model": first.model, "protocol": first._protocol,
            "parameters": f"{int(first.params):,}", "seeds": len(g),
            "epoch 1": _fmt(g.epoch1_test_accuracy),
            "epoch 1 (original)": orig[0] if orig else "—",
            "epochs": int(first.epochs),
            "final": _fmt(g.final_test_accuracy) + (f" ({diverged} diverged)" if diverged else ""),
            "epoch 100 (original)": orig[1] if orig else "—",
            "final − original": (f"{final.mean() * 100 - _midpoint(orig[1]):+.1f}"
                                 if orig and len(final) else "—"),
        })
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    if not (table.protocol != "").any():
        table = table.drop(columns="protocol")
    if (table["epoch 100 (original)"] == "—").all():  # none of the original's runs
        table = table.drop(columns=["epoch 1 (original)", "epoch 100 (original)",
                                    "final − original"])
    return table.reset_index(drop=True)


def training_minutes(runs: pd.DataFrame) -> float:
    """Minutes of training behind ``runs``: models trained together (a stack, or stacks in
    lockstep) share one wall time, counted once."""
    return float(runs.drop_duplicates(subset=["device", "wall_time"]).wall_time.sum()) / 60


def agreement(runs: pd.DataFrame, other: pd.DataFrame) -> str:
    """How far ``other`` (the same runs trained elsewhere) lands from ``runs``, per model and
    per seed, in one Markdown paragraph whose numbers are all computed here. Records pair up
    by run id: the same model, protocol and seed."""
    both = replicates(runs).merge(replicates(other)[["run_id", "final_test_accuracy"]],
                                  on="run_id", suffixes=("", "_o"))
    if both.empty:
        raise ValueError("the two sets of records share no run (same model, protocol and seed)")
    seed_diff = (both.final_test_accuracy_o - both.final_test_accuracy).abs() * 100
    means = both.groupby("group_id")[["final_test_accuracy", "final_test_accuracy_o"]].mean()
    model_diff = (means.final_test_accuracy_o - means.final_test_accuracy).abs() * 100
    dev_a = ", ".join(sorted(runs.device.dropna().unique()))
    dev_b = ", ".join(sorted(other.device.dropna().unique()))
    return (f"*Computed from {len(both)} pairs of records (same model, init and seed) trained "
            f"on {dev_a} and on {dev_b}.* Mean final accuracy per model: largest difference "
            f"{model_diff.max():.2f} points, median {model_diff.median():.2f}, over "
            f"{len(model_diff)} models. Single seeds: largest difference "
            f"{seed_diff.max():.2f} points, median {seed_diff.median():.2f}. Training time: "
            f"{training_minutes(runs):.1f} minutes on {dev_a}, "
            f"{training_minutes(other) * 60:.1f} seconds on {dev_b}.")


def cost_table(runs: pd.DataFrame) -> pd.DataFrame:
    """What each model cost to train (means over seeds): trainable parameters, matrix-product
    FLOPs per training sample, optimizer state, seconds per epoch of the stack it trained in
    (shared by the ``stack`` models trained with it), and peak memory (on CPU the whole
    process's peak RSS, which every model in the process shares)."""
    rows = []
    for first, g in _groups(runs):
        mem = g.peak_memory_bytes.dropna()
        rows.append({
            "model": first.model, "protocol": first._protocol,
            "seeds": len(g), "parameters": f"{int(first.params):,}",
            "train MFLOP/sample": _num(first.training_flops_per_sample, 1e-6, "{:.3f}"),
            "optimizer state KiB": _num(first.optimizer_state_bytes, 1 / 1024, "{:.0f}"),
            "s/epoch": _num(g.seconds_per_epoch.mean(), 1, "{:.2f}"),
            "stack": _num(g.stack_size.max(), 1, "{:.0f}"),
            "engine": ", ".join(sorted(g.engine.dropna().unique())) or "—",
            "peak memory MiB": (_num(mem.max(), 2 ** -20, "{:.0f}")
                                + (" (process RSS)" if "RSS" in str(first.peak_memory_kind)
                                   else "")) if len(mem) else "—",
        })
    table = pd.DataFrame(rows)
    if not table.empty and not (table.protocol != "").any():
        table = table.drop(columns="protocol")
    return table.reset_index(drop=True)


def _num(value, scale, fmt) -> str:
    return "—" if value is None or pd.isna(value) else fmt.format(value * scale)

