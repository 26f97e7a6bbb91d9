"""The study's prose, computed from the records: the reference run's discussion (and a task
whose headline metric is not accuracy: :func:`score_discussion`), and the answer of the init
study. Every number is computed here; every count names the family Holm's correction ran
over; tables are in :mod:`~lowrank_helpers.reports.reference`."""
from __future__ import annotations


import pandas as pd

from ..methods import METHODS
from .reference import (_fmt_score, _groups, _midpoint, _score_task, original_of,
                     training_minutes)
from ..core.results import one_protocol, replicates


def _outside(value: float, text: str) -> float:
    """How far ``value`` lies outside the original's number or range ``text`` (0 inside)."""
    lo, _, hi = text.partition("–")
    lo, hi = float(lo), float(hi or lo)
    return max(lo - value, value - hi, 0.0)

def _first_above(history, level=0.5):
    return next((h["epoch"] for h in history if (h["test_accuracy"] or 0) >= level), None)

def _per_model(runs: pd.DataFrame) -> pd.DataFrame:
    """Per model (one protocol): means over seeds of the headline metrics, and epochs to 50%
    test accuracy: the first and last seed's (``to50_max`` is missing if any seed never gets
    there) and how many seeds never do."""
    rows = []
    for first, g in _groups(one_protocol(runs, "the discussion")):
        to50 = pd.Series([_first_above(h) for h in g.history], dtype="float")
        rows.append({"method": first.method, "init": first.init,
                     "rank": float("nan") if pd.isna(first["rank"]) else float(first["rank"]),
                     "final": g.final_test_accuracy.mean(), "epoch1": g.epoch1_test_accuracy.mean(),
                     "params": first.params, "epochs": int(g.epochs_done.max()),
                     "to50_min": to50.min(), "to50_max": to50.max() if to50.notna().all()
                     else float("nan"), "to50_passing_max": to50.max(),
                     "never50": int(to50.isna().sum()), "seeds": len(g),
                     "finals": list(g.final_test_accuracy),
                     "epoch1s": list(g.epoch1_test_accuracy)})
    return pd.DataFrame(rows)

def _versus(rows: pd.DataFrame, ref, values: str = "finals") -> list:
    """Welch differences of ``rows`` (per-model rows) against ``ref`` (one row), one Holm
    family (None where a side has fewer than 2 seeds)."""
    from ..core.stats import correct, welch
    return correct([welch(r[values], ref[values]) if len(r[values]) > 1 and len(ref[values]) > 1
                    else None for _, r in rows.iterrows()])

def _join(items) -> str:
    return ", ".join(str(i) for i in items)

def _passing(part: pd.DataFrame) -> str:
    """When the ranks of one method pass 50% test accuracy, naming ranks where seeds never do."""
    seeds = int(part.seeds.max())
    every = part[part.never50 == 0]
    some = part[part.never50 > 0]
    text = ""
    if len(every):
        who = "all" if some.empty else "the others"
        text = (f"; {who} pass 50% after {int(every.to50_min.min())}–"
                f"{int(every.to50_max.max())} epochs" + (" in every seed" if seeds > 1 else ""))
    for _, row in some.iterrows():
        never, n = int(row.never50), int(row.seeds)
        lo, hi = row.to50_min, row.to50_passing_max
        when = "" if never == n else (f" (the other{'s' if n - never > 1 else ''} after "
                                      f"{int(lo)}{'' if lo == hi else f'–{int(hi)}'} epochs)")
        text += (f"; rank {int(row['rank'])} never" + (f" in {never} of {n} seeds" if never < n
                                                        else "") + when)
    return text

