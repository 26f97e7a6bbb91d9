"""README's results come from the stored records: regenerate its table and compare."""
import re
from pathlib import Path

import pytest

from lowrank_helpers import SummaryConfig, comparison_table, load_records

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def test_results_table_matches_the_records():
    match = re.search(r"<!-- results-table:start -->\n(.*?)\n<!-- results-table:end -->",
                      README, re.S)
    assert match, "README lacks the results-table markers"
    runs = load_records(ROOT / "results", **SummaryConfig().record_filter())
    if runs.empty:
        pytest.fail("results/ holds no reference records")
    # the same command as README gives: lowrank-study table
    assert match.group(1).strip() == comparison_table(runs).to_markdown(index=False).strip()


def test_figures_in_readme_exist():
    for path in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", README):
        assert (ROOT / path).is_file(), f"README shows {path}, which does not exist"


def test_readme_gives_the_two_commands():
    assert "make study" in README and "make test" in README
