"""The extensions comparison's report (``notebooks/extensions.ipynb``, the README's section):
one row per model at its chosen rate, beside the language-model study's dense model and plain
B·A of the same ranks, with held-out loss, its comparisons (one Holm family), parameters,
optimizer-state bytes, peak memory and throughput as the records measured them."""
from __future__ import annotations

import math

import pandas as pd

from ..core.stats import correct, mean_interval, welch
from ..studies.extensions import EXT_MODELS, ext_name
from ..studies.lm import load_lm_records
from .lm import lm_table

#: The names of the rows the LM study's records give; NARROW: a narrower dense model (its
#: shape in the brackets), beside the rows whose trainable parameters it matches.
DENSE, PLAIN, NARROW = "dense", "B·A ({init} init)", "narrow dense ({shape})"
#: How close (relative) two rows' counts must be to compare them "at equal" parameters or
#: optimizer memory (the LM study's rule for its narrower dense models).
EQUAL_WITHIN = 0.10


def _run_of(path):
    from ..core.protocol import RunConfig
    from ..core.results import read_record
    return RunConfig.from_dict(read_record(path)["config"])


def _total(run) -> int:
    return sum(p.numel() for p in run.build().parameters())


def total_parameters(path) -> int:
    """Every parameter of the model a record's run builds, trainable or not (ReLoRA's frozen
    W counts here, not among its trainable ones)."""
    return _total(_run_of(path))


def _measured(runs: pd.DataFrame, ids: list[str]) -> dict:
    """Means over a row's seeds of what the records measured beside the loss; the row's total
    parameters and training FLOPs per token or sample from its run (one record read): the
    FLOPs by its task's count today, where a record's own ``training_flops_per_sample`` is the
    count when it was written (lower for ReLoRA, SLTrain and AdaLoRA on the MLP before that
    task counted a method's own layers)."""
    at = runs[runs.run_id.isin(ids)]
    run = _run_of(at.path.iloc[0]) if len(at) else None
    out = {"total_parameters": _total(run) if run else math.nan,
           "optimizer_state_bytes": at.optimizer_state_bytes.mean(),
           "peak_memory_bytes": at.peak_memory_bytes.mean(),
           "training_flops": run.task_spec.training_flops(run) if run else math.nan}
    stack = at.stack_size.fillna(1)
    if "tokens_per_second" in at:                    # the transformer's records
        out.update(tokens_per_second=(at.tokens_per_second / stack).mean(),
                   seconds_per_run=(at.seconds / stack).mean())
    elif "seconds_per_epoch" in at:                  # the MLP's: a stack's epoch, shared
        out.update(seconds_per_epoch=(at.seconds_per_epoch / stack).mean())
    return out


def extensions_table(cfg) -> pd.DataFrame:
    """Rows: the dense model and plain B·A at ``cfg.ranks`` (both inits) from ``cfg.lm_dir``,
    then every model of ``cfg.models`` at each rank from ``cfg.results_dir``; each at its
    chosen rate with its seeds' held-out losses (``losses``)."""
    from pathlib import Path
    lm = load_lm_records(cfg.lm_dir) if Path(cfg.lm_dir).is_dir() else pd.DataFrame()
    ext = load_lm_records(cfg.results_dir) if Path(cfg.results_dir).is_dir() else pd.DataFrame()
    rows = []
    if len(lm):
        base = lm_table(lm)
        for _, r in base.iterrows():
            if r["factorize"] == "none" and r.d_model < cfg.d_model:
                name = NARROW.format(shape=f"d_model {r.d_model}")
            elif r.d_model != cfg.d_model:
                continue
            elif r["factorize"] == "none":
                name = DENSE
            elif r["factorize"] == "both" and r["rank"] in cfg.ranks and r["init"] in cfg.inits:
                name = PLAIN.format(init=r["init"])
            else:
                continue
            rows.append({**r.to_dict(), "name": name, "scores": r.losses,
                         "score": r.val_loss, "score_std": r.val_std,
                         **_measured(lm, r.run_ids)})
    if len(ext):
        methods = tuple(sorted({EXT_MODELS[n][0] for n in cfg.models}))
        ext = ext.assign(ext_name=[ext_name(m, o) for m, o in zip(ext.method, ext.options)])
        for name in cfg.models:
            own = ext[ext.ext_name == name]
            if own.empty:
                continue
            for _, r in lm_table(own, methods=methods).iterrows():
                if r["rank"] in cfg.ranks:
                    rows.append({**r.to_dict(), "name": name, "scores": r.losses,
                                 "score": r.val_loss, "score_std": r.val_std,
                                 **_measured(own, r.run_ids)})
    return _ordered(_matched(pd.DataFrame(rows)))