def score_discussion(runs: pd.DataFrame) -> str:
    """:func:`discussion` of a task whose headline metric is not accuracy: each factorized
    model's final metric against the dense model's, Welch's interval and Holm's correction over
    the factorized models (one family)."""
    from .prose import count_of
    from ..core.stats import correct, welch
    task = _score_task(runs)
    metric, better = task.score, ("higher" if task.higher_is_better else "lower")
    runs = replicates(one_protocol(runs, "the discussion"))
    col = f"final_{metric}"
    groups = list(_groups(runs))
    seeds = max(len(g) for _, g in groups)
    out = [f"*Computed from {len(runs)} records of {task.title}: up to {seeds} seed"
           f"{'s' if seeds > 1 else ''} per model; final {metric.replace('_', ' ')} "
           f"({better} is better), mean over seeds; {training_minutes(runs):.1f} minutes of "
           "training.*", ""]
    dense = [(f, g) for f, g in groups if pd.isna(f["rank"]) and f.method == "full"]
    fact = [(f, g) for f, g in groups if not pd.isna(f["rank"])]
    for f, g in groups:
        out.append(f"- **{f.model}**: {_fmt_score(g[col])} ({len(g)} seed"
                   f"{'s' if len(g) > 1 else ''}, {int(f.params):,} parameters).")
    if dense and fact:
        ref = dense[0][1][col].dropna()
        diffs = correct([welch(g[col].dropna(), ref) if len(g[col].dropna()) > 1 and len(ref) > 1
                         else None for _, g in fact])
        worse = [f.model for (f, _), d in zip(fact, diffs) if d and d.real
                 and (d.diff < 0) == task.higher_is_better]
        tested = sum(d is not None for d in diffs)
        if tested:
            out.append(f"- **Against {dense[0][0].model}** (Welch, Holm over {tested}): "
                       f"{count_of(len(worse), tested, 'factorized models')} are detectably "
                       "worse" + (f" ({', '.join(worse)})" if worse else "") + "; " + "; ".join(
                           f"{f.model} {d.describe(scale=1.0, unit='')}" for (f, _), d
                           in zip(fact, diffs) if d) + ".")
        else:
            out.append("- Fewer than 2 seeds per model: no interval against the dense model.")
    return "\n".join(out)

