"""README's results come from the stored records: every generated block must regenerate."""
import re
from pathlib import Path

import functools

from lowrank_helpers.readme import README_BLOCK, render_block

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


@functools.lru_cache(maxsize=1)
def rendered_blocks() -> tuple:
    """(kind, path, text in README, text regenerated from the records) per generated block,
    rendered once per session (tests/test_claims.py reads them too)."""
    out = []
    for m in README_BLOCK.finditer(README):
        where = ":".join(str(ROOT / part) for part in m.group(3).split(":"))
        out.append((m.group(2), m.group(3), m.group(4), render_block(m.group(2), where) + "\n"))
    return tuple(out)


def test_generated_blocks_match_the_records():
    """As ``lowrank-study readme --check`` checks them."""
    kinds = {kind for kind, *_ in rendered_blocks()}
    assert {"table", "discussion"} <= kinds, "README lacks its generated result blocks"
    stale = [f"{kind} {path}" for kind, path, now, new in rendered_blocks() if now != new]
    assert not stale, f"README blocks differ from the records: {stale}; run lowrank-study readme"


def test_figures_in_readme_exist():
    for path in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", README):
        assert (ROOT / path).is_file(), f"README shows {path}, which does not exist"


def test_readme_gives_the_two_commands():
    assert "make study" in README and "make test" in README


def _records(sub="results"):
    from lowrank_helpers.readme import reference_records
    return reference_records(ROOT / sub)


def test_agreement_of_a_run_with_itself_is_exact():
    from lowrank_helpers.reports.reference import agreement
    runs = _records()
    text = agreement(runs, runs)
    assert f"{len(runs)} pairs" in text and "largest difference 0.00 points" in text


def test_training_minutes_count_a_stack_once():
    from lowrank_helpers.reports.reference import training_minutes
    runs = _records("results/h200")  # 51 models trained in one lockstep group
    assert runs.wall_time.nunique() == 1
    assert training_minutes(runs) == runs.wall_time.iloc[0] / 60


def test_init_answer_names_the_best_and_worst_init_per_rank():
    from lowrank_helpers.reports.answers import init_answer, init_summary
    runs = _records()
    s = init_summary(runs)
    r4 = s[s["rank"] == 4].set_index("init_name")
    text = init_answer(runs)
    assert f"r=4: lora {r4.loc['lora', 'epoch1']:.1%} … default {r4.loc['default', 'epoch1']:.1%}" \
        in text


def test_every_python_block_runs_as_written(monkeypatch):
    """The README's Python examples, in order, in one namespace, from the repository root
    (on the session's small synthetic data, $LOWRANK_DATA). A block that needs what no test
    machine has (a SLURM cluster) says so just above itself: ``<!-- not run: why -->``."""
    import matplotlib
    matplotlib.use("Agg")
    found = re.findall(r"(<!-- not run: [^>]*-->\n)?```python\n(.*?)```", README, re.S)
    blocks = [block for skip, block in found if not skip]
    assert blocks, "README has no Python example"
    assert len(found) - len(blocks) <= 1, "more than the SLURM example is not run"
    monkeypatch.chdir(ROOT)
    namespace = {}
    for block in blocks:
        exec(compile(block, "README.md", "exec"), namespace)
