"""The papermill batch through the command line, in smoke mode on the synthetic test data."""
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lowrank_helpers import count_parameters, load_records

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.notebook


def cli(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "lowrank_helpers", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=600, **kwargs)


def dirs(tmp_path):
    return ["--results-dir", str(tmp_path / "results"), "--runs-dir", str(tmp_path / "runs"),
            "--img-dir", str(tmp_path / "img")]


def test_smoke_batch_interrupted_then_resumed(tmp_path):
    args = [sys.executable, "-m", "lowrank_helpers", "--smoke", "--ranks", "1", "4",
            *dirs(tmp_path)]
    results = tmp_path / "results" / "smoke"
    # a kill in the middle of the batch: stop as soon as the first job's record is written
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    deadline = time.time() + 300
    while not list(results.glob("*.json")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, output
    assert "interrupted: finished runs are kept" in output
    kept = {p.name for p in results.glob("*.json")}
    assert kept and len(kept) < 5

    # the rerun resumes: what was recorded is not redone
    rerun_start = time.time()
    done = cli("--smoke", "--ranks", "1", "4", "--jobs", "2", *dirs(tmp_path))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 done already" in done.stdout
    assert kept <= {p.name for p in results.glob("*.json")}

    runs = load_records(results)
    assert len(runs) == 5  # full-rank + (lora, ae) x ranks (1, 4)
    assert set(zip(runs.method, runs["rank"].fillna(0))) == {
        ("full", 0), ("lora", 1), ("lora", 4), ("ae", 1), ("ae", 4)}
    assert (runs.epochs_done == 2).all() and (runs.train_subset == 1024).all()
    for row in runs.itertuples():
        rank = None if row.method == "full" else int(row.rank)
        assert row.params == count_parameters(row.method, rank)["total"]
    full = runs[runs.method == "full"].iloc[0]
    assert full.final_test_loss < full.init_test_loss  # it learned something

    runs_dir = tmp_path / "runs" / "smoke"
    executed = sorted(p.name for p in runs_dir.glob("*.ipynb"))
    # two jobs: full-rank, and one stack of ranks 1 and 4; the rerun ran only the second (the
    # first run may have finished the full-rank notebook before the kill landed, on a busy CPU)
    assert any(n.startswith("study-fashion_mnist-r001-r004-") for n in executed)
    for full_nb in runs_dir.glob("study-fashion_mnist-full-*.ipynb"):
        assert full_nb.stat().st_mtime < rerun_start, "the rerun redid the full-rank job"
    assert any(n.startswith("summary-") for n in executed)
    assert not [n for n in executed if "failed" in n]
    params = json.loads(next(runs_dir.glob("study-*-r001-r004-*.params.json")).read_text())
    assert params["ranks"] == [1, 4] and params["methods"] == ["lora", "ae"]
    assert params["engine"] is True
    assert set(runs.engine) == {"stacked"} and set(runs.stack_size) == {1, 4}
    figures = {p.name for p in (tmp_path / "img" / "smoke").glob("*.png")}
    assert {"fashion_mnist_all.png", "fashion_mnist_accuracy_vs_rank.png"} <= figures

    again = cli("--smoke", "--ranks", "1", "4", "--no-summary", *dirs(tmp_path))
    assert again.returncode == 0 and "0 to run" in again.stdout

    table = cli("table", "--results-dir", str(results))
    assert table.returncode == 0 and "| full-rank MLP" in table.stdout


def test_misspelled_notebook_parameter_fails_clearly(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "papermill", "notebooks/study.ipynb", str(tmp_path / "o.ipynb"),
         "-p", "rnaks", "4", "-p", "results_dir", str(tmp_path), "--cwd", "notebooks"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode != 0
    assert "unknown parameter(s) 'rnaks' (did you mean 'ranks'?)" in out.stdout + out.stderr
    assert not list(tmp_path.glob("*.json"))  # nothing was trained


@pytest.mark.parametrize("name, value, message", [
    ("epochs", "ten", "epochs must be int, got 'ten'"),
    ("lr", "nan", "lr must be a finite number, got nan"),
    ("seeds", "[0, 0]", "seeds lists 0 more than once"),
])
def test_ill_typed_notebook_parameter_fails_clearly(tmp_path, name, value, message):
    out = subprocess.run(
        [sys.executable, "-m", "papermill", "notebooks/study.ipynb", str(tmp_path / "o.ipynb"),
         "-p" if name != "seeds" else "-y", *([name, value] if name != "seeds"
                                              else [f"{name}: {value}"]),
         "-p", "results_dir", str(tmp_path), "--cwd", "notebooks"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode != 0
    assert message in out.stdout + out.stderr
    assert not list(tmp_path.glob("*.json"))  # nothing was trained


@pytest.mark.parametrize("args, message", [
    (["--methods", "full", "lowrank"], "unknown method 'lowrank'; valid methods: full, lora, ae"),
    (["--ranks", "0"], "rank must be an integer >= 1, got 0"),
    (["--init", "xavier"], "unknown init 'xavier'; valid inits"),
    (["--optimizer", "adam"], "unknown optimizer 'adam'"),
    (["--jobs", "0"], "--jobs must be >= 1"),
    (["--task", "cifar"], "unknown task 'cifar'; valid tasks: fashion_mnist, mnist"),
    (["--lr", "nan"], "lr must be a finite number, got nan"),
    (["--lr", "inf"], "lr must be a finite number, got inf"),
    (["--lr", "-0.1"], "lr must be > 0, got -0.1"),
    (["--epochs", "0"], "epochs must be > 0, got 0"),
    (["--seeds", "0", "1", "0"], "seeds lists 0 more than once"),
    (["--ranks", "4", "8", "4"], "ranks lists 4 more than once"),
    (["--methods", "full", "ae", "--init", "he"],
     "init 'he' applies to method(s) lora, densehead"),   # and every other method taking one
    (["--figures-dir", "DIR"], "unrecognized arguments: --figures-dir DIR"),
    (["tabel"], "unknown command 'tabel' (choose from run, table, readme, tune, lm)"),
])
def test_bad_command_line(tmp_path, args, message):
    """Refused in one line before any job starts (nothing written)."""
    out = cli(*args, *dirs(tmp_path))
    assert out.returncode != 0 and message in out.stderr, out.stderr
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "runs").exists() and not (tmp_path / "results").exists()


def test_unwritable_results_dir_is_one_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    out = cli("--smoke", "--results-dir", str(blocker / "results"), "--runs-dir",
              str(tmp_path / "runs"))
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert out.stderr.strip().startswith("error: results directory") and \
        len(out.stderr.strip().splitlines()) == 1, out.stderr


def test_every_setting_has_a_flag():
    """The study's and the protocol's settings are the command line's flags: none forgotten."""
    from lowrank_helpers import Protocol, StudyConfig
    from lowrank_helpers.batch.cli import build_parser, study_config
    from lowrank_helpers.core.settings import settings_of
    dests = {a.dest for a in build_parser()._actions}
    for cls in (StudyConfig, Protocol):
        for f in settings_of(cls):
            assert f.name in dests, f"no flag for {cls.__name__}.{f.name}"
    args = build_parser().parse_args(["--weight-decay", "0", "--momentum", "0", "--no-shuffle",
                                      "--schedule", "constant", "--val-size", "0"])
    for name in ("results_dir", "runs_dir", "img_dir"):
        setattr(args, name, getattr(args, name) or "results")
    assert study_config(args).runs() == StudyConfig(results_dir=str(Path("results").resolve())
                                                    ).runs()


def test_a_yaml_parameter_file_with_integer_zeros_retrains_nothing(tmp_path):
    """papermill with the reference protocol written as YAML naturally writes it (``momentum:
    0``, ``lr: 1e-3``): the notebook finds the shipped records and trains nothing."""
    import os
    import shutil
    results = tmp_path / "results"
    results.mkdir()
    shipped = sorted(ROOT.glob("results/fashion_mnist-full-s*.json"))
    for path in shipped:
        shutil.copy(path, results)
    before = {p.name: p.read_bytes() for p in results.iterdir()}
    params = tmp_path / "params.yaml"
    params.write_text(f"methods: [full]\nmomentum: 0\nweight_decay: 0\nlr: 1e-3\n"
                      f"batch_size: 64\nepochs: 100\nresults_dir: {results}\n")
    env = {k: v for k, v in os.environ.items() if k != "LOWRANK_SMOKE"}  # the real protocol
    env["LOWRANK_DATA"] = str(tmp_path / "no-data")  # training would fail: there is nothing
    out = subprocess.run(
        [sys.executable, "-m", "papermill", "notebooks/study.ipynb", str(tmp_path / "o.ipynb"),
         "-f", str(params), "--cwd", "notebooks"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    executed = (tmp_path / "o.ipynb").read_text()
    assert f"{len(shipped)} runs: {len(shipped)} already recorded" in executed
    assert {p.name: p.read_bytes() for p in results.iterdir()} == before
