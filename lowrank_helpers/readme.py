"""README's generated blocks: regenerated from the stored records, checked by a test.

A block is ``<!-- generated: KIND PATH -->`` … ``<!-- end -->``; PATH is relative to the
README. Kinds: ``table`` (:func:`~lowrank_helpers.report.comparison_table`) and ``discussion``
of the reference-protocol records in a results directory; ``agreement`` of two directories
``other:reference`` (:func:`~lowrank_helpers.report.agreement`); ``inits`` of several
directories ``a:b:...`` compared by init (:func:`~lowrank_helpers.answers.init_answer`);
``tuned``, ``tuned-tables`` and ``tuned-headline`` of the tuned comparison's records
(:func:`~lowrank_helpers.tuned_report.tuned_answer`, ``tuned_tables_markdown``,
``tuned_headline``); ``lm`` and ``lm-table`` of the language-model study's records
(:func:`~lowrank_helpers.lm_report.lm_answer`, ``lm_tables_markdown``) and ``lm-speed`` of its
benchmark's JSON (:func:`~lowrank_helpers.lm_report.lm_speed`).
"""
from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from .answers import discussion, init_answer
from .report import agreement, comparison_table
from .results import is_reference, load_records

README_BLOCK = re.compile(
    r"(<!-- generated: (table|discussion|agreement|inits|tuned|tuned-tables|tuned-headline|lm|"
    r"lm-table|lm-speed) (\S+) -->\n)(.*?)"
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
    if kind.startswith("lm"):
        from .lm_report import lm_answer, lm_speed, lm_table, lm_tables_markdown
        from .lm_study import STUDENTS, load_lm_records
        if kind == "lm-speed":
            return lm_speed(results_dir)
        runs = load_lm_records(results_dir)
        if kind == "lm-table":
            return lm_tables_markdown(lm_table(runs))
        from .teacher import stored_students
        return lm_answer(runs, stored_students(Path(results_dir) / STUDENTS))
    if kind.startswith("tuned"):
        from .tuned_report import tuned_answer, tuned_headline, tuned_tables_markdown
        from .tuning import tuned_table
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
