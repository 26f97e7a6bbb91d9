"""What a new user trips on in ``lowrank-study tune`` and ``lowrank-study lm`` (issue 19,
point 8): every setting given is the setting used, smoke mode never overrides one silently,
bad input is one line that says what is accepted, and nothing is left behind."""
import json
import os
import urllib.error
import warnings
from pathlib import Path

import pytest

from lowrank_helpers.batch.cli import main
from lowrank_helpers.studies.lm import LMStudyConfig, load_lm_records
from lowrank_helpers.studies.tuned import TunedConfig


def _one_line_error(capsys, argv, message, code=None):
    """The command fails with one line naming ``message``, and no traceback."""
    try:
        rc = main(argv)
    except SystemExit as exc:  # argparse's p.error
        rc = exc.code
    err = capsys.readouterr().err
    assert rc not in (0, None) and (code is None or rc == code), (rc, err)
    assert message in err, err
    assert "Traceback" not in err
    lines = [l for l in err.strip().splitlines() if l.startswith("error") or "error:" in l]
    assert len(lines) == 1, err
    return err


# -- settings given are settings used ---------------------------------------------------------

def test_tune_keeps_the_protocol_fields_it_declares():
    cfg = TunedConfig.from_params({"epochs": 1, "train_subset": 512, "test_subset": 256,
                                   "val_size": 64})
    assert (cfg.epochs, cfg.train_subset, cfg.test_subset, cfg.val_size) == (1, 512, 256, 64)
    assert cfg.protocol("sgd").epochs == 1 and cfg.protocol("sgd").train_subset == 512
    with pytest.raises(TypeError, match="epochs must be int"):
        TunedConfig.from_params({"epochs": "ten"})


def test_lm_keeps_its_batch_size():
    cfg = LMStudyConfig.from_params({"batch_size": 7})
    assert cfg.batch_size == 7 and cfg.protocol(1e-3).batch_size == 7
    with pytest.raises(TypeError, match="batch_size must be int"):
        LMStudyConfig.from_params({"batch_size": "ten"})


def test_smoke_never_overrides_a_setting_silently():
    with pytest.raises(ValueError, match="smoke mode sets iters itself .iters=50 would be ignored.: drop it"):
        LMStudyConfig.from_params({"smoke": True, "corpus": "tinyshakespeare", "iters": 50})
    with pytest.raises(ValueError, match="smoke mode sets ranks"):
        LMStudyConfig.from_params({"smoke": True, "ranks": [16]})
    with pytest.raises(ValueError, match="smoke mode sets epochs"):
        TunedConfig.from_params({"smoke": True, "epochs": 5})
    # the defaults (as the notebooks' parameters cells spell them out) are smoke's to shrink
    cfg = LMStudyConfig.from_params({"smoke": True, "iters": 2000, "corpus": "tinyshakespeare"})
    assert cfg.corpus == "python_stdlib" and cfg.iters < 2000


def test_lm_smoke_trains_each_run_once(tmp_path, monkeypatch):
    """The command trains, then its notebook reads the same runs: one record per run (run as
    a user runs it, without the tests' $LOWRANK_SMOKE)."""
    monkeypatch.delenv("LOWRANK_SMOKE", raising=False)
    rc = main(["lm", "--smoke", "--results-dir", str(tmp_path / "r"), "--runs-dir",
               str(tmp_path / "runs"), "--img-dir", str(tmp_path / "img"),
               "--data-root", str(tmp_path / "data"), "--phases", "anchor", "search"])
    assert rc == 0
    records = list((tmp_path / "r" / "smoke").glob("*.json"))
    batches = {json.loads(p.read_text())["config"]["protocol"]["batch_size"] for p in records}
    assert len(batches) == 1, batches
    runs = load_lm_records(tmp_path / "r" / "smoke")
    assert runs.run_id.is_unique


# -- learning rates -----------------------------------------------------------------------------

def test_lrs_off_the_ladder_extend_geometrically_and_nan_is_named():
    from lowrank_helpers.studies.search import search
    from tests.test_search import MODEL, Study
    study = Study(lambda lr, seed: -lr)                    # the choice sits at the top edge
    c = search([MODEL], {MODEL.model_key: (0.002, 0.004)}, study.train, study.records,
               max_extend=1)[MODEL.model_key]
    assert c.tried == pytest.approx((0.002, 0.004, 0.008))
    with pytest.raises(ValueError, match="lrs must be a finite number"):
        LMStudyConfig.from_params({"lrs": [float("nan")]})


def test_lm_command_bad_lrs_is_one_line(capsys):
    _one_line_error(capsys, ["lm", "--lrs", "nan", "--no-notebook"], "lrs must be a finite number")


