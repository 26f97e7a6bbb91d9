"""A run's settings are defined once: normalized, checked, hashed into ids that stay valid."""
import json
import math
from pathlib import Path

import pytest
import yaml

from lowrank_helpers import REFERENCE, Protocol, RunConfig, StudyConfig
from lowrank_helpers.core.results import has_record
from lowrank_helpers.core.settings import settings_of

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = sorted(ROOT.glob("results/**/*.json"))


def test_every_shipped_record_keeps_its_id():
    """The ids of the records written before the protocol had its own object (schema 1: flat,
    ``dataset`` for the task) are the ids today's code computes from their configs; so are the
    language-model study's (written as schema "lm-1", rewritten by ``lowrank-study migrate``:
    tests/test_migrate.py): one run type, one id rule and one schema for every task."""
    records = [(p, json.loads(p.read_text())) for p in SHIPPED]
    records = [(p, r) for p, r in records if "run_id" in r]   # not the teacher's students
    assert len(records) >= 51 and not any(r.get("schema") == "lm-1" for _, r in records)
    lm = [r for _, r in records if RunConfig.from_dict(r["config"]).task_spec.entry == "iter"]
    assert len(lm) >= 95 and all(r["schema"] == 2 for r in lm)
    for path, record in records:
        run = RunConfig.from_dict(record["config"])
        assert run.run_id == record["run_id"], path
        if record.get("schema") == 2:                     # stored as today's code stores it
            assert run.to_dict() == record["config"], path
        assert path.name == f"{run.name}-{run.run_id}.json"


def test_a_parameter_file_with_integer_zeros_finds_the_reference_records():
    """papermill's YAML writes the reference protocol naturally as ``momentum: 0``: the same
    runs, so nothing of the shipped reference run retrains."""
    params = yaml.safe_load("momentum: 0\nweight_decay: 0\nlr: 1e-3\nbatch_size: 64\n"
                            "seeds: [0, 1, 2]\nresults_dir: ../results\n")
    assert params["momentum"] == 0 and isinstance(params["momentum"], int)
    assert params["lr"] == "1e-3"  # YAML 1.1 reads this as text; it is a number all the same
    cfg = StudyConfig.from_params(params)
    runs = cfg.runs()
    assert len(runs) == 51 and cfg.protocol == Protocol()
    assert all(has_record(r, ROOT / "results") for r in runs)


def test_numbers_are_normalized_before_hashing():
    a = RunConfig(method="lora", rank=4, momentum=0, weight_decay=0, lr=0.001)
    b = RunConfig(method="lora", rank=4, momentum=0.0, weight_decay=0.0, lr=1e-3)
    assert a == b and a.run_id == b.run_id and isinstance(a.momentum, float)


def test_run_id_depends_on_every_field_and_group_id_on_all_but_the_seed():
    base = RunConfig(method="lora", rank=4)
    changes = [{"seed": 1}, {"lr": 0.01}, {"rank": 8}, {"shuffle": True}, {"train_subset": 10},
               {"init": "he"}, {"schedule": "cosine"}, {"warmup_steps": 10}, {"val_size": 100},
               {"widths": (784, 64, 10)}, {"task": "mnist"}, {"optimizer": "adamw"},
               {"batch_size": 32}, {"epochs": 5}, {"momentum": 0.9}, {"weight_decay": 0.1},
               {"test_subset": 10}, {"method": "ae", "init": None}, {"steps": 300},
               {"beta1": 0.8}, {"beta2": 0.99}, {"grad_clip": 1.0}, {"eval_every": 50},
               {"eval_samples": 64}]
    fields = {f.name for f in settings_of(Protocol)} | {"seed", "rank", "init", "widths",
                                                         "task", "method"}
    assert fields - {"min_lr"} == {k for c in changes for k in c}  # min_lr needs cosine
    ids = {base.run_id}
    for change in changes:
        run = base.replace(**change)
        ids.add(run.run_id)
        assert (run.group_id == base.group_id) == (change == {"seed": 1})
    cosine = base.replace(schedule="cosine")
    ids.add(cosine.replace(protocol=Protocol(schedule="cosine", min_lr=1e-4)).run_id)
    assert len(ids) == len(changes) + 2