def discussion(runs: pd.DataFrame) -> str:
    """A short discussion in Markdown whose every number is computed from ``runs`` (records
    of one protocol; ValueError naming the fields that differ otherwise). A task whose headline
    metric is not accuracy gets :func:`score_discussion`."""
    if _score_task(runs) is not None:
        return score_discussion(runs)
    m = _per_model(runs)
    full = m[m["rank"].isna()]  # the dense model
    seeds = int(m.seeds.max()) if len(m) else 0
    devices = ", ".join(sorted(runs.device.dropna().unique()))
    out = [f"*Computed from {len(replicates(runs))} records: {seeds} seed"
           f"{'s' if seeds > 1 else ''} per model{', means over seeds' if seeds > 1 else ''}; "
           f"trained on {devices}, {training_minutes(runs):.0f} minutes of training in all.*", ""]
    if len(full):
        F, E = full.final.iloc[0], int(full.epochs.iloc[0])
        P = full.params.iloc[0]
        out.append(f"- **Full-rank MLP**: {full.epoch1.iloc[0]:.1%} after one epoch, "
                   f"{F:.1%} after {E}.")
    parts = {}
    for name, method in METHODS.items():
        part = m[(m.method == name) & (m.init == method.own_init)]
        if method.factorized and len(part):
            parts[name] = part.sort_values("rank")
    fact = pd.concat(parts.values()) if parts else pd.DataFrame()
    # one family: every factorized model of the discussion against the full-rank MLP
    vs_full = dict(zip(fact.index, _versus(fact, full.iloc[0]))) if len(full) and len(fact) \
        else {}
    n_full = sum(d is not None for d in vs_full.values())
    for name, part in parts.items():
        best = part.loc[part.final.idxmax()]
        label = METHODS[name].label
        text = (f"- **{label[0].upper() + label[1:]}**: {part.epoch1.min():.1%}–"
                f"{part.epoch1.max():.1%} after one epoch across ranks "
                f"{int(part['rank'].min())}–{int(part['rank'].max())}; best final "
                f"accuracy {best.final:.1%} at rank {int(best['rank'])}")
        if len(full):
            text += f" ({best.params / P:.1%} of the full-rank parameters)"
            at_or_above = part[part.final >= F]
            text += (f"; mean at or above the full-rank MLP's at rank"
                     f"{'s' if len(at_or_above) != 1 else ''} "
                     f"{_join(at_or_above['rank'].astype(int)) or 'none'}")
            if n_full:
                above = [int(r["rank"]) for i, r in part.iterrows()
                         if vs_full.get(i) and vs_full[i].real and vs_full[i].diff > 0]
                below = [int(r["rank"]) for i, r in part.iterrows()
                         if vs_full.get(i) and vs_full[i].real and vs_full[i].diff < 0]
                text += (f" (detectably above it at {_ranks_or_none(above)}, below it at "
                         f"{_ranks_or_none(below)}; Holm over the {n_full} factorized models)")
        low = part.iloc[0]
        text += f". Rank {int(low['rank'])} ends at {low.final:.1%}"
        out.append(text + _passing(part) + ".")
    if {"lora", "ae"} <= set(parts):
        both = parts["lora"].merge(parts["ae"], on="rank", suffixes=("_lora", "_ae"))
        ahead1 = both[both.epoch1_lora > both.epoch1_ae]
        ahead = both[both.final_lora > both.final_ae]["rank"].astype(int).tolist()
        behind = both[both.final_lora < both.final_ae]["rank"].astype(int).tolist()
        text = (f"- **LoRA vs autoencoder layers at equal rank**, by mean: after one epoch the "
                f"LoRA init is ahead at {len(ahead1)} of {len(both)} ranks; at the end it is "
                f"ahead at rank{'s' if len(ahead) != 1 else ''} {_join(ahead) or 'none'} and "
                f"behind at rank{'s' if len(behind) != 1 else ''} {_join(behind) or 'none'}")
        if seeds > 1:
            from ..core.stats import correct, welch
            for values, when in (("epoch1s", "after one epoch"), ("finals", "at the end")):
                ds = correct([welch(r[f"{values}_lora"], r[f"{values}_ae"])
                              if min(len(r[f"{values}_lora"]), len(r[f"{values}_ae"])) > 1
                              else None for _, r in both.iterrows()])
                up = [int(r) for r, d in zip(both["rank"], ds) if d and d.real and d.diff > 0]
                down = [int(r) for r, d in zip(both["rank"], ds) if d and d.real and d.diff < 0]
                text += (f"; detectably ({when}, Holm over {len(ds)} ranks) ahead at "
                         f"{_ranks_or_none(up)}, behind at {_ranks_or_none(down)}")
        out.append(text + ".")
    if len(full) and len(fact):
        match = fact[fact.final >= F].sort_values("rank")
        caveat = (" With one seed per model, differences of a point or less may be seed noise."
                  if seeds == 1 else "")
        if len(match):
            row = match.iloc[0]
            d = vs_full.get(match.index[0])
            verdict = "" if d is None else (
                f"; the difference, {d.describe()}, is "
                + ("a real difference" if d.real else
                   f"not distinguishable from zero with {d.n_a} and {d.n_b} seeds"))
            out.append(
                f"- **Answer**: the smallest rank whose mean final accuracy reaches the "
                f"full-rank MLP's (selected by these means among {len(fact)} factorized "
                f"models) is rank {int(row['rank'])} "
                f"({METHODS[row.method].label}, {row.final:.1%} against {F:.1%}, "
                f"{row.params / P:.1%} of its parameters){verdict}." + caveat
                + _noninferior_line(fact, vs_full, P))
        else:
            out.append("- **Answer**: no factorized model's mean reaches the full-rank MLP's "
                       "final accuracy." + caveat)
    diffs, first_epoch = [], []
    for first, g in _groups(runs):
        orig = original_of(first)
        if orig:
            diffs.append((abs(g.final_test_accuracy.mean() * 100 - _midpoint(orig[1])), first))
            if orig[0] != "—":
                first_epoch.append(_outside(g.epoch1_test_accuracy.mean() * 100, orig[0]))
    if diffs:
        worst, row = max(diffs, key=lambda d: d[0])
        within = sum(d <= 2 for d, _ in diffs)
        out.append(f"- **Against the original** (epoch 100): {within} of {len(diffs)} models "
                   f"are within 2 points of the original's numbers; the largest difference is "
                   f"{worst:.1f} points ({row.model})."
                   + (f" After one epoch {sum(d <= 2 for d in first_epoch)} of "
                      f"{len(first_epoch)} are within 2 points (the reading error of its "
                      f"figure) of the original's value or range, the farthest "
                      f"{max(first_epoch):.1f} points outside it." if first_epoch else ""))
    return "\n".join(out)