# -- one line instead of a traceback --------------------------------------------------------------

def test_tune_unknown_task_and_device_are_one_line(capsys):
    _one_line_error(capsys, ["tune", "--task", "nosuch", "--no-notebook"],
                    "unknown task 'nosuch'; valid tasks: fashion_mnist")
    _one_line_error(capsys, ["tune", "--device", "nosuch", "--no-notebook"],
                    "unknown device 'nosuch'")


def test_bad_corpus_files_are_one_line(tmp_path, capsys):
    bad = tmp_path / "bad" / "tinyshakespeare"
    bad.mkdir(parents=True)
    (bad / "input.txt").write_text("hello")
    _one_line_error(capsys, ["lm", "--data-root", str(tmp_path / "bad"), "--no-notebook",
                             "--results-dir", str(tmp_path / "r")], "has md5", code=1)
    empty = tmp_path / "empty" / "python_stdlib"
    empty.mkdir(parents=True)
    (empty / "stdlib.txt").write_text("")
    _one_line_error(capsys, ["lm", "--smoke", "--data-root", str(tmp_path / "empty"),
                             "--no-notebook", "--results-dir", str(tmp_path / "r")],
                    "is empty", code=1)


def test_lm_unwritable_results_dir_is_one_line(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    _one_line_error(capsys, ["lm", "--smoke", "--no-notebook", "--results-dir",
                             str(blocker / "r"), "--data-root", str(tmp_path / "data")],
                    "cannot be written", code=1)


def test_a_record_with_an_empty_config_is_named_and_skipped(tmp_path):
    good = tmp_path / "r"
    assert main(["lm", "--smoke", "--no-notebook", "--results-dir", str(good),
                 "--data-root", str(tmp_path / "data"), "--phases", "anchor"]) == 0
    n = len(load_lm_records(good / "smoke"))
    bad = good / "smoke" / "broken.json"
    bad.write_text(json.dumps({"schema": "lm-1", "run_id": "x", "config": {}}))
    with pytest.warns(UserWarning, match="broken.json"):
        runs = load_lm_records(good / "smoke")
    assert len(runs) == n


def test_ctrl_c_while_the_lm_notebook_runs_is_one_line(tmp_path, capsys, monkeypatch):
    import lowrank_helpers.batch.presets as presets

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(presets, "run_job", interrupted)
    rc = main(["lm", "--smoke", "--results-dir", str(tmp_path / "r"), "--runs-dir",
               str(tmp_path / "runs"), "--data-root", str(tmp_path / "data"),
               "--phases", "anchor"])
    err = capsys.readouterr().err
    assert rc == 130 and "interrupted" in err and "Traceback" not in err


def test_table_reads_language_model_records():
    root = Path(__file__).resolve().parent.parent
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no record may be called corrupt
        rc = main(["table", "--results-dir", str(root / "results" / "shakespeare_char")])
    assert rc == 0


def test_table_of_lm_records_prints_the_lm_table(capsys):
    root = Path(__file__).resolve().parent.parent
    main(["table", "--results-dir", str(root / "results" / "shakespeare_char")])
    out = capsys.readouterr().out
    assert "dense d=128" in out and "held-out loss" in out


# -- ranks a layer cannot hold ------------------------------------------------------------------

def test_a_rank_no_layer_can_hold_is_refused():
    with pytest.raises(ValueError, match="rank 1000 .* d_model 16"):
        LMStudyConfig.from_params({"ranks": [1000], "d_model": 16})
    with pytest.raises(ValueError, match="rank 1000"):
        TunedConfig.from_params({"ranks": [1000]})
    from lowrank_helpers import RunConfig
    with pytest.raises(ValueError, match="rank 600 exceeds"):
        RunConfig(method="lora", rank=600)
    # the reference study's output layer (512 -> 10) at rank 16: meant, and allowed
    assert RunConfig(method="lora", rank=16).rank == 16


# -- words and folders --------------------------------------------------------------------------

def test_unknown_corpus_names_the_corpora():
    with pytest.raises(ValueError, match="valid corpora: tinyshakespeare"):
        LMStudyConfig.from_params({"corpus": "nosuch"})


def test_a_failed_lookup_leaves_no_empty_folder(tmp_path, monkeypatch):
    from lowrank_helpers.tasks import text
    from lowrank_helpers.tasks.images_data import DataNotFoundError

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")
    monkeypatch.setattr(text.urllib.request, "urlopen", offline)
    with pytest.raises(DataNotFoundError):
        text.corpus_path("tinyshakespeare", tmp_path)
    assert not (tmp_path / "tinyshakespeare").exists()
    assert os.listdir(tmp_path) == []
