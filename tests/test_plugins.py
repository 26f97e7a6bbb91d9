"""A method is one new file: dropped into lowrank_helpers/methods/, it runs on both tasks
through the command line (stacked) and alone, with no other file edited."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import lowrank_helpers

METHODS_DIR = Path(lowrank_helpers.__file__).parent / "methods"
ROOT = Path(__file__).resolve().parent.parent

#: A method in one file: A drawn once (the init's) and frozen, only B (and the biases) trained.
FROZEN_A = '''"""A drawn once and frozen; only B and the biases train (a test's plug-in)."""
from ..models.layers import LowRankLinear
from .base import Method, register_method


class FrozenA(Method):
    def prepare(self, model, options):
        super().prepare(model, options)
        for layer in model.modules():
            if isinstance(layer, LowRankLinear):
                layer.A.requires_grad_(False)


register_method(FrozenA("frozen_a", "frozen-A layers", factorized=True, default_init="he"))
'''


@pytest.fixture
def frozen_a_file():
    """The file, found by every new process (the command line's, its notebooks' kernels);
    this one imports it too, to read the records back."""
    import importlib
    from lowrank_helpers.methods import METHODS
    path = METHODS_DIR / "zz_test_frozen_a.py"
    path.write_text(FROZEN_A)
    try:
        importlib.import_module("lowrank_helpers.methods.zz_test_frozen_a")
        yield path
    finally:
        path.unlink()
        METHODS.pop("frozen_a", None)
        sys.modules.pop("lowrank_helpers.methods.zz_test_frozen_a", None)


def _cli(tmp_path, *args) -> subprocess.Popen:
    tmp_path.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "LOWRANK_DATA": os.environ["LOWRANK_DATA"]}
    return subprocess.Popen([sys.executable, "-m", "lowrank_helpers", *args, "--smoke",
                             "--no-summary", "--runs-dir", str(tmp_path / "runs"),
                             "--notebook", str(ROOT / "notebooks" / "study.ipynb")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, cwd=tmp_path)


@pytest.mark.notebook
def test_a_method_in_one_new_file_runs_on_both_tasks_stacked_and_alone(tmp_path,
                                                                       frozen_a_file):
    import lowrank_helpers as lh
    from lowrank_helpers.studies.reference import run_records
    tasks = ("fashion_mnist", "shakespeare_char")
    procs = {task: _cli(tmp_path / task, "--task", task, "--methods", "frozen_a", "--ranks",
                        "2", "--results-dir", str(tmp_path / task / "stacked"))
             for task in tasks}                            # side by side: two cores
    records = {}
    for task, proc in procs.items():
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, out[-2000:] + err[-3000:]
        [path] = (tmp_path / task / "stacked" / "smoke").glob("*.json")
        records[task, "stacked"] = record = json.loads(path.read_text())
        assert record["cost"]["engine"] == "stacked"
        # the same run alone, through the one training loop, here (the command line's
        # --no-engine reaches this same call: the study notebook's run_study passes its
        # engine=False to run_records)
        run = lh.RunConfig.from_dict(record["config"])
        run_records([run], tmp_path / task / "alone", data_root=os.environ["LOWRANK_DATA"],
                    device="cpu", engine=False, progress=False, verbose=False)
        [path] = (tmp_path / task / "alone").glob("*.json")
        records[task, "alone"] = record = json.loads(path.read_text())
        assert record["cost"]["engine"] == "plain"
    for task in ("fashion_mnist", "shakespeare_char"):
        run = lh.RunConfig.from_dict(records[task, "alone"]["config"])
        assert run.method == "frozen_a" and run.init == "he"
        model = run.build()
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        frozen = sum(p.numel() for n, p in model.named_parameters() if n.endswith(".A"))
        assert frozen > 0 and records[task, "alone"]["parameters"]["total"] == trainable
        assert not any(p.requires_grad for n, p in model.named_parameters()
                       if n.endswith(".A"))
        # stacked and alone train the same model (float32: equal up to rounding)
        score = run.task_spec.score
        a, s = (records[task, h]["history"][-1][score] for h in ("alone", "stacked"))
        assert a == pytest.approx(s, rel=1e-3, abs=1e-3)
