"""The extensions comparison's answers (README's ``extensions`` and ``extensions-speed``
blocks, the notebook): which method closes the gap three ways, every test in words, GaLore's
Table 2 in miniature, the comparison's training time, and the side-by-side benchmark's
tables."""
from __future__ import annotations

import math

import pandas as pd

from ..studies.extensions import EXT_MODELS
from .extensions import (DENSE, EQUAL_WITHIN, METRICS, PLAIN, _equal, _is_narrow, comparisons,
                         extensions_markdown, extensions_table, mlp_table)


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
            row[label.split(" / ")[0] + " seeds"] = int(hit.iloc[0].seeds) if len(hit) else 0
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
    """:func:`galore_miniature` as one README line, each ratio with its seeds."""
    mini = galore_miniature(table)
    if mini.empty:
        return "- **GaLore's Table 2 in miniature.** No records of the dense model yet."
    said = []
    for _, r in mini.iterrows():
        got = []
        for k, v in r.items():
            if " / " in k and pd.notna(v):
                n = int(r[k.split(" / ")[0] + " seeds"])
                got.append(f"{k.split(' / ')[0]} {v:.3f} ({n} seed{'s' * (n != 1)})")
        if got:
            said.append(f"rank {int(r['rank'])}: " + ", ".join(got))
    return ("- **GaLore's Table 2 in miniature** (character perplexity e^loss over dense's, "
            "at each rank; means of the rows' seeds; a row of 1 seed is still in its search): "
            + "; ".join(said) + f". Beside it the {mini.attrs['published']} (validation "
            "perplexity per subword token on C4, so only the direction compares).")


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


#: How each part's difference reads: its unit and which sign is worse.
SIGNS = {"lm": "nats/char; + is worse", "mlp": "points of accuracy; − is worse"}