def test_fields_added_later_enter_the_id_only_when_set():
    """So that adding a setting (at a default that reproduces what was done before) leaves
    every existing id as it was."""
    canonical = RunConfig()._canonical()
    assert "schedule" not in canonical and "val_size" not in canonical
    assert "epochs" in canonical and canonical["dataset"] == "fashion_mnist"
    assert RunConfig(val_size=10)._canonical()["val_size"] == 10


@pytest.mark.parametrize("kwargs, exc, match", [
    ({"lr": float("nan")}, ValueError, "lr must be a finite number, got nan"),
    ({"lr": float("inf")}, ValueError, "lr must be a finite number, got inf"),
    ({"lr": "NaN"}, ValueError, "lr must be a finite number"),
    ({"lr": -1.0}, ValueError, "lr must be > 0, got -1.0"),
    ({"lr": "fast"}, TypeError, "lr must be a number, got 'fast'"),
    ({"lr": True}, TypeError, "lr must be float, got True"),
    ({"epochs": 2.0}, TypeError, "epochs must be int, got 2.0"),
    ({"momentum": 1.0}, ValueError, r"momentum must be in \[0, 1\)"),
    ({"weight_decay": -0.1}, ValueError, "weight_decay must be >= 0"),
    ({"schedule": "linear"}, ValueError, "unknown schedule 'linear'; valid schedules: constant, "
                                         "cosine"),
    ({"min_lr": 1e-4}, ValueError, "min_lr applies to the cosine schedules only"),
    ({"schedule": "cosine", "min_lr": 1.0}, ValueError, "min_lr .* must not exceed lr"),
    ({"val_size": 100, "train_subset": 100}, ValueError, "val_size .* must be smaller"),
    ({"optimizer": "adamw", "momentum": 0.9}, ValueError, "momentum applies to optimizer 'sgd'"),
])
def test_bad_protocols_say_what_is_accepted(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        Protocol(**kwargs)


@pytest.mark.parametrize("kwargs, match", [
    ({"method": "ae", "rank": 4, "init": "he"}, "method 'ae' always uses init 'default'"),
    ({"method": "full", "rank": 4}, "method 'full' takes no rank"),
    ({"method": "lora"}, "rank must be an integer >= 1"),
    ({"widths": (784, 10, 3)}, "widths of task 'fashion_mnist' must be .* from 784 .* to 10"),
    ({"task": "cifar"}, "unknown task 'cifar'; valid tasks: fashion_mnist, mnist"),
])
def test_bad_runs(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RunConfig(**kwargs)


@pytest.mark.parametrize("params, match", [
    ({"seeds": [0, 0, 1]}, "seeds lists 0 more than once"),
    ({"ranks": [4, 8, 4]}, "ranks lists 4 more than once"),
    ({"methods": ["full", "ae"], "init": "he"}, "init 'he' applies to method\\(s\\) lora, densehead(, \\w+)* "
                                                 "only; methods full, ae ignore it"),
    ({"methods": []}, "methods must list at least one value"),
    ({"seeds": []}, "seeds must list at least one value"),
])
def test_bad_studies(params, match):
    with pytest.raises(ValueError, match=match):
        StudyConfig.from_params(params)


def test_schedule_warm_up_then_cosine_to_min_lr():
    p = Protocol(lr=0.1, schedule="cosine", warmup_steps=4, min_lr=0.01)
    total = 104
    assert p.lr_at(0, total) == pytest.approx(0.1 / 5)  # nanoGPT's warm-up: lr·(it+1)/(w+1)
    assert p.lr_at(3, total) == pytest.approx(0.1 * 4 / 5)
    assert p.lr_at(4, total) == pytest.approx(0.1)
    assert p.lr_at(total - 1, total) == pytest.approx(0.01)
    mid = 4 + (total - 1 - 4) / 2
    assert p.lr_at(int(mid), total) == pytest.approx(0.01 + 0.045 * (1 + math.cos(
        math.pi * (int(mid) - 4) / (total - 5))))
    assert all(Protocol().lr_at(s, 10) == 1e-3 for s in range(10)) and Protocol().constant_lr


def test_reference_is_the_original_protocol():
    assert REFERENCE.protocol == Protocol() and REFERENCE.task == "fashion_mnist"
    assert Protocol().describe() == "sgd lr=0.001, batch 64, 100 epochs"
    assert Protocol(momentum=0.9, shuffle=True).describe() == (
        "sgd lr=0.001, batch 64, 100 epochs, momentum 0.9, shuffled")