def _is_narrow(names) -> pd.Series:
    return pd.Series(names).str.startswith(NARROW.split("(")[0]).values


def _equal(a: float, b: float) -> bool:
    return abs(a / b - 1) <= EQUAL_WITHIN


def _matched(table: pd.DataFrame) -> pd.DataFrame:
    """``table`` without the narrower dense models that match no plain B·A row's trainable
    parameters (within :data:`EQUAL_WITHIN`)."""
    if table.empty:
        return table
    narrow = _is_narrow(table.name)
    plain = table[table.name.str.startswith("B·A")].parameters
    keep = [not n or any(_equal(p, q) for q in plain) for n, p in zip(narrow, table.parameters)]
    return table[keep].reset_index(drop=True)


def narrow_for(table: pd.DataFrame, row) -> pd.Series | None:
    """The narrower dense model of ``table`` closest to ``row``'s trainable parameters, if
    within :data:`EQUAL_WITHIN`; else None."""
    narrow = table[_is_narrow(table.name)]
    if narrow.empty:
        return None
    best = narrow.iloc[(narrow.parameters - row.parameters).abs().argmin()]
    return best if _equal(best.parameters, row.parameters) else None


def _ordered(table: pd.DataFrame) -> pd.DataFrame:
    if table.empty:
        return table
    order = {n: i for i, n in enumerate([DENSE, *(PLAIN.format(init=i) for i in
                                                   ("lora", "default")), *EXT_MODELS])}
    table["_o"] = [0.5 if narrow else order.get(n, len(order))      # narrow after dense
                   for n, narrow in zip(table.name, _is_narrow(table.name))]
    return (table.sort_values(["_o", "rank", "parameters"], na_position="first")
            .drop(columns="_o")
            .reset_index(drop=True))


