import pytest

from lowrank_helpers import Protocol, RunConfig, StudyConfig, SummaryConfig
from lowrank_helpers.core.config import SMOKE, smoke_dir


def test_defaults_are_the_reference_protocol():
    t = Protocol()
    assert (t.epochs, t.lr, t.batch_size, t.optimizer, t.momentum, t.weight_decay,
            t.shuffle) == (100, 1e-3, 64, "sgd", 0.0, 0.0, False)


def test_reference_study_has_17_models_and_3_seeds():
    assert len(StudyConfig().runs()) == 51 and StudyConfig().seeds == (0, 1, 2)
    runs = StudyConfig(seeds=[0]).runs()
    assert len(runs) == 17
    assert sum(r.method == "full" for r in runs) == 1
    assert {r.init for r in runs if r.method == "lora"} == {"lora"}
    assert {r.init for r in runs if r.method == "ae"} == {"default"}
    assert len({r.run_id for r in runs}) == 17


def test_run_id_depends_on_every_field():
    base = RunConfig(method="lora", rank=4)
    assert base.run_id == RunConfig(method="lora", rank=4).run_id
    for change in ({"seed": 1}, {"lr": 0.01}, {"rank": 8}, {"shuffle": True},
                   {"train_subset": 10}, {"init": "default"}):
        assert RunConfig(**{"method": "lora", "rank": 4, **change}).run_id != base.run_id


@pytest.mark.parametrize("kwargs, exc, match", [
    ({"methods": ["full", "lorra"]}, ValueError, "unknown method 'lorra'; valid methods"),
    ({"init": "xavier"}, ValueError, "unknown init 'xavier'; valid inits: default, he, lora, matched, spectral"),
    ({"task": "cifar"}, ValueError, "unknown task 'cifar'; valid tasks: fashion_mnist, mnist"),
    ({"optimizer": "adam"}, ValueError, "unknown optimizer 'adam'; valid optimizers: sgd, adamw"),
    ({"ranks": [4, 0]}, ValueError, "rank must be an integer >= 1, got 0"),
    ({"ranks": [-2]}, ValueError, "rank must be an integer >= 1, got -2"),
    ({"ranks": [2.5]}, TypeError, "ranks must be list\\[int\\]"),
    ({"ranks": 4}, TypeError, "ranks must be list\\[int\\]"),
    ({"epochs": "100"}, TypeError, "epochs must be int, got '100'"),
    ({"lr": 0}, ValueError, "lr must be > 0"),
    ({"shuffle": "yes"}, TypeError, "shuffle must be bool"),
    ({"device": "gpu"}, ValueError, "unknown device 'gpu'; valid devices: auto, cpu, cuda"),
    ({"ranks": []}, ValueError, "ranks is empty"),
    ({"optimizer": "adamw", "momentum": 0.9}, ValueError, "momentum applies to optimizer 'sgd'"),
])
def test_bad_study_parameters(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        StudyConfig.from_params(kwargs)


def test_misspelled_parameter_gets_a_suggestion():
    with pytest.raises(ValueError, match="unknown parameter.*'rnaks' \\(did you mean 'ranks'\\?\\)"
                                         ".*valid parameters: task, methods, ranks"):
        StudyConfig.from_params({"rnaks": [4]})


def test_from_notebook_takes_only_new_public_names(monkeypatch):
    monkeypatch.delenv("LOWRANK_SMOKE", raising=False)
    namespace = {"lh": object(), "ranks": [4], "epochs": 3, "_i3": "x"}
    cfg = StudyConfig.from_notebook(namespace, before={"lh"})
    assert cfg.ranks == (4,) and cfg.protocol.epochs == 3 and not cfg.smoke
    monkeypatch.setenv("LOWRANK_SMOKE", "1")
    assert StudyConfig.from_notebook(namespace, before={"lh"}).smoke


def test_smoke_shrinks_and_redirects():
    cfg = StudyConfig(ranks=[1, 2, 4, 8], seeds=[0, 1], results_dir="out", smoke=True)
    assert cfg.protocol.epochs == SMOKE["epochs"] and cfg.ranks == (1, 2) and cfg.seeds == (0,)
    assert cfg.results_dir == smoke_dir("out") != "out"
    assert all(r.train_subset == SMOKE["train_subset"] for r in cfg.runs())
    # idempotent, so a smoke config's parameters can be passed on (the CLI's jobs do)
    again = StudyConfig.from_params(cfg.to_dict())
    assert again.results_dir == cfg.results_dir and again.runs() == cfg.runs()
    summary = SummaryConfig(img_dir="pics", smoke=True)
    assert summary.img_dir == smoke_dir("pics") and summary.protocol.epochs == SMOKE["epochs"]


def test_full_only_study_needs_no_ranks():
    runs = StudyConfig(methods=["full"], ranks=[], seeds=[0, 1]).runs()
    assert [r.seed for r in runs] == [0, 1] and all(r.rank is None for r in runs)


def test_rerunning_the_config_cell_reads_the_declared_parameters_only(monkeypatch):
    """After the first run, later cells have defined names of their own (cfg, runs, ...):
    a rerun of the config cell reads the declared parameters, as they are now."""
    monkeypatch.delenv("LOWRANK_SMOKE", raising=False)
    before = {"lh"}
    namespace = {"lh": object(), "ranks": [4], "epochs": 3}
    first = StudyConfig.from_notebook(namespace, before)
    namespace.update(cfg=first, runs=[1, 2], figures={}, epochs=5)
    again = StudyConfig.from_notebook(namespace, before)
    assert again.protocol.epochs == 5 and again.ranks == (4,)


def test_every_notebook_declares_its_configs_parameters():
    """Each notebook's parameters cell assigns exactly its config's parameter names (the
    protocol's fields included, for the study and the summary)."""
    import ast
    import json
    from pathlib import Path

    from lowrank_helpers import ExplorerConfig, TheoryConfig
    from lowrank_helpers.studies.lm import LMStudyConfig
    root = Path(__file__).resolve().parent.parent / "notebooks"
    for name, cls in (("study", StudyConfig), ("summary", SummaryConfig),
                      ("explorer", ExplorerConfig), ("theory", TheoryConfig),
                      ("shakespeare_char", LMStudyConfig)):
        nb = json.loads((root / f"{name}.ipynb").read_text())
        cells = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
        assert len(cells) == 1, f"{name}: one parameters cell"
        tree = ast.parse("".join(cells[0]["source"]))
        names = [t.id for node in tree.body for t in node.targets]
        assert names == cls.parameter_names(), name
        # plain literals only, each one accepted as the default
        values = {t.id: ast.literal_eval(node.value) for node in tree.body for t in node.targets}
        cls.from_params(values)
