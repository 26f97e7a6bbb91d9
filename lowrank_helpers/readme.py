"""README's generated blocks: regenerated from the stored records, checked by a test.

A block is ``<!-- generated: KIND PATH -->`` … ``<!-- end -->``; PATH is relative to the
README. Kinds: ``table`` (:func:`~lowrank_helpers.reports.reference.comparison_table`) and ``discussion``
of the reference-protocol records in a results directory; ``agreement`` of two directories
``other:reference`` (:func:`~lowrank_helpers.reports.reference.agreement`); ``inits`` of several
directories ``a:b:...`` compared by init (:func:`~lowrank_helpers.reports.answers.init_answer`);
``tuned``, ``tuned-tables`` and ``tuned-headline`` of the tuned comparison's records
(:func:`~lowrank_helpers.reports.tuned.tuned_answer`, ``tuned_tables_markdown``,
``tuned_headline``); ``lm`` and ``lm-table`` of the language-model study's records
(:func:`~lowrank_helpers.reports.lm.lm_answer`, ``lm_tables_markdown``) and ``lm-speed`` of its
benchmark's JSON (:func:`lm_speed`); ``lm-gap`` of the LM study's controls
(:func:`~lowrank_helpers.reports.lm_gap.gap_answer`); ``extensions`` of
``extensions:lm:tuned`` (:func:`~lowrank_helpers.reports.extensions_answer.readme_block`)
and ``extensions-speed`` of its benchmark's JSON
(:func:`~lowrank_helpers.reports.extensions_answer.speed_block`).
"""
from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from .reports.answers import discussion, init_answer
from .reports.reference import agreement, comparison_table
from .core.results import is_reference, load_records

README_BLOCK = re.compile(
    r"(<!-- generated: (table|discussion|agreement|inits|tuned|tuned-tables|tuned-headline|lm|"
    r"lm-table|lm-speed|lm-gap|extensions|extensions-speed) (\S+) -->\n)(.*?)"
    r"(<!-- end -->)", re.S)


def reference_records(results_dir) -> pd.DataFrame:
    """The records in ``results_dir`` trained under the original's protocol on its task."""
    runs = load_records(results_dir)
    runs = runs[is_reference(runs)] if len(runs) else runs
    if runs.empty:
        raise ValueError(f"no reference-protocol records in {results_dir}")
    return runs.reset_index(drop=True)


def render_block(kind: str, results_dir) -> str:
    """A README block from the reference-protocol records in ``results_dir``."""
    if kind == "agreement":
        other, reference = str(results_dir).rsplit(":", 1)
        return agreement(reference_records(reference), reference_records(other))
    if kind == "extensions-speed":    # benchmarks/bench_extensions.py's JSON
        from .reports.extensions_answer import speed_block
        return speed_block(results_dir)
    if kind == "extensions":    # its folder, the LM study's and the tuned study's
        from .reports.extensions_answer import readme_block
        return readme_block(*str(results_dir).split(":"))
    if kind == "lm-gap":        # the study's folder, the longer budget's, the scale series'
        from .reports.lm_gap import gap_answer, gap_tables
        main, budget, *scale = str(results_dir).split(":")
        return gap_answer(gap_tables(main, scale, budget))
    if kind.startswith("lm"):
        from .reports.lm import lm_answer, lm_table, lm_tables_markdown
        from .studies.lm import STUDENTS, load_lm_records
        if kind == "lm-speed":
            return lm_speed(results_dir)
        runs = load_lm_records(results_dir)
        if kind == "lm-table":
            return lm_tables_markdown(lm_table(runs))
        from .studies.teacher import stored_students
        return lm_answer(runs, stored_students(Path(results_dir) / STUDENTS))
    if kind.startswith("tuned"):
        from .reports.tuned import tuned_answer, tuned_tables_markdown
        from .reports.tuned_headline import tuned_headline
        from .studies.tuned import tuned_table
        runs = load_records(results_dir)
        table = tuned_table(runs)
        return {"tuned": lambda: tuned_answer(table, runs),
                "tuned-tables": lambda: tuned_tables_markdown(table),
                "tuned-headline": lambda: tuned_headline(table)}[kind]()
    if kind == "inits":  # several directories, joined
        return init_answer(pd.concat([reference_records(d) for d in str(results_dir).split(":")],
                                     ignore_index=True))
    runs = reference_records(results_dir)
    return (comparison_table(runs).to_markdown(index=False) if kind == "table"
            else discussion(runs))


def _x(v: float) -> str:
    return f"{v:.2f}×"


def _phases(b: dict) -> str:
    """Where the stacked step's time goes against the same models alone (bench_lm's phases),
    or nothing where the JSON has none."""
    got = {name: g["phases"] for name, g in b.items() if isinstance(g, dict) and "phases" in g}
    if not got:
        return ""
    names = {"forward": "forward with the loss", "backward": "backward",
             "optimizer": "clipping and AdamW"}
    return (f" In tight loops on the same windows, ms per step of all {b['models']} models "
            "together against one at a time: " + "; ".join(
                f"{name}: " + ", ".join(
                    f"{names[k]} {ph['together'][k]:.1f} against {ph['one_at_a_time'][k]:.1f}"
                    for k in names) + f", the step {_x(ph['speedup']['step'])}"
                for name, ph in got.items()) + ".")


