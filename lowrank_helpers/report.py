"""Tables and computed prose: this study's numbers beside the original study's.

The original numbers are read off the original's three figures (LoRALinear README; Fashion-MNIST,
reference protocol, one seed), to about ±2 points at epoch 1 and ±0.5 at epoch 100. The
original shows ranks 4…128 only; it has no published numbers for ranks 1 and 2.
"""
from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from .plots import METHOD_NAMES

#: (method, rank) -> (epoch-1 accuracy, epoch-100 accuracy) in %, as text (some are ranges).
ORIGINAL = {
    ("full", None): ("52.5", "84.5"),
    ("lora", 4): ("43", "75.5"), ("lora", 8): ("62", "82.2"), ("lora", 16): ("61", "85.2"),
    ("lora", 32): ("62.5", "86.4"), ("lora", 64): ("60", "86.2"), ("lora", 128): ("40", "86.5"),
    ("ae", 4): ("10–13", "82.3"),
    **{("ae", r): ("10–14", "83.5–84.5") for r in (8, 16, 32, 64, 128)},
}


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


def comparison_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Epoch-1 and final test accuracy per model (mean ± std over seeds when there are several)
    beside the original's numbers, with the final difference to the original's midpoint.

    ``runs`` is :func:`lowrank_helpers.load_records` output for one data set and protocol.
    """
    rows = []
    order = {"full": 0, "lora": 1, "ae": 2}
    runs = runs.assign(_o=runs.method.map(order), _r=runs["rank"].fillna(0))
    for (method, rank, init), group in runs.groupby(["method", "_r", "init"], sort=True):
        group = group.sort_values("seed")
        rank = None if method == "full" else int(rank)
        orig = ORIGINAL.get((method, rank)) if init in ("lora", "default") else None
        final = group.final_test_accuracy.dropna()
        model = _model_name(method, rank, init)
        diverged = group.diverged_epoch.notna().sum()
        rows.append({
            "_o": order[method], "_r": rank or 0, "model": model,
            "parameters": f"{int(group.params.iloc[0]):,}", "seeds": len(group),
            "epoch 1": _fmt(group.epoch1_test_accuracy),
            "epoch 1 (original)": orig[0] if orig else "—",
            "epochs": int(group.epochs.max()),
            "final": _fmt(group.final_test_accuracy)
            + (f" ({diverged} diverged)" if diverged else ""),
            "epoch 100 (original)": orig[1] if orig else "—",
            "final − original": (f"{final.mean() * 100 - _midpoint(orig[1]):+.1f}"
                                 if orig and len(final) else "—"),
        })
    table = pd.DataFrame(rows).sort_values(["_o", "_r"]).drop(columns=["_o", "_r"])
    return table.reset_index(drop=True)


def _per_model(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean over seeds per (method, rank, init) of the headline metrics, plus epochs to 50%."""
    def first_above(history, level=0.5):
        return next((h["epoch"] for h in history if (h["test_accuracy"] or 0) >= level), None)
    runs = runs.assign(epochs_to_50=[first_above(h) for h in runs.history],
                       rank=runs["rank"].astype("float"))
    return (runs.groupby(["method", "init", "rank"], dropna=False)
            .agg(final=("final_test_accuracy", "mean"), epoch1=("epoch1_test_accuracy", "mean"),
                 params=("params", "first"), epochs=("epochs_done", "max"),
                 to50_min=("epochs_to_50", "min"), to50_max=("epochs_to_50", "max"),
                 seeds=("seed", "nunique"))
            .reset_index())


def _join(items) -> str:
    return ", ".join(str(i) for i in items)


def training_minutes(runs: pd.DataFrame) -> float:
    """Minutes of training behind ``runs``: models trained together (a stack, or stacks in
    lockstep) share one wall time, counted once."""
    return float(runs.drop_duplicates(subset=["device", "wall_time"]).wall_time.sum()) / 60


