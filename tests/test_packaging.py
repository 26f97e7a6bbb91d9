"""environment.yml lists what pyproject.toml declares (runtime, cluster and test extras), with
the same lower bounds: one set of dependencies, written for pip and for conda."""
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONDA_NAME = {"torch": "pytorch"}  # conda-forge's name where it differs from PyPI's


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    declared = [*project["dependencies"], *extras["cluster"], *extras["test"]]
    conda = {}
    for line in (ROOT / "environment.yml").read_text().splitlines():
        m = re.match(r"\s+- ([A-Za-z0-9_.-]+)(>=[^\s#]+)?", line)
        if m:
            conda[m.group(1)] = m.group(2) or ""
    for spec in declared:
        if spec.startswith("lowrank_helpers"):
            continue  # the test extra includes the cluster extra
        name, bound = re.match(r"([A-Za-z0-9_.-]+)(>=.+)?", spec).groups()
        name = CONDA_NAME.get(name, name)
        assert name in conda, f"{name} is in pyproject.toml but not in environment.yml"
        assert conda[name] == (bound or ""), f"{name}: {bound} in pyproject, {conda[name]} in conda"
    assert "lowrank_helpers[cluster]" in extras["test"]  # CI, which installs test, tests it
