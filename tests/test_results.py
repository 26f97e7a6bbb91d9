import json
import os

import pytest

import lowrank_helpers.training.engine as engine_mod
import lowrank_helpers.studies.reference as study_mod
import lowrank_helpers.core.results as results_mod
from lowrank_helpers import (ResultsDirError, RunConfig, StudyConfig, TrainResult, epochs_frame,
                             load_records, make_record, read_record, run_study, save_record)
from lowrank_helpers.core.results import has_record, record_path


def fake_record(run: RunConfig, acc=0.5, diverged=None):
    history = [{"epoch": e, "test_accuracy": acc + e / 100, "test_loss": 1.0 / e,
                "train_loss": float("nan") if diverged == e else 1.5 / e, "seconds": 0.1}
               for e in range(1, (diverged or run.epochs) + 1)]
    result = TrainResult(history=history, init_test_accuracy=0.1, init_test_loss=2.3,
                         diverged_epoch=diverged, wall_time=0.3, device="cpu")
    return make_record(run, result, {"total": 123})


def test_record_round_trip(tmp_path):
    run = RunConfig(method="lora", rank=4, epochs=3, seed=2)
    record = fake_record(run)
    path = save_record(record, tmp_path)
    assert path == record_path(run, tmp_path) and read_record(path) == record
    assert record["config"] == run.to_dict()
    assert RunConfig.from_dict(record["config"]).run_id == run.run_id
    for key in ("versions", "device", "wall_time", "git_commit", "finished_at", "torch_threads"):
        assert key in record
    df = load_records(tmp_path)
    assert len(df) == 1
    row = df.iloc[0]
    assert (row.method, row["rank"], row.seed, row.params) == ("lora", 4, 2, 123)
    assert row.final_test_accuracy == pytest.approx(0.53)
    assert row.epoch1_test_accuracy == pytest.approx(0.51)
    long = epochs_frame(df)
    assert list(long.epoch) == [1, 2, 3] and set(long.method) == {"lora"}


def test_nan_is_stored_as_null_and_read_as_nan(tmp_path):
    run = RunConfig(method="ae", rank=2, epochs=5)
    path = save_record(fake_record(run, diverged=2), tmp_path)
    text = path.read_text()
    assert "NaN" not in text and json.loads(text)["diverged_epoch"] == 2
    df = load_records(tmp_path)
    assert df.diverged_epoch.iloc[0] == 2 and df.epochs_done.iloc[0] == 2


def test_filters(tmp_path):
    for rank in (1, 2, 4):
        save_record(fake_record(RunConfig(method="lora", rank=rank, epochs=1)), tmp_path)
    save_record(fake_record(RunConfig(method="full", epochs=1)), tmp_path)
    assert list(load_records(tmp_path, rank=[2, 4])["rank"]) == [2, 4]
    assert len(load_records(tmp_path, method="full")) == 1
    with pytest.raises(ValueError, match="unknown column 'rnak'"):
        load_records(tmp_path, rnak=2)


def test_corrupt_record_is_named_and_skipped(tmp_path):
    save_record(fake_record(RunConfig(method="full", epochs=1)), tmp_path)
    bad = tmp_path / "broken.json"
    bad.write_text('{"run_id": "x", "config": ')
    (tmp_path / "other.json").write_text('{"hello": 1}')
    with pytest.warns(UserWarning) as warned:
        df = load_records(tmp_path)
    assert len(df) == 1
    messages = sorted(str(w.message) for w in warned)
    assert len(messages) == 2 and "skipping corrupt record" in messages[0]
    assert "broken.json" in messages[0] and "other.json lacks run_id" in messages[1]


def test_atomic_write_keeps_old_file_on_failure(tmp_path, monkeypatch):
    run = RunConfig(method="full", epochs=1)
    path = save_record(fake_record(run, acc=0.1), tmp_path)
    before = path.read_text()

    real_fsync, calls = os.fsync, []

    def fsync_fails_once(fd):  # the temporary file is half written when the disk fills up
        calls.append(1)
        if len(calls) == 1:
            raise OSError("disk full")
        return real_fsync(fd)
    monkeypatch.setattr(results_mod.os, "fsync", fsync_fails_once)
    with pytest.raises(ResultsDirError, match="could not write .*disk full.*saved to") as err:
        save_record(fake_record(run, acc=0.9), tmp_path)
    assert path.read_text() == before  # the old record is intact
    assert not list(tmp_path.glob("*.tmp"))  # no temporary files left behind
    os.remove(str(err.value).split("saved to ")[1].split(" instead")[0])


def test_unwritable_results_dir_keeps_the_record(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    record = fake_record(RunConfig(method="full", epochs=1))
    with pytest.raises(ResultsDirError, match="saved to .*lowrank_helpers-unsaved") as err:
        save_record(record, blocker / "results")
    rescued = str(err.value).split("saved to ")[1].split(" instead")[0]
    assert read_record(rescued) == record
    os.remove(rescued)


def test_run_study_checks_results_dir_before_training(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setattr(study_mod, "run_one", lambda *a, **k: pytest.fail("trained"))
    with pytest.raises(ResultsDirError, match="cannot be written"):
        run_study(StudyConfig(results_dir=str(blocker / "results"), smoke=True), progress=False)


@pytest.mark.parametrize("engine", [False, True])
def test_run_study_resumes(tmp_path, monkeypatch, engine):
    """Ctrl-C during the second run (plain loop) or second stack (engine) keeps the first."""
    cfg = StudyConfig(methods=["full", "lora"], ranks=[1, 2], results_dir=str(tmp_path),
                      smoke=True, engine=engine)
    module, name = (engine_mod, "train_group") if engine else (study_mod, "run_result")
    real, calls = getattr(module, name), []

    def interrupted_on_second_call(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)
    monkeypatch.setattr(module, name, interrupted_on_second_call)
    with pytest.raises(KeyboardInterrupt):
        run_study(cfg, progress=False)
    kept = load_records(cfg.results_dir)
    assert len(kept) == 1 and kept.method.iloc[0] == "full"  # the first run or stack is kept

    trained = []
    monkeypatch.setattr(module, name, lambda *a, **k: (trained.append(1), real(*a, **k))[1])
    df = run_study(cfg, progress=False)
    assert len(df) == 3 and len(trained) == (1 if engine else 2)  # only what was missing
    trained.clear()
    assert len(run_study(cfg, progress=False)) == 3 and trained == []


def test_corrupt_record_is_redone(tmp_path):
    run = RunConfig(method="full", epochs=1)
    record_path(run, tmp_path).write_text("not json")
    with pytest.warns(UserWarning, match="unreadable record.*will be redone"):
        assert not has_record(run, tmp_path)