def agreement(runs: pd.DataFrame, other: pd.DataFrame) -> str:
    """How far ``other`` (the same study trained elsewhere) lands from ``runs``, per model and
    per seed, in one Markdown paragraph whose numbers are all computed here."""
    key = ["method", "rank", "init", "seed"]
    a = runs.assign(rank=runs["rank"].fillna(0))
    b = other.assign(rank=other["rank"].fillna(0))
    both = a.merge(b, on=key, suffixes=("", "_o"))
    if both.empty:
        raise ValueError("the two sets of records share no (method, rank, init, seed)")
    seed_diff = (both.final_test_accuracy_o - both.final_test_accuracy).abs() * 100
    means = both.groupby(["method", "rank", "init"])[["final_test_accuracy", "final_test_accuracy_o"]].mean()
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


def discussion(runs: pd.DataFrame) -> str:
    """A short discussion in Markdown whose every number is computed from ``runs``."""
    m = _per_model(runs)
    full = m[m.method == "full"]
    lora = m[(m.method == "lora")].sort_values("rank")
    ae = m[m.method == "ae"].sort_values("rank")
    seeds = int(m.seeds.max()) if len(m) else 0
    devices = ", ".join(sorted(runs.device.dropna().unique()))
    out = [f"*Computed from {len(runs)} records: {seeds} seed{'s' if seeds > 1 else ''} per "
           f"model{', means over seeds' if seeds > 1 else ''}; trained on {devices}, "
           f"{training_minutes(runs):.0f} minutes of training in all.*", ""]
    if len(full):
        F, E = full.final.iloc[0], int(full.epochs.iloc[0])
        P = full.params.iloc[0]
        out.append(f"- **Full-rank MLP**: {full.epoch1.iloc[0]:.1%} after one epoch, "
                   f"{F:.1%} after {E}.")
    for name, part in (("LoRA layers", lora), ("Autoencoder layers", ae)):
        if part.empty:
            continue
        best = part.loc[part.final.idxmax()]
        text = (f"- **{name}**: {part.epoch1.min():.1%}–{part.epoch1.max():.1%} after one epoch "
                f"across ranks {int(part['rank'].min())}–{int(part['rank'].max())}; best final "
                f"accuracy {best.final:.1%} at rank {int(best['rank'])}")
        if len(full):
            text += f" ({best.params / P:.1%} of the full-rank parameters)"
            match = part[part.final >= F]
            text += (f"; rank {int(match['rank'].iloc[0])} and above "
                     f"({match.params.iloc[0] / P:.1%} of the parameters) match or beat the "
                     f"full-rank MLP" if len(match) and (match.index == part.index[-len(match):]).all()
                     else f"; ranks matching the full-rank MLP: "
                     f"{', '.join(str(int(r)) for r in match['rank']) or 'none'}")
        low = part.iloc[0]
        text += f". Rank {int(low['rank'])} ends at {low.final:.1%}"
        never = part[part.to50_max.isna()]["rank"].astype(int).tolist()
        passing = part.dropna(subset=["to50_max"])
        if len(passing):
            text += (f"; the others pass 50% after {int(passing.to50_min.min())}–"
                     f"{int(passing.to50_max.max())} epochs" if never else
                     f"; all pass 50% after {int(passing.to50_min.min())}–"
                     f"{int(passing.to50_max.max())} epochs")
        if never:
            text += f", rank{'s' if len(never) > 1 else ''} {_join(never)} never"
        out.append(text + ".")
    if len(lora) and len(ae):
        both = lora.merge(ae, on="rank", suffixes=("_lora", "_ae"))
        ahead1 = both[both.epoch1_lora > both.epoch1_ae]
        ahead = both[both.final_lora > both.final_ae]["rank"].astype(int).tolist()
        behind = both[both.final_lora < both.final_ae]["rank"].astype(int).tolist()
        out.append(f"- **LoRA vs autoencoder layers at equal rank**: after one epoch the LoRA "
                   f"init is ahead at {len(ahead1)} of {len(both)} ranks; at the end it is ahead "
                   f"at rank{'s' if len(ahead) != 1 else ''} {_join(ahead) or 'none'} and behind "
                   f"at rank{'s' if len(behind) != 1 else ''} {_join(behind) or 'none'}.")
    fact = m[m.method != "full"]
    if len(full) and len(fact):
        match = fact[fact.final >= F].sort_values("rank")
        caveat = (" With one seed per model, differences of a point or less may be seed noise."
                  if seeds == 1 else "")
        out.append("- **Answer**: " + (
            f"factorized layers trained from scratch reach the full-rank MLP's final accuracy "
            f"with {match.params.iloc[0] / P:.1%} of its parameters (rank "
            f"{int(match['rank'].iloc[0])}, {METHOD_NAMES[match.method.iloc[0]].lower()}, "
            f"{match.final.iloc[0]:.1%} against {F:.1%})." if len(match) else
            "no factorized model reaches the full-rank MLP's final accuracy.") + caveat)
    diffs = []
    for _, row in m.iterrows():
        orig = ORIGINAL.get((row.method, None if pd.isna(row["rank"]) else int(row["rank"])))
        if orig and row.init in ("lora", "default") and row.epochs == 100:
            diffs.append((abs(row.final * 100 - _midpoint(orig[1])), row))
    if diffs:
        worst, row = max(diffs, key=lambda d: d[0])
        within = sum(d <= 2 for d, _ in diffs)
        label = "full-rank" if row.method == "full" else f"{row.method} r={int(row['rank'])}"
        out.append(f"- **Against the original** (epoch 100): {within} of {len(diffs)} models "
                   f"are within 2 points of the original's numbers; the largest difference is "
                   f"{worst:.1f} points ({label}).")
    return "\n".join(out)