def mlp_table(cfg) -> pd.DataFrame:
    """The MLP's rows (test accuracy, fraction, in ``scores``): the dense model and plain B·A
    (both inits) under AdamW at ``cfg.mlp_ranks``, then every model of ``cfg.models``, each at
    its chosen rate (the tuned study's rule, on the validation split) with its seeds (up to
    ``cfg.close_seeds``: a close call's extra ones too), all from the MLP part's records (its
    baselines refined as the methods are). Until the part has baselines of its own, the
    tuned study's (``cfg.tuned_dir``, unrefined) stand in."""
    from pathlib import Path
    from ..core.results import load_records
    from ..studies.tuned import tuned_table
    from ..tasks import TASKS
    tuned = cfg.mlp_config()
    epochs = tuned.protocol("adamw").epochs          # not the convergence check's
    default_widths = TASKS[tuned.task].default_widths

    def records(where):
        runs = load_records(where) if Path(where).is_dir() else pd.DataFrame()
        return runs[(runs.optimizer == "adamw") & (runs.epochs == epochs)] if len(runs) \
            else runs
    mine = records(tuned.results_dir)
    sources = [(mine, None)]
    if not (len(mine) and (mine.method == "full").any()):
        sources.insert(0, (records(cfg.tuned_dir), False))
    seeds = max(cfg.seeds, cfg.close_seeds)
    rows = []
    for runs, own in sources:
        if runs.empty:
            continue
        options = dict(zip(runs.model_key, runs.options))
        # the tuned study's rows under its own seed rule (as its README gives them); the
        # part's own with every seed up to close_seeds
        table = tuned_table(runs) if own is False else tuned_table(runs, seeds, seeds)
        for _, r in table.iterrows():
            name = ext_name(r.method, options.get(r.key))
            if name is not None:
                if own is False or name not in cfg.models:
                    continue
            elif r.method == "full":
                widths = runs[runs.model_key == r.key].widths.iloc[0]   # "784-512-512-10"
                widths = widths if isinstance(widths, str) else "-".join(map(str, widths))
                name = DENSE if widths == "-".join(map(str, default_widths)) else \
                    NARROW.format(shape=f"widths {widths}")
            elif (r.method, r.init) in (("lora", "lora"), ("ae", "default")) \
                    and r["rank"] in cfg.mlp_ranks and r.rescale == 1:
                name = PLAIN.format(init=r.init)
            else:
                continue
            at = runs[(runs.model_key == r.key) & (runs.lr == r.lr)
                      & runs.seed.isin(range(r.seeds if own is False else seeds))]
            rows.append({"name": name, "rank": r["rank"], "lr": r.lr,
                         "edge": r.edge is not None and pd.notna(r.edge), "seeds": r.seeds,
                         "scores": list(r.test_values), "score": r.mean_test,
                         "score_std": r.std_test, "parameters": r.params,
                         **_measured(at, list(at.run_id))})
    return _ordered(_matched(pd.DataFrame(rows)))


def _welch(row, other):
    """Welch's test of two rows' ``scores`` (row − other), or None with fewer than 2 seeds
    on a side."""
    return welch(row.scores, other.scores) if min(len(row.scores), len(other.scores)) >= 2 \
        else None


def comparisons(table: pd.DataFrame) -> pd.DataFrame:
    """Each row against the dense model (equal steps), against plain B·A (default init) of
    its rank, and against the narrower dense model of its trainable parameters where the table
    has one (:func:`narrow_for`: equal parameters): Welch's difference of ``scores`` (row −
    other: held-out loss on the LM, where negative is better; test accuracy on the MLP, where
    positive is), 95 % intervals with Holm's correction over every test of the table (one
    family)."""
    if table.empty or not (table.name == DENSE).any():
        return pd.DataFrame()
    dense = table[table.name == DENSE].iloc[0]
    tests = []
    for _, r in table[table.name != DENSE].iterrows():
        if _is_narrow([r["name"]])[0]:                  # fewer parameters alone: the cost
            tests.append({"name": r["name"], "rank": r["rank"], "against": "dense",
                          "test": _welch(r, dense)})
            continue
        against = [("dense", dense)]
        plain = table[(table.name == PLAIN.format(init="default")) & (table["rank"] == r["rank"])]
        if r["name"] != PLAIN.format(init="default") and len(plain):
            against.append(("B·A (default init)", plain.iloc[0]))
        narrow = narrow_for(table, r)
        if narrow is not None:
            against.append((narrow["name"], narrow))
        for what, other in against:
            tests.append({"name": r["name"], "rank": r["rank"], "against": what,
                          "test": _welch(r, other)})
    fixed = correct([t["test"] for t in tests])
    for t, d in zip(tests, fixed):
        t["test"] = d
    return pd.DataFrame(tests)


#: How each part's score reads: its column header, its format, and its unit's scale.
METRICS = {"lm": ("held-out loss (nats)", "{:.3f}", 1.0),
           "mlp": ("test accuracy (%)", "{:.2f}", 100.0)}
#: Each part's unit of training FLOPs.
UNITS = {"lm": "token", "mlp": "sample"}


