"""One record schema for every study: the language-model study's first records (schema
"lm-1") read as today's, and rewritten as such without retraining anything."""
import json
import shutil
from pathlib import Path

import pytest

from lowrank_helpers import RunConfig
from lowrank_helpers.batch.cli import main
from lowrank_helpers.studies.lm import load_lm_records
from lowrank_helpers.core.migrate import migrate_dir, upgrade
from lowrank_helpers.core.protocol import SCHEMA
from lowrank_helpers.core.results import load_records, read_record

DATA = Path(__file__).resolve().parent / "fixtures"
LEGACY = DATA / "lm1-tinyshakespeare-attn-r016-lora-d128-lr0.003-s0-7590b656cd.json"


def _legacy_dir(tmp_path) -> Path:
    """A folder of two lm-1 records (one of them diverged), a schema-2 record and a file that
    is no record."""
    d = tmp_path / "r"
    d.mkdir()
    shutil.copy(LEGACY, d / LEGACY.name.removeprefix("lm1-"))
    bad = json.loads(LEGACY.read_text())
    run = RunConfig.from_dict(bad["config"]).replace(seed=7)
    bad.update(run_id=run.run_id, name=run.name, config=run.to_dict(), diverged_iter=750)
    (d / f"{run.name}-{run.run_id}.json").write_text(json.dumps(bad))
    two = upgrade(json.loads(LEGACY.read_text()))
    run2 = run.replace(seed=8)
    two.update(run_id=run2.run_id, name=run2.name, config=run2.to_dict())
    (d / f"{run2.name}-{run2.run_id}.json").write_text(json.dumps(two))
    (d / "notes.json").write_text("[1, 2]")
    return d


def test_an_lm1_record_upgrades_to_schema_2_with_its_id_and_numbers():
    old = json.loads(LEGACY.read_text())
    assert old["schema"] == "lm-1"
    new = upgrade(old)
    run = RunConfig.from_dict(new["config"])
    assert new["schema"] == SCHEMA and run.run_id == new["run_id"] == old["run_id"]
    assert LEGACY.name == f"lm1-{run.name}-{run.run_id}.json"
    for k in ("config", "history", "final", "parameters", "name", "git_commit"):
        assert new[k] == old[k], k
    assert new["wall_time"] == old["cost"]["seconds"]
    assert new["cost"]["training_flops_per_sample"] == old["cost"]["training_flops_per_token"]
    assert new["cost"]["optimizer_state_bytes"] == 8 * old["parameters"]["total"]  # AdamW
    assert "diverged" not in new and upgrade(new) == new     # schema 2 is left as it is
    assert upgrade({**old, "diverged_iter": 500})["diverged"] == 500


@pytest.mark.filterwarnings("ignore:skipping corrupt record")
def test_migrating_a_folder_keeps_every_row_and_retrains_nothing(tmp_path, monkeypatch,
                                                               capsys):
    d = _legacy_dir(tmp_path)
    before = load_lm_records(d)          # the lm-1 records, upgraded as they are read
    assert len(before) == 3 and sorted(before.diverged_iter.dropna()) == [750]
    assert main(["migrate", str(d)]) == 0
    assert "2 records rewritten" in capsys.readouterr().out
    after = load_lm_records(d)
    assert after.drop(columns="path").equals(before.drop(columns="path"))
    records = [json.loads(p.read_text()) for p in d.glob("*-*.json")]
    assert len(records) == 3 and {r["schema"] for r in records} == {SCHEMA}
    assert (d / "notes.json").read_text() == "[1, 2]"
    assert migrate_dir(d) == []                                  # a second time: nothing
    # the one loader of every study reads them too, and the runner finds them all recorded
    assert len(load_records(d)) == 3 and load_records(d).diverged_step.notna().sum() == 1
    import lowrank_helpers.studies.reference as study

    def no_training(*a, **k):
        raise AssertionError("a migrated run was retrained")
    monkeypatch.setattr(study, "train_stacked", no_training)
    monkeypatch.setattr(study, "run_result", no_training)
    runs = [RunConfig.from_dict(r["config"]) for r in records]
    assert len(study.run_records(runs, d, progress=False)) == 3


def test_a_broken_legacy_record_is_named_and_migrate_refuses_a_missing_folder(tmp_path):
    bad = tmp_path / "x.json"
    bad.write_text(json.dumps({"schema": "lm-1", "run_id": "x", "config": {}}))
    with pytest.raises(ValueError, match="x.json of schema 'lm-1' cannot be read"):
        read_record(bad)
    with pytest.raises(SystemExit, match="not a folder: .*nosuch"):
        main(["migrate", str(tmp_path), str(tmp_path / "nosuch")])
    assert json.loads(bad.read_text())["schema"] == "lm-1"   # nothing written before refusing