def _noninferior_line(fact: pd.DataFrame, vs_full: dict, dense_params) -> str:
    """The tuned study's stricter test on the same family: the smallest rank per method that
    is non-inferior to the full-rank MLP within the tuned study's margin after Holm's
    correction (and not detectably worse)."""
    from ..core.stats import ALPHA, noninferior
    from .tuned_compare import MATCH_MARGIN
    keys = [k for k in fact.index if vs_full.get(k) is not None]
    if not keys:
        return ""
    p = dict(zip(keys, noninferior([vs_full[k] for k in keys], MATCH_MARGIN)))
    ok = [k for k in keys if p[k] < ALPHA / 2 and vs_full[k].high >= 0]
    found = []
    for method in fact.method.unique():
        mine = sorted((k for k in ok if fact.loc[k, "method"] == method),
                      key=lambda k: fact.loc[k, "rank"])
        if mine:
            k = mine[0]
            found.append(f"{METHODS[method].label} r={int(fact.loc[k, 'rank'])} "
                         f"({fact.loc[k, 'params'] / dense_params:.1%} of the parameters, "
                         f"Holm non-inferiority p = {p[k]:.2g})")
    return (f" By the tuned study's stricter test (non-inferior within "
            f"{100 * MATCH_MARGIN:.1f} points, Holm over the same {len(keys)}), the smallest "
            "ranks that match dense are: " + ("; ".join(found) if found else "none") + ".")

def _ranks_or_none(ranks) -> str:
    return ("rank" + ("s " if len(ranks) > 1 else " ") + _join(ranks)) if ranks else "none"

def init_summary(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean (and std) epoch-1 and final accuracy per init and rank, factorized models of one
    protocol only."""
    f = replicates(one_protocol(runs, "the init comparison"))
    f = f[f["rank"].notna()]
    s = (f.groupby(["method", "init", "rank"])
         .agg(seeds=("seed", "size"), epoch1=("epoch1_test_accuracy", "mean"),
              final=("final_test_accuracy", "mean"), final_std=("final_test_accuracy", "std"))
         .reset_index())
    twice = s[s.duplicated(["init", "rank"], keep=False)]
    if len(twice):
        raise ValueError(f"init {twice.init.iloc[0]!r} at rank {int(twice['rank'].iloc[0])} is "
                         f"trained by methods {', '.join(twice.method.unique())}: compare one "
                         "method per init")
    return s.rename(columns={"init": "init_name"})

def init_answer(runs: pd.DataFrame, small=(1, 2, 4), large=(16, 32, 64, 128)) -> str:
    """A short Markdown answer to "does the init decide?" whose numbers are computed from
    ``runs`` (records of several inits, one protocol)."""
    s = init_summary(runs)
    inits = sorted(s.init_name.unique())
    seeds = int(s.seeds.min()) if len(s) else 0
    out = [f"*Computed from {len(replicates(runs))} records: inits {', '.join(inits)}; at least "
           f"{seeds} seed{'s' if seeds != 1 else ''} per init and rank, means over seeds.*", ""]
    for col, when in (("epoch1", "after one epoch"), ("final", "after the last epoch")):
        for ranks, name in ((small, "small ranks"), (large, "large ranks")):
            part = s[s["rank"].isin(ranks)]
            if part.empty:
                continue
            per_rank = part.groupby("rank")[col].agg(["min", "max", "idxmax", "idxmin"])
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