def extensions_markdown(table: pd.DataFrame, part: str = "lm") -> str:
    """The comparison as a Markdown table (Δ against dense: Welch's uncorrected interval; the
    answer's lines give each verdict after Holm's correction). Time and peak memory are not
    columns: the records measured them under different conditions (stacked or alone, beside
    other jobs; the process's resident set on a CPU), so :func:`speed_block` gives them from a
    benchmark that measures every row alike."""
    if table.empty:
        return "(no records yet: run `lowrank-study extensions`)"
    header, fmt, scale = METRICS[part]
    tests = comparisons(table)
    unit = UNITS[part]
    out = [f"| model | rank | lr | seeds | {header} | Δ vs dense (95 % CI) | "
           "trainable params | all params | optimizer state (kB) | "
           f"training MFLOPs per {unit} |", "|---" * 10 + "|"]
    for _, r in table.iterrows():
        ci = "—"
        if len(tests):
            t = tests[(tests.name == r["name"]) & (tests.against == "dense")
                      & ((tests["rank"] == r["rank"]) | pd.isna(r["rank"]))]
            if len(t) and hasattr(t.test.iloc[0], "diff"):
                d = t.test.iloc[0]
                signed = fmt.replace("{:", "{:+")
                ci = (f"{signed.format(d.diff * scale)} ({signed.format(d.low * scale)} to "
                      f"{signed.format(d.high * scale)})")
        rank = "—" if pd.isna(r["rank"]) else int(r["rank"])
        std = f" ± {fmt.format(r.score_std * scale)}" if r.seeds > 1 else ""
        edge = " (edge)" if r.edge else ""
        flops = r.get("training_flops", math.nan)
        flops = "—" if flops is None or pd.isna(flops) else f"{flops / 1e6:,.2f}"
        out.append(f"| {r['name']} | {rank} | {r.lr:g}{edge} | {r.seeds} | "
                   f"{fmt.format(r.score * scale)}{std} | {ci} | {r.parameters / 1e3:.0f}k | "
                   f"{_num(r.total_parameters, 1e3)}k | "
                   f"{_num(r.optimizer_state_bytes, 1e3)} | {flops} |")
    return "\n".join(out)


def interval(scores) -> tuple[float, float] | None:
    """The 95 % t-interval of the mean of ``scores`` (None with fewer than 2)."""
    return mean_interval(scores)[1:] if len(scores) >= 2 else None


def close_calls(table: pd.DataFrame) -> set[tuple[str, int]]:
    """The (name, rank) of every extension row whose 95 % interval overlaps the dense
    model's, or plain B·A's (either init) of its rank: where more seeds may decide."""
    if table.empty or not (table.name == DENSE).any():
        return set()
    dense = interval(table[table.name == DENSE].iloc[0].scores)
    out = set()
    for _, r in table[table.name.isin(list(EXT_MODELS))].iterrows():
        mine = interval(r.scores)
        if mine is None:
            continue
        others = [dense] + [interval(o.scores) for _, o in table[
            table.name.str.startswith("B·A") & (table["rank"] == r["rank"])].iterrows()]
        if any(o is not None and mine[0] <= o[1] and o[0] <= mine[1] for o in others):
            out.add((r["name"], int(r["rank"])))
    return out


def _num(v, unit: float) -> str:
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v / unit:,.0f}"


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
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
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
    axes[1].legend(fontsize=8, loc="best")
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


