"""README's results come from the stored records: every generated block must regenerate."""
import re
from pathlib import Path

from lowrank_helpers.report import README_BLOCK, update_readme

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def test_generated_blocks_match_the_records():
    kinds = {m.group(2) for m in README_BLOCK.finditer(README)}
    assert {"table", "discussion"} <= kinds, "README lacks its generated result blocks"
    stale = update_readme(ROOT / "README.md", check=True)
    assert not stale, f"README blocks differ from the records: {stale}; run lowrank-study readme"


def test_figures_in_readme_exist():
    for path in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", README):
        assert (ROOT / path).is_file(), f"README shows {path}, which does not exist"


def test_readme_gives_the_two_commands():
    assert "make study" in README and "make test" in README
