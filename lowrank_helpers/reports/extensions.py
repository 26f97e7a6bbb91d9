"""The extensions comparison's tables and tests (``notebooks/extensions.ipynb``, the README's
section): one row per model at its chosen rate, beside the language-model study's dense model,
plain B·A of the same ranks and the narrower dense model of B·A's parameter count, with
held-out loss (test accuracy on the MLP), its comparisons (one Holm family), parameters,
optimizer-state bytes and training FLOPs. Time and memory are measured side by side by
``benchmarks/bench_extensions.py`` (:mod:`.extensions_answer` reads its JSON)."""
from __future__ import annotations

import math

import pandas as pd

from ..core.stats import correct, mean_interval, welch
from ..studies.extensions import EXT_MODELS, ext_name
from ..studies.lm import load_lm_records
from .lm import EQUAL_WITHIN, lm_table

#: The names of the rows the LM study's records give; NARROW: a narrower dense model (its
#: shape in the brackets, :func:`narrow_name`), beside the rows whose parameters it matches.
DENSE, PLAIN, NARROW = "dense", "B·A ({init} init)", "narrow dense ({shape})"


def narrow_name(shape) -> str:
    """A narrower dense model's row name from its shape: the transformer's (an LMShape, or
    its d_model) or the MLP's widths."""
    d_model = shape if isinstance(shape, int) else getattr(shape, "d_model", None)
    return NARROW.format(shape=f"d_model {d_model}" if d_model is not None
                         else "widths " + "-".join(map(str, shape)))


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
    """The optimizer state's bytes the records measured (mean over a row's seeds); the row's total
    parameters and training FLOPs per token or sample from its run (one record read): the
    FLOPs by its task's count today, where a record's own ``training_flops_per_sample`` is the
    count when it was written (lower for ReLoRA, SLTrain and AdaLoRA on the MLP before that
    task counted a method's own layers)."""
    at = runs[runs.run_id.isin(ids)]
    run = _run_of(at.path.iloc[0]) if len(at) else None
    return {"total_parameters": _total(run) if run else math.nan,
            "optimizer_state_bytes": at.optimizer_state_bytes.mean(),
            "training_flops": run.task_spec.training_flops(run) if run else math.nan}


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
                name = narrow_name(int(r.d_model))
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


def _is_plain(names) -> pd.Series:
    return pd.Series(names).str.startswith(PLAIN.split(" (")[0]).values


def _equal(a: float, b: float) -> bool:
    return abs(a / b - 1) <= EQUAL_WITHIN


def _matched(table: pd.DataFrame) -> pd.DataFrame:
    """``table`` without the narrower dense models that match no plain B·A row's trainable
    parameters (within :data:`EQUAL_WITHIN`)."""
    if table.empty:
        return table
    narrow = _is_narrow(table.name)
    plain = table[_is_plain(table.name)].parameters
    keep = [not n or any(_equal(p, q) for q in plain) for n, p in zip(narrow, table.parameters)]
    return table[keep].reset_index(drop=True)


def narrow_for(table: pd.DataFrame, row) -> pd.Series | None:
    """The narrower dense model of ``table`` closest to ``row``'s trainable parameters, if
    within :data:`EQUAL_WITHIN` of both its trainable and its total parameters (ReLoRA, whose
    frozen W is a dense model's, has none); else None."""
    narrow = table[_is_narrow(table.name)]
    if narrow.empty:
        return None
    best = narrow.iloc[(narrow.parameters - row.parameters).abs().argmin()]
    total = row.get("total_parameters", row.parameters)
    total = row.parameters if pd.isna(total) else total
    return best if _equal(best.parameters, row.parameters) and \
        _equal(best.parameters, total) else None


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
                run = _run_of(runs[runs.model_key == r.key].path.iloc[0])
                name = DENSE if tuple(run.widths) == tuple(default_widths) else \
                    narrow_name(run.widths)
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
        plain_name = PLAIN.format(init="default")
        plain = table[(table.name == plain_name) & (table["rank"] == r["rank"])]
        if r["name"] != plain_name and len(plain):
            against.append((plain_name, plain.iloc[0]))
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
    other jobs; the process's resident set on a CPU), so
    :func:`~.extensions_answer.speed_block` gives them from a benchmark that measures every row
    alike."""
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
            _is_plain(table.name) & (table["rank"] == r["rank"])].iterrows()]
        if any(o is not None and mine[0] <= o[1] and o[0] <= mine[1] for o in others):
            out.add((r["name"], int(r["rank"])))
    return out


def _num(v, unit: float) -> str:
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v / unit:,.0f}"