def galore_miniature(table: pd.DataFrame) -> pd.DataFrame:
    """GaLore's Table 2 question in miniature: at each rank, the character perplexity e^loss
    of plain B·A (default init, the paper's "Low-Rank") and of GaLore over the dense model's,
    beside the published 60M row's ratios of validation perplexity (per subword token, so
    only the ratio's direction compares; :data:`~lowrank_helpers.reports.lm.GALORE_TABLE`)."""
    from .lm import GALORE_TABLE
    if table.empty or not (table.name == DENSE).any():
        return pd.DataFrame()
    published = GALORE_TABLE[0]
    dense = table[table.name == DENSE].iloc[0].score
    rows = []
    for rank in sorted(r for r in table["rank"].dropna().unique()):
        row = {"rank": int(rank)}
        for label, name in (("Low-Rank (B·A) / dense", PLAIN.format(init="default")),
                            ("GaLore / dense", "galore")):
            hit = table[(table.name == name) & (table["rank"] == rank)]
            row[label] = math.exp(hit.iloc[0].score - dense) if len(hit) else math.nan
        rows.append(row)
    out = pd.DataFrame(rows)
    out.attrs["published"] = (f"published 60M (rank {published['rank']}): Low-Rank / "
                              f"full-rank {published['low_rank'] / published['full_rank']:.2f}")
    return out


def _verdict(d, part: str) -> str:
    """A test's verdict for a row (row − other): better, worse or not distinguishable."""
    better = d.diff < 0 if part == "lm" else d.diff > 0
    return ("detectably better" if d.real and better else "detectably worse" if d.real
            else "not distinguishable")


def _where(t) -> str:
    return "" if pd.isna(t["rank"]) else f"r={int(t['rank'])} "


def galore_line(table: pd.DataFrame) -> str:
    """:func:`galore_miniature` as one README line."""
    mini = galore_miniature(table)
    if mini.empty:
        return "- **GaLore's Table 2 in miniature.** No records of the dense model yet."
    said = []
    for _, r in mini.iterrows():
        got = [f"{k.split(' / ')[0]} {v:.3f}" for k, v in r.items()
               if k != "rank" and pd.notna(v)]
        if got:
            said.append(f"rank {int(r['rank'])}: " + ", ".join(got))
    return ("- **GaLore's Table 2 in miniature** (character perplexity e^loss over dense's, "
            "at each rank; means of the rows' seeds): " + "; ".join(said)
            + f". Beside it the {mini.attrs['published']} (validation perplexity per subword "
            "token on C4, so only the direction compares).")


def extensions_answer(table: pd.DataFrame, part: str, models=tuple(EXT_MODELS)) -> str:
    """The part's sentences: the narrower dense models against dense, then each method's
    rows against dense, against plain B·A (default init) of the same rank and against the
    narrower dense model of their trainable parameters, one Holm family over the table's tests
    (:func:`comparisons`); the methods and rows the records do not have yet are named."""
    task = {"lm": "Transformer (held-out loss, nats/char)",
            "mlp": "MLP (test accuracy, points)"}[part]
    if table.empty or not (table.name == DENSE).any():
        return f"- **{task}**: no records of the dense model yet."
    header, fmt, scale = METRICS[part]
    signed = fmt.replace("{:", "{:+")
    tests = comparisons(table)
    n = int(tests.test.notna().sum()) if len(tests) else 0
    lines = [f"- **{task}**: each row − the other, Welch's 95 % interval (uncorrected) and "
             f"the verdict after Holm's correction over these {n} tests (Holm p):"]
    plain = [PLAIN.format(init=i) for i in ("lora", "default")]
    narrow = list(table.name[_is_narrow(table.name)])
    for name in [*narrow, *plain, *models]:
        own = tests[tests.name == name] if len(tests) else tests
        if own.empty:
            if name in models:
                lines.append(f"  - {name}: not yet in the records.")
            continue
        parts = []
        for _, t in own.iterrows():
            d = t.test
            if not hasattr(d, "diff"):                  # None (NaN in a frame)
                parts.append(f"{_where(t)}against {t.against}: fewer than 2 seeds")
                continue
            parts.append(f"{_where(t)}against {t.against} "
                         f"{signed.format(d.diff * scale)} ({signed.format(d.low * scale)} to "
                         f"{signed.format(d.high * scale)}, Holm p {d.p_holm:.2g}): "
                         f"{_verdict(d, part)}")
        lines.append(f"  - {name}: " + "; ".join(parts) + ".")
    return "\n".join(lines)


