"""The smoke batch on real Dask clusters on 127.0.0.1: a LocalCluster (``--scheduler local``),
and a scheduler with two workers started by hand as on several machines. Same records as the
local runner; a worker killed mid-job; a job past --job-timeout; Ctrl-C; a client killed; an
address where no scheduler answers."""
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import nbformat
import psutil
import pytest

from .test_batch import gone, notebook

pytest.importorskip("distributed", reason="the cluster extra: pip install -e '.[cluster]'")

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.notebook
SMOKE_RUNS = 5  # full-rank + (lora, ae) x ranks (1, 4)


@pytest.fixture(scope="module")
def scheduler(tmp_path_factory):
    """``dask scheduler`` and two ``dask worker`` processes, as a user starts them by hand."""
    tmp = tmp_path_factory.mktemp("dask")
    file = tmp / "scheduler.json"
    dask = [sys.executable, "-m", "distributed.cli.dask_scheduler"]
    procs = [subprocess.Popen([*dask, "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                               "--scheduler-file", str(file)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)]
    try:
        deadline = time.time() + 60
        while not file.exists() and time.time() < deadline:
            time.sleep(0.2)
        address = json.loads(file.read_text())["address"]
        for _ in range(2):
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "distributed.cli.dask_worker", address, "--nthreads",
                 "1", "--no-dashboard"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                start_new_session=True))
        from distributed import Client
        with Client(address, timeout=30) as client:
            client.wait_for_workers(2, timeout=120)
        yield address
    finally:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for proc in reversed(procs):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, sig)
            for proc in procs:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=30)


#: Runs its arguments with SIGINT at its default action. A child started from a background
#: job inherits SIGINT ignored (POSIX shells ignore it for background commands; Python then
#: installs no KeyboardInterrupt handler), so a suite run from such a job could never
#: interrupt it; a terminal's Ctrl-C reaches a process whose SIGINT has its default action.
CTRL_C_AS_AT_A_TERMINAL = [sys.executable, "-c", "import os, signal, sys; "
                           "signal.signal(signal.SIGINT, signal.SIG_DFL); "
                           "os.execv(sys.argv[1], sys.argv[1:])"]


@contextlib.contextmanager
def started(args, **kwargs):
    """``lowrank-study`` in the background, with SIGINT as at a terminal; killed if the test
    fails before it ends (its jobs then take their kernels down with them)."""
    proc = subprocess.Popen([*CTRL_C_AS_AT_A_TERMINAL, *args], cwd=ROOT, text=True, **kwargs)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def batch_args(tmp_path, *extra):
    return [sys.executable, "-m", "lowrank_helpers", "--smoke", "--ranks", "1", "4",
            "--no-summary", "--results-dir", str(tmp_path / "results"),
            "--runs-dir", str(tmp_path / "runs"), *extra]