def lm_speed(path) -> str:
    """The LM benchmark's block (``benchmarks/bench_lm.py``'s JSON at ``path``): training
    together against one at a time, one model against nanoGPT's ``model.py`` timed in the
    same run, where the step's time goes, AdamW's CPU implementations and ``torch.compile``.
    A part the JSON lacks (the benchmark run without ``--nanogpt``, ``--profile`` or
    ``--compile``) is said to be absent."""
    import json
    from .reports.lm import NANOGPT_CPU
    b = json.loads(Path(path).read_text())
    out = [f"| {b['steps']} steps of {b['tokens_per_step']} tokens, {b['models']} models "
           f"(median of {b['repeats']}, {b['torch_threads']} threads) | one at a time | "
           "together (torch.func) | speed-up |", "|---|---:|---:|---:|"]
    for name, g in b.items():
        if isinstance(g, dict) and "one_at_a_time_s" in g:
            out.append(f"| {name}: tokens/s | {g['tokens_per_s_one']:,.0f} "
                       f"({g['ms_per_step_one']:.1f} ms/step) | "
                       f"{g['tokens_per_s_together']:,.0f} | {_x(g['speedup'])} |")
    out.append("")
    o = b.get("one_model")
    if o is not None:
        ours, n = o["ours"], o["nanogpt"]
        if "skipped" in n:
            vs = f"nanoGPT's `model.py` was not timed in this run ({n['skipped']})."
        else:
            vs = (f"nanoGPT's `model.py` with its own optimizer, in the same process on the "
                  f"same batches, {n['ms_per_step']:.1f} ms ({n['tokens_per_s']:,.0f} "
                  f"tokens/s): ours over nanoGPT's {_x(o['ours_over_nanogpt'])} "
                  f"({_x(o['ours_over_nanogpt_paired'])} as the median of pairs timed back to "
                  "back).")
        out.append(f"- **One model, nanoGPT's loop.** Ours {ours['ms_per_step']:.1f} ms per step "
                   f"({ours['tokens_per_s']:,.0f} tokens/s); {vs} Our whole loop "
                   f"(`lh.train_lm_eager`, batches and evaluations included) "
                   f"{o['ours_loop']['ms_per_step']:.1f} ms per step. nanoGPT's reported "
                   f"{NANOGPT_CPU['ms_per_iter']:g} ms ({b['nanogpt_reference_tokens_per_s']:,.0f}"
                   " tokens/s) is an outside number.")
        text = (f"- **Where the step's time goes.** {o['training_flops_per_step'] / 1e9:.2f} "
                f"GFLOP per step at {ours['gflops']:.0f} GFLOP/s: "
                f"{100 * ours['of_matmul_rate']:.0f} % of this CPU's large-matmul rate "
                f"({o['matmul_gflops']:.0f} GFLOP/s, {o.get('matmul_n', 1024)}² float32).")
        p = b.get("profile")
        if p is not None:
            names = {"matmul": "matrix products", "optimizer": "AdamW and clipping over "
                     f"{o['parameter_tensors']['ours']} tensors",
                     "python between ops": "Python between ops",
                     "elementwise/other": "elementwise and other ops"}
            parts = sorted(p["share"].items(), key=lambda kv: -kv[1])
            small = [names.get(k, k) for k, v in parts if v < 0.005]
            text += (f" Under the profiler ({p['repeats']} × {p['steps']} steps, self CPU "
                     "time): " + ", ".join(f"{names.get(k, k)} {100 * v:.0f} %"
                                           for k, v in parts if v >= 0.005)
                     + (f", {' and '.join(small)} under 1 %" if small else "") + ".")
            if p.get("matmul_gflops_in_step"):
                text += (f" The products themselves run at {p['matmul_gflops_in_step']:.0f} "
                         f"GFLOP/s ({100 * p['matmul_gflops_in_step'] / o['matmul_gflops']:.0f}"
                         " % of that rate): the rest of the step's time is the other ops.")
        out.append(text)
        a, c = b.get("adamw"), b.get("compile")
        if a is not None or c is not None:
            text = "- **Fused or compiled.**"
            if a is not None:
                text += (f" AdamW's CPU default is its {a['default_is']}; on the same steps "
                         f"`foreach=True` gives {_x(a['foreach_speedup'])}, `fused=True` "
                         f"{_x(a['fused_speedup'])}.")
            if c is not None and "skipped" in c:
                text += f" `torch.compile` was skipped: {c['skipped']}."
            elif c is not None:
                who = {"ours": "ours", "nanogpt": "nanoGPT's"}
                text += " `torch.compile` (loss included) against eager: " + ", ".join(
                    f"{who[k]} {_x(c[f'{k}_compiled_speedup'])} (compiling "
                    f"{c[f'{k}_compile_s']:.0f} s)" for k in who if f"{k}_compile_s" in c) + "."
            out.append(text)
    t = b.get("factorized_target")
    if t is not None:
        verdict = (f"{t['verdict']} (the {b['repeats']} repeat{'s' * (b['repeats'] != 1)}, "
                   "each pair timed back to "
                   f"back, range from {_x(t['paired_low'])} to {_x(t['paired_high'])}: "
                   f"{100 * t['coverage']:.0f} % to hold the median ratio)")
        out.append(f"- **Training together.** {t['kind']}: {_x(t['speedup'])} over one at a "
                   f"time, against the target of {_x(t['target'])}: {verdict}; dense "
                   f"{_x(b['dense']['speedup'])}."
                   + _phases(b))
    return "\n".join(out)


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