def gap_summary(table: pd.DataFrame, part: str, models=tuple(EXT_MODELS)) -> str:
    """The README's answer to "which method, if any, closes the gap to dense?", three ways,
    each from the verdicts of :func:`extensions_answer`'s one Holm family: at equal steps
    (each method's rows against dense), at equal trainable parameters (against the narrower
    dense model of their count, within :data:`EQUAL_WITHIN`) and at equal optimizer memory
    (against plain B·A (default init) of their rank, for the rows whose optimizer state is at
    most :data:`EQUAL_WITHIN` above its). The rows left out of a comparison are named."""
    task = {"lm": "the transformer", "mlp": "the MLP"}[part]
    tests = comparisons(table)
    if tests.empty:
        return f"- **Which method closes the gap on {task}?** No records of the dense model yet."
    _, fmt, scale = METRICS[part]
    signed = fmt.replace("{:", "{:+")
    plain_name = PLAIN.format(init="default")
    mine = tests[tests.name.isin(list(models))]

    def state(name, rank):
        hit = table[(table.name == name) & (table["rank"] == rank)]
        return hit.optimizer_state_bytes.iloc[0] if len(hit) else math.nan

    def row(t):
        return f"{t['name']} {_where(t).strip()}"

    def sort(against, keep=lambda t: True):
        out = {"detectably better": [], "not distinguishable": [], "detectably worse": [],
               "fewer than 2 seeds so far": []}
        for _, t in mine.iterrows():
            if not against(t.against) or not keep(t):
                continue
            d = t.test
            if not hasattr(d, "diff"):
                out["fewer than 2 seeds so far"].append(row(t))
                continue
            out[_verdict(d, part)].append(
                f"{row(t)} ({signed.format(d.diff * scale)}, {signed.format(d.low * scale)} "
                f"to {signed.format(d.high * scale)})")
        return "; ".join(f"**{k}**: " + (", ".join(v) if v else "none") for k, v in out.items()
                         if v or k == "detectably better")

    def left_out(against, keep=lambda t: True, why=""):
        compared = {row(t) for _, t in mine.iterrows() if against(t.against) and keep(t)}
        rest = [row(t) for _, t in mine.drop_duplicates(["name", "rank"]).iterrows()
                if row(t) not in compared]
        return f" Not compared ({why}): {', '.join(rest)}." if rest else ""

    narrow = lambda a: _is_narrow([a])[0]                            # noqa: E731
    plain = lambda a: a == plain_name                                # noqa: E731
    fits = lambda t: state(t["name"], t["rank"]) <= (1 + EQUAL_WITHIN) * state(  # noqa: E731
        plain_name, t["rank"])
    return "\n".join([
        f"- **Which method closes the gap on {task}?** The verdicts below, sorted (row − "
        "other, Welch's 95 % interval uncorrected, verdict after Holm):",
        f"  - *At equal steps*, against dense: {sort(lambda a: a == 'dense')}.",
        "  - *At equal trainable parameters*, against the narrower dense model of the same "
        f"count (within {EQUAL_WITHIN:.0%}): {sort(narrow)}."
        + left_out(narrow, why="no narrower dense model of their trainable parameters in "
                   "the records"),
        "  - *At equal optimizer memory*, against plain B·A (default init) of the same rank, "
        f"for the rows whose optimizer state is at most {EQUAL_WITHIN:.0%} above its: "
        f"{sort(plain, fits)}." + left_out(plain, fits, "more optimizer state")])


