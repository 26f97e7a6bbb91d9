"""The tuned and language-model studies as presets of the one batch runner: their jobs, and
the language-model study's jobs on a local Dask cluster writing what the study trains in one
process."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

import lowrank_helpers as lh
from lowrank_helpers.studies.lm import plan_jobs as lm_jobs
from lowrank_helpers.batch.presets import PRESETS
from lowrank_helpers.studies.tuned import TunedConfig, plan_jobs as tuned_jobs

ROOT = Path(__file__).resolve().parent.parent


def test_each_study_splits_into_independent_jobs(tmp_path):
    cfg = TunedConfig(smoke=True, results_dir=str(tmp_path / "t"))
    jobs = tuned_jobs(cfg)
    assert [j.name for j in jobs] == ["sgd", "adamw"]
    assert [j.config.optimizers for j in jobs] == [("sgd",), ("adamw",)]
    assert all(j.config.results_dir == cfg.results_dir and j.config.epochs == 1 for j in jobs)
    lm = lh.LMStudyConfig(smoke=True, results_dir=str(tmp_path / "r"),
                          phases=("anchor", "search", "seeds", "inits"))
    jobs = lm_jobs(lm)
    assert [j.name for j in jobs] == ["anchor", "search-seeds", "inits"]
    assert [j.config.phases for j in jobs] == [("anchor",), ("search", "seeds"), ("inits",)]
    # a search plans no runs ahead: its job may write any run's record, and starts from all
    job = jobs[0]
    assert job.run_ids() is None and not job.done() and job.records() == []
    Path(lm.results_dir).mkdir(parents=True)
    record = json.loads((ROOT / "tests" / "fixtures").glob("lm1-*.json").__next__().read_text())
    (Path(lm.results_dir) / "a.json").write_text(json.dumps(record))
    (Path(lm.results_dir) / "broken.json").write_text("{")
    assert [r["run_id"] for r in job.records()] == [record["run_id"]]
    # the job notebook builds the job's config from its parameters
    assert PRESETS["lm"].config_class.from_params(job.config.to_dict()) == job.config


@pytest.mark.notebook
def test_lm_jobs_on_a_local_dask_cluster_write_what_one_process_writes(tmp_path):
    pytest.importorskip("distributed", reason="the cluster extra: pip install -e '.[cluster]'")

    def lm(where, *extra):
        return subprocess.run(
            [sys.executable, "-m", "lowrank_helpers", "lm", "--smoke", "--phases", "partial",
             "--no-notebook", "--results-dir", str(tmp_path / where / "r"),
             "--runs-dir", str(tmp_path / where / "runs"), *extra],
            cwd=ROOT, capture_output=True, text=True, timeout=600)
    one = lm("one")
    assert one.returncode == 0, one.stdout + one.stderr
    out = lm("dask", "--scheduler", "local", "--jobs", "1")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "1 jobs of the lm study (partial), on a local Dask cluster" in out.stdout
    runs = sorted((tmp_path / "dask" / "runs" / "smoke").glob("lm-*.ipynb"))
    assert [p.name.split("-")[1] for p in runs] == ["partial"]

    def finals(where):
        recs = [lh.read_record(p) for p in (tmp_path / where / "r" / "smoke").glob("*.json")]
        return {r["run_id"]: r["final"]["val_loss"] for r in recs}
    expected = finals("one")
    assert len(expected) >= 4 and f"{len(expected)} records written into" in out.stdout
    assert finals("dask") == pytest.approx(expected, abs=1e-6)
