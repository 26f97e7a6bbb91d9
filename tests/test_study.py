"""Runs with resume: what is trained is kept, and a rerun trains nothing it has."""
import os

import pytest

import lowrank_helpers as lh
import lowrank_helpers.studies.reference as study_mod
from lowrank_helpers.methods import METHODS


def test_the_theory_spectra_models_become_records_and_resume(tmp_path, monkeypatch):
    cfg = lh.TheoryConfig(inits=["lora", "default", "he"], spectra_dir=str(tmp_path),
                          data_root=os.environ["LOWRANK_DATA"], smoke=True)
    first = lh.spectra_records(cfg, progress=False)
    assert sorted(zip(first.method, first.init)) == [("ae", "default"), ("full", "default"),
                                                     ("lora", "he"), ("lora", "lora")]
    for sv in first.analysis:
        assert [len(v) for v in sv["singular_values"]] == [512, 512, 10]
        assert sv["singular_values"][0] == sorted(sv["singular_values"][0], reverse=True)
    monkeypatch.setattr(study_mod, "train_many", lambda *a, **k: pytest.fail("retrained"))
    again = lh.spectra_records(cfg, progress=False)
    assert sorted(again.run_id) == sorted(first.run_id)


def test_a_method_with_its_own_parameter_groups_trains_alone(tmp_path):
    """A method registered with its own optimizer groups (as LoRA+ will be) is one
    registration; the study trains it with the plain loop, which uses its groups."""
    calls = []

    def faster_b(model, lr):
        calls.append(lr)
        b = [p for n, p in model.named_parameters() if n.endswith(".B")]
        rest = [p for n, p in model.named_parameters() if not n.endswith(".B")]
        return [{"params": rest}, {"params": b, "lr": 4 * lr}]
    lh.register_method(lh.Method("bfast", "B-fast layers", factorized=True, default_init="lora",
                                 param_groups=faster_b))
    try:
        cfg = lh.StudyConfig(methods=["full", "bfast"], ranks=[4], results_dir=str(tmp_path),
                             data_root=os.environ["LOWRANK_DATA"], smoke=True)
        runs = lh.run_study(cfg, progress=False)
        assert calls == [1e-3]
        assert dict(zip(runs.method, runs.engine)) == {"full": "stacked", "bfast": "plain"}
        assert list(lh.comparison_table(runs).model) == ["full-rank MLP", "B-fast layers r=4"]
        with pytest.raises(ValueError, match="bfast change the training step"):
            lh.train_many([r for r in cfg.runs() if r.method == "bfast"], None)
    finally:
        METHODS.pop("bfast")