def speed_block(path) -> str:
    """README's ``extensions-speed`` block: ``benchmarks/bench_extensions.py``'s JSON at
    ``path`` as one table per part and rank: each row's time per step (median of the
    repeats), its time over dense's in the same repeat (median, and the range over repeats),
    its throughput, and its peak tensor memory (over dense's) with its optimizer state."""
    import json
    from pathlib import Path
    b = json.loads(Path(path).read_text())
    out = [f"Measured side by side in one process ({b['torch_threads']} thread"
           f"{'s' * (b['torch_threads'] != 1)}, {b['repeats']} repeats, the order reversed "
           f"on every other; memory over the first {b['memory_steps']} steps of a fresh "
           "model)" + (f"; {b['note']}" if b.get("note") else "") + "."]
    for part, p in b["parts"].items():
        task = {"lm": "Transformer", "mlp": "MLP"}[part]
        for rank, models in p["ranks"].items():
            dense = models.get(DENSE)
            out += ["", f"**{task}, rank {rank}** ({p['steps']} steps from step 1, "
                    f"{p['per_step']:,} {p['unit']} per step):", "",
                    f"| model | ms per step | time over dense (range) | {p['unit']}/s | "
                    "peak tensor memory (MB) | over dense | optimizer state (kB) |",
                    "|---|---:|---:|---:|---:|---:|---:|"]
            for name, m in models.items():
                lo, hi = m["time_over_dense_range"]
                mem = (f"{m['peak_tensor_bytes'] / dense['peak_tensor_bytes']:.2f}×"
                       if dense else "—")
                out.append(f"| {name} | {m['ms_per_step']:.1f} | {m['time_over_dense']:.2f}× "
                           f"({lo:.2f}–{hi:.2f}) | {m['per_second']:,.0f} | "
                           f"{m['peak_tensor_bytes'] / 1e6:,.1f} | {mem} | "
                           f"{m['optimizer_state_bytes'] / 1e3:,.0f} |")
    return "\n".join(out)


def training_time(cfg) -> str:
    """The comparison's own training time: every record in its folders (the transformer's
    and the MLP's, searches and seeds), its wall time over the models of its stack, summed
    per part; the baselines' records adopted from another study (the same file in
    ``cfg.tuned_dir``) and the LM study's dense and plain B·A are not counted."""
    from pathlib import Path
    from ..core.results import read_record
    parts, total, threads = [], 0.0, set()
    for what, where in (("transformer", cfg.results_dir), ("MLP", cfg.mlp_dir)):
        paths = [p for p in (sorted(Path(where).glob("*.json")) if Path(where).is_dir()
                             else []) if not (Path(cfg.tuned_dir) / p.name).exists()]
        seconds = 0.0
        for p in paths:
            r = read_record(p)
            seconds += (r.get("wall_time") or 0.0) / (r.get("cost", {}).get("stack_size") or 1)
            threads.add(r.get("torch_threads"))
        total += seconds
        parts.append(f"{what}: {len(paths)} runs, {seconds / 3600:.1f} h")
    return (f"- **Time.** The comparison's own runs took {total / 3600:.1f} h of training "
            f"wall time on this CPU, summed over runs at {' or '.join(map(str, sorted(threads, key=str)))} "
            f"thread{'s' * (threads != {1})} each ({'; '.join(parts)}; "
            "the baselines the LM and tuned studies trained are not counted).")


def readme_block(ext_dir, lm_dir, tuned_dir) -> str:
    """README's ``extensions`` block: both parts' answers, tests, tables and time."""
    from ..studies.extensions import ExtensionsConfig
    cfg = ExtensionsConfig(results_dir=str(ext_dir), lm_dir=str(lm_dir),
                           tuned_dir=str(tuned_dir))
    lm, mlp = extensions_table(cfg), mlp_table(cfg)
    return "\n".join([gap_summary(lm, "lm"), gap_summary(mlp, "mlp"), galore_line(lm),
                      training_time(cfg),
                      extensions_answer(lm, "lm"), extensions_answer(mlp, "mlp"), "",
                      extensions_markdown(lm, "lm"), "", extensions_markdown(mlp, "mlp")])