#: README blocks regenerated from records: ``<!-- generated: table results -->`` … ``<!-- end -->``
#: (kinds: ``table``, ``discussion``: the path is a results directory relative to the README;
#: ``agreement``: two directories ``other:reference``, see :func:`agreement`; ``inits``:
#: directories ``a:b:...`` whose records are compared by init, see :func:`init_answer`).
README_BLOCK = re.compile(
    r"(<!-- generated: (table|discussion|agreement|inits) (\S+) -->\n)(.*?)(<!-- end -->)", re.S)


def _reference_records(results_dir) -> pd.DataFrame:
    from .config import SummaryConfig
    from .results import load_records
    runs = load_records(results_dir, **SummaryConfig().record_filter())
    if runs.empty:
        raise ValueError(f"no reference-protocol records in {results_dir}")
    return runs


def render_block(kind: str, results_dir) -> str:
    """A README block from the Fashion-MNIST reference-protocol records in ``results_dir``."""
    if kind == "agreement":
        other, reference = str(results_dir).rsplit(":", 1)
        return agreement(_reference_records(reference), _reference_records(other))
    if kind == "inits":  # several directories, joined
        return init_answer(pd.concat([_reference_records(d) for d in str(results_dir).split(":")],
                                     ignore_index=True))
    runs = _reference_records(results_dir)
    return (comparison_table(runs).to_markdown(index=False) if kind == "table"
            else discussion(runs))


def update_readme(path, check: bool = False) -> list[str]:
    """Regenerate every generated block of the README at ``path``; return the stale ones.

    With ``check=True`` nothing is written (tests use this to keep README true to the records).
    """
    path = Path(path)
    text = path.read_text()
    stale = []

    def fill(m: re.Match) -> str:
        where = ":".join(str(path.parent / part) for part in m.group(3).split(":"))
        new = render_block(m.group(2), where) + "\n"
        if new != m.group(4):
            stale.append(f"{m.group(2)} {m.group(3)}")
        return m.group(1) + new + m.group(5)
    new_text = README_BLOCK.sub(fill, text)
    if not check and new_text != text:
        path.write_text(new_text)
    return stale