def gap_summary(table: pd.DataFrame, part: str, models=tuple(EXT_MODELS)) -> str:
    """The README's answer to "which method, if any, closes the gap to dense?", three ways,
    each from the verdicts of :func:`extensions_answer`'s one Holm family: at equal steps
    (each method's rows against dense), at equal parameters (against the narrower dense model
    of their count, :func:`~.extensions.narrow_for`) and at equal optimizer memory (against
    plain B·A (default init) of their rank, for the rows whose optimizer state is at most
    :data:`EQUAL_WITHIN` above its). Each difference comes with its uncorrected interval and
    its Holm p: a row whose uncorrected interval excludes 0 can still be not distinguishable
    after the correction. The rows left out of a comparison are named, with why."""
    task = {"lm": "the transformer", "mlp": "the MLP"}[part]
    tests = comparisons(table)
    if tests.empty:
        return f"- **Which method closes the gap on {task}?** No records of the dense model yet."
    _, fmt, scale = METRICS[part]
    signed = fmt.replace("{:", "{:+")
    plain_name = PLAIN.format(init="default")
    mine = tests[tests.name.isin(list(models))]
    if mine.empty:
        return f"- **Which method closes the gap on {task}?** No method's records yet."

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
                f"to {signed.format(d.high * scale)}, Holm p {d.p_holm:.2g})")
        return "; ".join(f"**{k}**: " + (", ".join(v) if v else "none") for k, v in out.items()
                         if v or k == "detectably better")

    def left_out(against, why, keep=lambda t: True):
        """The rows without a test of this kind (or kept out by ``keep``), each with
        ``why(row)``, the reason."""
        compared = {row(t) for _, t in mine.iterrows() if against(t.against) and keep(t)}
        rest = {}
        for _, t in mine.drop_duplicates(["name", "rank"]).iterrows():
            if row(t) not in compared:
                rest.setdefault(why(t), []).append(row(t))
        return "".join(f" Not compared ({k}): {', '.join(v)}." for k, v in rest.items())

    def why_narrow(t):
        r = table[(table.name == t["name"]) & (table["rank"] == t["rank"])].iloc[0]
        total = r.get("total_parameters", r.parameters)
        return ("its total parameters (a frozen dense W) are not a narrower model's"
                if pd.notna(total) and not _equal(total, r.parameters)
                else "no narrower dense model of its parameters in the records")

    def why_memory(t):
        mine_s, plain_s = state(t["name"], t["rank"]), state(plain_name, t["rank"])
        return ("no plain B·A of its rank" if math.isnan(plain_s) else
                "optimizer state unknown" if math.isnan(mine_s) else "more optimizer state")

    narrow = lambda a: _is_narrow([a])[0]                            # noqa: E731
    plain = lambda a: a == plain_name                                # noqa: E731
    fits = lambda t: state(t["name"], t["rank"]) <= (1 + EQUAL_WITHIN) * state(  # noqa: E731
        plain_name, t["rank"])
    return "\n".join([
        f"- **Which method closes the gap on {task}?** The verdicts below, sorted (row − "
        f"other in {SIGNS[part]}; Welch's 95 % interval, uncorrected; Holm p over the part's "
        "tests: only p < 0.05 is a verdict; an interval that excludes 0 with a larger Holm p is "
        "not one):",
        f"  - *At equal steps*, against dense: {sort(lambda a: a == 'dense')}.",
        "  - *At equal parameters*, against the narrower dense model of the same trainable "
        f"and total count (within {EQUAL_WITHIN:.0%}): {sort(narrow)}."
        + left_out(narrow, why_narrow),
        "  - *At equal optimizer memory*, against plain B·A (default init) of the same rank, "
        f"for the rows whose optimizer state is at most {EQUAL_WITHIN:.0%} above its: "
        f"{sort(plain, fits)}." + left_out(plain, why_memory, fits)])


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
           "model, its one batch counted, not the dataset)"
           + (f"; {b['note']}" if b.get("note") else "") + "."]
    periods = {n: m["period"] for p in b["parts"].values() for ms in p["ranks"].values()
               for n, m in ms.items() if (m.get("period") or 1) > 1}
    if periods:
        out.append("Periodic work falls in each window as in a run from step 1 ("
                   + ", ".join(f"{n} every {t} steps" for n, t in periods.items())
                   + "): a window holds a whole number of events (GaLore's first projection "
                   "falls at step 1), so a row whose period does not divide the window is off "
                   "by at most one event over it.")
    for part, p in b["parts"].items():
        task = {"lm": "Transformer", "mlp": "MLP"}[part]
        for rank, models in p["ranks"].items():
            dense = models.get(DENSE)
            if dense is None:
                out += ["", f"**{task}, rank {rank}**: no dense row in this run."]
                continue
            out += ["", f"**{task}, rank {rank}** ({p['steps']} steps from step 1, "
                    f"{p['per_step']:,} {p['unit']} per step):", "",
                    f"| model | ms per step | time over dense (range) | {p['unit']}/s | "
                    "peak tensor memory (MB) | over dense | optimizer state (kB) |",
                    "|---|---:|---:|---:|---:|---:|---:|"]
            for name, m in models.items():
                lo, hi = m["time_over_dense_range"]
                mem = f"{m['peak_tensor_bytes'] / dense['peak_tensor_bytes']:.2f}×"
                out.append(f"| {name} | {m['ms_per_step']:.1f} | {m['time_over_dense']:.2f}× "
                           f"({lo:.2f}–{hi:.2f}) | {m['per_second']:,.0f} | "
                           f"{m['peak_tensor_bytes'] / 1e6:,.1f} | {mem} | "
                           f"{m['optimizer_state_bytes'] / 1e3:,.0f} |")
    return "\n".join(out)


def training_time(cfg) -> str:
    """The comparison's own training time: every record in its folders (the transformer's
    and the MLP's, searches and seeds), a stack's wall time shared among its models
    (:func:`~.lm.sweep_seconds`), summed per part; the baselines' records adopted from
    another study (the same file in ``cfg.tuned_dir``) and the LM study's dense and plain
    B·A are not counted."""
    from pathlib import Path
    from ..core.results import load_records
    from ..studies.lm import load_lm_records
    from .lm import sweep_seconds
    adopted = {p.name for p in Path(cfg.tuned_dir).glob("*.json")}
    parts, total, threads = [], 0.0, set()
    for what, where, load in (("transformer", cfg.results_dir, load_lm_records),
                              ("MLP", cfg.mlp_dir, load_records)):
        runs = load(where) if Path(where).is_dir() else pd.DataFrame()
        if len(runs):
            runs = runs[~runs.path.map(lambda p: Path(p).name).isin(adopted)]
            threads |= {int(t) for t in runs.torch_threads.dropna()}
        seconds = sweep_seconds(runs)
        total += seconds
        parts.append(f"{what}: {len(runs)} runs, {seconds / 3600:.1f} h")
    on = " or ".join(map(str, sorted(threads))) or "?"
    return (f"- **Time.** The comparison's own runs took {total / 3600:.1f} h of training "
            f"wall time on this CPU, summed over runs at {on} thread"
            f"{'s' * (threads != {1})} each ({'; '.join(parts)}; the baselines the LM and "
            "tuned studies trained are not counted).")


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