def batch(tmp_path, *extra, timeout=600):
    return subprocess.run(batch_args(tmp_path, *extra), cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def histories(results: Path) -> dict:
    """Run id -> its epochs without their wall-clock seconds."""
    out = {}
    for path in results.glob("*.json"):
        record = json.loads(path.read_text())
        out[record["run_id"]] = [{k: v for k, v in h.items() if k != "seconds"}
                                 for h in record["history"]]
    return out


def study_with(tmp_path: Path, behaviour: str, before_training: bool = False) -> Path:
    """The study notebook with one cell more after training (or before it): it writes the
    kernel's pid into markers/<job>-<pid> (job: "full" or "stack") and then does
    ``behaviour``, which can see ``job`` and ``tries`` (how many times this job got that far
    before)."""
    markers = tmp_path / "markers"
    markers.mkdir(parents=True, exist_ok=True)
    nb = nbformat.read(ROOT / "notebooks" / "study.ipynb", as_version=4)
    at = next(i for i, c in enumerate(nb.cells) if "lh.run_study(cfg)" in c.source)
    at += 0 if before_training else 1
    nb.cells.insert(at, nbformat.v4.new_code_cell(
        "import os, time, pathlib, psutil\n"
        f"markers = pathlib.Path(r'{markers}')\n"
        "job = 'full' if 'full' in cfg.methods else 'stack'\n"
        "tries = len(list(markers.glob(f'{job}-*')))\n"
        "(markers / f'{job}-{os.getpid()}').write_text('')\n" + behaviour))
    path = tmp_path / "notebooks" / "study.ipynb"
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path


def kernels(tmp_path, job=None, count=1, within=240) -> list[int]:
    """The pids of the kernels that reached the extra cell (waiting for ``count`` of them)."""
    deadline = time.time() + within
    while time.time() < deadline:
        found = sorted((tmp_path / "markers").glob(f"{job or '*'}-*"))
        if len(found) >= count:
            return [int(p.name.split("-")[1]) for p in found]
        time.sleep(0.2)
    raise AssertionError(f"no kernel of job {job} reached the extra cell")


def kill_the_full_jobs_worker(proc, tmp_path):
    """Once the full-rank job's record is back and its kernel sleeps in the extra cell, kill
    the worker running it; then wait for the batch."""
    [kernel] = kernels(tmp_path, "full")
    results = tmp_path / "results" / "smoke"
    deadline = time.time() + 60  # its record is sent back before the extra cell runs
    while not list(results.glob("fashion_mnist-full-*.json")) and time.time() < deadline:
        time.sleep(0.2)
    worker = psutil.Process(kernel).parent().parent()  # kernel <- job process <- worker
    assert "dask_worker" in " ".join(worker.parent().cmdline())  # the worker's nanny
    worker.kill()
    out, err = proc.communicate(timeout=600)
    return out, err, kernel


def test_smoke_batch_on_both_clusters_writes_what_the_local_runner_writes(tmp_path, scheduler):
    """The local runner; a LocalCluster; the hand-started scheduler, where the worker running
    the full-rank job is killed after that job's record was sent back: it runs again, finds
    its record and trains nothing. All three write the same records."""
    local = batch(tmp_path / "local", "--jobs", "2")
    assert local.returncode == 0, local.stdout + local.stderr
    expected = histories(tmp_path / "local" / "results" / "smoke")
    assert len(expected) == SMOKE_RUNS

    out = batch(tmp_path / "dask-local", "--jobs", "2", "--scheduler", "local")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "on a local Dask cluster: 2 workers" in out.stdout
    assert f"{SMOKE_RUNS} records written into" in out.stdout
    assert histories(tmp_path / "dask-local" / "results" / "smoke") == expected

    hand = tmp_path / "by-hand"
    nb = study_with(hand, "if job == 'full' and tries == 0:\n    time.sleep(600)")
    with started(batch_args(hand, "--scheduler", scheduler, "--notebook", str(nb)),
                 stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        out, err, kernel = kill_the_full_jobs_worker(proc, hand)
    results = hand / "results" / "smoke"
    assert proc.returncode == 0, out + err
    assert "on the Dask cluster at tcp://127.0.0.1:" in out
    assert "full epoch 2/2" in err  # its progress, sent from the worker
    assert gone(kernel)  # the killed worker's job took its kernel down
    assert f"{SMOKE_RUNS} records written into" in out  # each once
    assert histories(results) == expected
    assert len(list((hand / "markers").glob("full-*"))) == 2  # it ran again ...
    rerun = next((hand / "runs" / "smoke").glob("study-fashion_mnist-full-*.ipynb"))
    assert "1 runs: 1 already recorded" in rerun.read_text()  # ... and trained nothing
    executed = sorted(p.name for p in (hand / "runs" / "smoke").iterdir())
    assert len([n for n in executed if n.endswith(".ipynb")]) == 2, executed
    assert not [n for n in executed if "failed" in n or "running" in n]

    again = batch(hand, "--scheduler", scheduler)  # resume: nothing to do
    assert again.returncode == 0 and "0 to run" in again.stdout


def tiny_notebook(tmp_path: Path, behaviour: str) -> Path:
    """A notebook that trains nothing: its parameters cell takes the study's ``methods``; then
    it does ``behaviour`` (seeing ``job``, "full" or "stack")."""
    return notebook(tmp_path / "notebooks" / "tiny.ipynb",
                    "import os, time, psutil\njob = 'full' if 'full' in methods else 'stack'\n"
                    + behaviour, parameters="methods = []")


def test_a_job_past_the_timeout_fails_alone_and_progress_shows(tmp_path):
    """(The local runner's timeout and progress: tests/test_batch.py.)"""
    runner = ["--scheduler", "local"]
    nb = tiny_notebook(tmp_path, "if job == 'full':\n"
                       "    from lowrank_helpers.batch.jobs import report_progress\n"
                       "    report_progress(1, 2)\n    time.sleep(600)")
    out = batch(tmp_path, "--jobs", "2", *runner, "--job-timeout", "25", "--notebook", str(nb))
    text = out.stdout + out.stderr
    assert out.returncode == 1, text
    assert "job full FAILED (timed out after 25 s)" in text
    assert "job r001-r004 done" in text and "failed: full" in text
    assert "full epoch 1/2" in out.stderr  # the progress bar showed how far it had got
    assert list((tmp_path / "runs" / "smoke").glob("study-fashion_mnist-full-*.failed.ipynb"))


def test_a_job_whose_worker_dies_more_often_than_allowed_is_reported_failed(tmp_path):
    nb = tiny_notebook(tmp_path, "if job == 'full':\n"
                       "    psutil.Process().parent().parent().kill()  # its worker\n"
                       "    time.sleep(600)")
    env = {**os.environ, "DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES": "0"}
    out = subprocess.run(batch_args(tmp_path, "--jobs", "2", "--scheduler", "local",
                                    "--notebook", str(nb)), cwd=ROOT, capture_output=True,
                         text=True, timeout=600, env=env)
    text = out.stdout + out.stderr
    assert out.returncode == 1, text
    assert "job full FAILED (KilledWorker: 1 tries, each ended by its worker's death (the " \
        "last on tcp://127.0.0.1:" in text and "failed: full" in text
    assert "job r001-r004 done" in text


def test_ctrl_c_cancels_the_jobs_on_the_cluster(tmp_path, scheduler):
    nb = study_with(tmp_path, "time.sleep(600)", before_training=True)
    with started(batch_args(tmp_path, "--scheduler", scheduler, "--notebook", str(nb)),
                 stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        running = kernels(tmp_path, count=2)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, out + err
    assert "interrupted: finished runs are kept" in err
    for kernel in running:  # stopped on the workers, which stay up
        assert gone(kernel, within=40)
    from distributed import Client
    with Client(scheduler, timeout=10) as client:
        assert len(client.scheduler_info()["workers"]) == 2
        assert not any(client.processing().values())  # nothing left running


@pytest.mark.parametrize("where", ["dask-local", "by-hand"])
def test_a_killed_client_leaves_no_kernel(tmp_path, where, request):
    """(The local runner's case: tests/test_batch.py, the job process whose runner dies.)"""
    runner = ["--scheduler", "local" if where == "dask-local"
              else request.getfixturevalue("scheduler")]
    nb = study_with(tmp_path, "time.sleep(600)", before_training=True)
    with started(batch_args(tmp_path, "--jobs", "2", *runner, "--notebook", str(nb)),
                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as proc:
        running = kernels(tmp_path, count=2)
        proc.kill()
        proc.wait()
    for kernel in running:
        assert gone(kernel, within=20)


def test_no_scheduler_at_the_address_fails_fast_and_clearly(tmp_path):
    with socket.socket() as s:  # a port where nothing listens
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.time()
    out = batch(tmp_path, "--scheduler", f"tcp://127.0.0.1:{port}")
    assert time.time() - start < 30
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert out.stderr.startswith(f"error: no Dask scheduler answers at tcp://127.0.0.1:{port}")
    assert "dask scheduler" in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_a_bad_address_or_timeout_or_no_dask_is_refused_in_one_line(tmp_path, capsys,
                                                                    monkeypatch):
    from lowrank_helpers.batch.cli import main
    assert main(["--smoke", "--scheduler", "myhost:8786", "--results-dir",
                 str(tmp_path)]) == 1
    assert "--scheduler 'myhost:8786' is not an address" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="--job-timeout must be > 0 seconds, got 0"):
        main(["--smoke", "--job-timeout", "0", "--results-dir", str(tmp_path)])
    monkeypatch.setitem(sys.modules, "distributed", None)  # as if the extra were not installed
    assert main(["--smoke", "--scheduler", "local", "--results-dir", str(tmp_path)]) == 1
    assert "--scheduler needs Dask: pip install -e '.[cluster]'" in \
        capsys.readouterr().err


def test_a_hanging_shutdown_step_is_left_behind_with_a_warning(capsys):
    """Ctrl-C must always return: a client call that hangs while shutting down is bounded."""
    from lowrank_helpers.batch.cluster import _bounded
    release = threading.Event()
    start = time.time()
    _bounded(release.wait, seconds=0.2)
    assert time.time() - start < 5
    assert "shutdown took over 0.2 s; left behind" in capsys.readouterr().err
    release.set()
    _bounded(lambda: 1 / 0, seconds=5)                 # an error while closing is not raised
    assert capsys.readouterr().err == ""