def cost_table(runs: pd.DataFrame) -> pd.DataFrame:
    """What each model cost to train (means over seeds): trainable parameters, matrix-product
    FLOPs per training sample, optimizer state, seconds per epoch of the stack it trained in
    (shared by the ``stack`` models trained with it), and peak memory (on CPU the whole
    process's peak RSS, which every model in the process shares)."""
    rows = []
    order = {"full": 0, "lora": 1, "ae": 2}
    for (method, rank, init), g in runs.assign(_r=runs["rank"].fillna(0)).groupby(
            ["method", "_r", "init"], sort=False):
        mem = g.peak_memory_bytes.dropna()
        rows.append({
            "_o": order[method], "_r": rank, "model": _model_name(method, rank, init),
            "seeds": len(g), "parameters": f"{int(g.params.iloc[0]):,}",
            "train MFLOP/sample": _num(g.training_flops_per_sample.iloc[0], 1e-6, "{:.3f}"),
            "optimizer state KiB": _num(g.optimizer_state_bytes.iloc[0], 1 / 1024, "{:.0f}"),
            "s/epoch": _num(g.seconds_per_epoch.mean(), 1, "{:.2f}"),
            "stack": _num(g.stack_size.max(), 1, "{:.0f}"),
            "engine": ", ".join(sorted(g.engine.dropna().unique())) or "—",
            "peak memory MiB": (_num(mem.max(), 2 ** -20, "{:.0f}")
                                + (" (process RSS)" if "RSS" in str(g.peak_memory_kind.iloc[0])
                                   else "")) if len(mem) else "—",
        })
    table = pd.DataFrame(rows).sort_values(["_o", "_r"]).drop(columns=["_o", "_r"])
    return table.reset_index(drop=True)


def _num(value, scale, fmt) -> str:
    return "—" if value is None or pd.isna(value) else fmt.format(value * scale)


def _model_name(method: str, rank, init: str) -> str:
    rank = None if method == "full" else int(rank)
    return ("full-rank MLP" if method == "full" else
            f"{'LoRA layers' if method == 'lora' else 'autoencoder'} r={rank}"
            + ("" if init in ("lora", "default") else f" ({init} init)"))


def init_label(method: str, init: str) -> str:
    """The name of a factorized model's init in the init comparison ("default" = autoencoder)."""
    return "default" if method == "ae" else init


def init_summary(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean (and std) epoch-1 and final accuracy per init and rank, factorized models only."""
    f = runs[runs.method != "full"]
    f = f.assign(init_name=[init_label(m, i) for m, i in zip(f.method, f.init)])
    return (f.groupby(["init_name", "rank"])
            .agg(seeds=("seed", "size"), epoch1=("epoch1_test_accuracy", "mean"),
                 final=("final_test_accuracy", "mean"), final_std=("final_test_accuracy", "std"))
            .reset_index())


def init_answer(runs: pd.DataFrame, small=(1, 2, 4), large=(16, 32, 64, 128)) -> str:
    """A short Markdown answer to "does the init decide?" whose numbers are computed from
    ``runs`` (records of several inits)."""
    s = init_summary(runs)
    inits = sorted(s.init_name.unique())
    seeds = int(s.seeds.min()) if len(s) else 0
    out = [f"*Computed from {len(runs)} records: inits {', '.join(inits)}; at least {seeds} "
           f"seed{'s' if seeds != 1 else ''} per init and rank, means over seeds.*", ""]

    def spread(ranks, col):
        part = s[s["rank"].isin(ranks)]
        per_rank = part.groupby("rank")[col].agg(["min", "max", "idxmax", "idxmin"])
        return part, per_rank

    for col, when in (("epoch1", "after one epoch"), ("final", "after the last epoch")):
        for ranks, name in ((small, "small ranks"), (large, "large ranks")):
            part, per_rank = spread(ranks, col)
            if part.empty:
                continue
            items = []
            for r, row in per_rank.iterrows():
                best, worst = s.loc[row["idxmax"]], s.loc[row["idxmin"]]
                items.append(f"r={int(r)}: {best.init_name} {best[col]:.1%} … {worst.init_name} "
                             f"{worst[col]:.1%}")
            gap = (per_rank["max"] - per_rank["min"]) * 100
            out.append(f"- **{when.capitalize()}, {name} ({', '.join(str(r) for r in ranks)})**: "
                       f"best … worst init per rank: {'; '.join(items)} (spread "
                       f"{gap.min():.1f}–{gap.max():.1f} points).")
    return "\n".join(out)
