"""The scale series and the longer budget of the language-model study's gap
(:mod:`.lm_gap`'s last parts): the gap to dense at each width and its trend, and how the gap
changes from 2,000 to 8,000 steps; each a Holm family of its own."""
from __future__ import annotations

import pandas as pd

from ..core.stats import change, correct, welch
from .lm import dense_row, lm_table


def _diff(a, b):
    return welch(a, b) if len(a) >= 2 and len(b) >= 2 else None


# -- the scale series -------------------------------------------------------------------------
def scale_table(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per width and factorized model of the scale series (head size 32: the dense
    model of width d has d/32 heads): its rank as a fraction of d, and the gap to the dense
    model of that width (Welch, uncorrected)."""
    table = lm_table(runs)
    table = table[table.d_model == table.n_head * 32]
    rows = []
    for d, g in table.groupby("d_model"):
        dense = g[g.factorize == "none"]
        if dense.empty:
            continue
        dense = dense.iloc[0]
        for _, f in g[g.factorize == "both"].iterrows():
            rows.append({"d_model": int(d), "rank": int(f["rank"]), "fraction": f["rank"] / d,
                         "init": f["init"], "loss": f.val_loss, "dense_loss": dense.val_loss,
                         "gap": _diff(f.losses, dense.losses), "lr": f.lr,
                         "dense_lr": dense.lr, "seeds": f.seeds})
    out = pd.DataFrame(rows)
    if len(out):
        study = runs[(runs.d_model == runs.n_head * 32) & (runs.tune_chars > 0)]
        out.attrs["protocol"] = {k: sorted(int(v) for v in study[k].unique())
                                 for k in ("n_layer", "block_size", "iters")}
    return out


def scale_lines(table: pd.DataFrame) -> list[str]:
    """The scale series' sentences: the gap at each width and fraction (Holm over them)."""
    table = table[(table.fraction.isin([1 / 8, 1 / 4, 1 / 2]))] if len(table) else table
    if table.empty or table.d_model.nunique() < 2:
        return []
    fixed = correct(list(table.gap))
    table = table.assign(gap=fixed)
    n = sum(d is not None for d in fixed)
    proto = table.attrs.get("protocol", {})
    words = lambda k: "/".join(f"{v:,}" for v in proto.get(k, [])) or "?"
    lines = [f"- **Scale series** ({words('n_layer')} layers, head size 32, context "
             f"{words('block_size')}, {words('iters')} steps; each model tuned; gap = "
             f"factorized − dense of the same width, held-out nats, Welch's 95 % interval, "
             f"Holm over these {n}, a family of its own: a comparison can be detectable here "
             "and not in the answer's larger family, or the other way round):"]
    for (frac, init), g in table.groupby(["fraction", "init"]):
        if g.d_model.nunique() < 2:                 # a width series, not one model
            continue
        parts = []
        for _, r in g.sort_values("d_model").iterrows():
            d = r.gap
            parts.append(f"d={r.d_model} (r={r['rank']}) " + (
                "no interval" if d is None else
                f"{d.diff:+.3f} ({d.low:+.3f} to {d.high:+.3f}"
                + (", detectable)" if d.real else ", not detectable)")))
        lines.append(f"  - r = d/{round(1 / frac)} ({init} init): " + "; ".join(parts) + ".")
    trends = []
    for (frac, init), g in table.groupby(["fraction", "init"]):
        g = g[g.gap.notna()].sort_values("d_model")
        if g.d_model.nunique() >= 2:
            trends.append((frac, init, g.d_model.iloc[0], g.d_model.iloc[-1],
                           change(g.gap.iloc[0], g.gap.iloc[-1])))
    if trends:
        fixed = correct([t[-1] for t in trends])
        lines.append(f"  - The gap from the narrowest to the widest model (Holm over these "
                     f"{len(trends)}): " + "; ".join(
                         f"r = d/{round(1 / f)} ({i} init), d={a}→{b}: {_moved(d)}"
                         for (f, i, a, b, _), d in zip(trends, fixed)) + ".")
        names = [f"r = d/{round(1 / f)} ({i} init)" for f, i, *_ in trends]
        lines.append("- **So** (scale): at a fixed fraction of d, from the narrowest to the "
                     "widest model the gap " + _verdicts(names, fixed) + ".")
    return lines


def _verdicts(names: list[str], changes: list) -> str:
    """Which changes of a gap (corrected) shrink, grow or cannot be told from none, in words,
    and which way none goes."""
    hits = {word: [n for n, d in zip(names, changes) if pick(d)] for word, pick in (
        ("shrinks detectably", lambda d: d.real and d.diff < 0),
        ("grows detectably", lambda d: d.real and d.diff > 0),
        ("is not distinguishable from unchanged with these seeds", lambda d: not d.real))}
    said = [f"{word} at {len(hit)} of {len(names)} ({', '.join(hit)})"
            for word, hit in hits.items() if hit]
    shrinks, grows = bool(hits["shrinks detectably"]), bool(hits["grows detectably"])
    end = ("" if grows and shrinks else
           ": it neither shrinks nor grows detectably at any" if not (grows or shrinks) else
           "; it grows detectably at none" if shrinks else "; it shrinks detectably at none")
    return "; ".join(said) + end


def _moved(d) -> str:
    """A change of a gap, in words from its corrected decision."""
    verdict = ("grows" if d.diff > 0 else "shrinks") if d.real else \
        "not distinguishable from unchanged"
    return f"{d.diff:+.3f} ({d.low:+.3f} to {d.high:+.3f}, Holm p {d.p_holm:.2g}): {verdict}"


# -- the budget -------------------------------------------------------------------------------
def gaps(runs: pd.DataFrame) -> dict:
    """(rank, init) → (the factorized model's row, its Welch gap to the dense model of the
    study's width) for every fully factorized model of ``runs`` with 2 or more seeds."""
    table = lm_table(runs)
    if table.empty:
        return {}
    dense = dense_row(table)
    out = {}
    for _, f in table[(table.factorize == "both") & (table.d_model == dense.d_model)].iterrows():
        d = _diff(f.losses, dense.losses)
        if d is not None:
            out[(int(f["rank"]), f["init"])] = (f, d)
    return out


def budget_lines(short: pd.DataFrame, long: pd.DataFrame) -> list[str]:
    """The gap at the study's budget against the longer one (each model retuned there): the
    change of each gap, Holm over them."""
    if long.empty or short.empty:
        return []
    a, b = gaps(short), gaps(long)
    both = sorted(set(a) & set(b))
    if not both:
        return []
    steps_a, steps_b = int(short.iters.max()), int(long.iters.max())
    fixed = correct([change(a[k][1], b[k][1]) for k in both])
    da, db = dense_row(lm_table(short)), dense_row(lm_table(long))
    lines = [f"- **Budget** ({steps_a:,} against {steps_b:,} steps, every model retuned at "
             f"each; dense {da.val_loss:.3f} → {db.val_loss:.3f} nats at lr {da.lr:g} → "
             f"{db.lr:g}; change of the gap to dense, Holm over these {len(both)}):"]
    for k, d in zip(both, fixed):
        lines.append(f"  - r={k[0]} ({k[1]} init): gap {a[k][1].diff:+.3f} → "
                     f"{b[k][1].diff:+.3f} (lr {b[k][0].lr:g}); change {_moved(d)}.")
    names = [f"r={k[0]} ({k[1]} init)" for k in both]
    lines.append(f"- **So** (budget): with {steps_b / steps_a:g}× the steps, the gap to dense "
                 + _verdicts(names, fixed) + ".")
    return lines
