"""One job in its child process (lowrank_helpers.batch.jobs.run_job), on tiny notebooks: progress,
records as they appear, a timeout, a stop, and no kernel left behind by any of them."""
import json
import time
from pathlib import Path

import nbformat
import psutil
import pytest

from lowrank_helpers.batch.jobs import PROGRESS_ENV, report_progress, run_job

pytestmark = pytest.mark.notebook


def notebook(path: Path, *cells: str, parameters: str | None = None) -> Path:
    """A notebook of ``cells``, after a papermill ``parameters`` cell if one is given."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell(c) for c in cells]
    if parameters is not None:
        nb.cells.insert(0, nbformat.v4.new_code_cell(parameters))
        nb.cells[0].metadata["tags"] = ["parameters"]
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path


def kernel_pid_cell(marker: Path) -> str:
    return f"import os, time\nopen(r'{marker}', 'w').write(str(os.getpid()))"


def gone(pid: int, within: float = 15.0) -> bool:
    deadline = time.time() + within
    while time.time() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.2)
    return False


def test_report_progress_writes_only_when_asked(tmp_path, monkeypatch):
    monkeypatch.delenv(PROGRESS_ENV, raising=False)
    report_progress(1, 2)  # no runner: nothing, no error
    assert not list(tmp_path.iterdir())
    monkeypatch.setenv(PROGRESS_ENV, str(tmp_path / "p.json"))
    report_progress(3, 10)
    assert json.loads((tmp_path / "p.json").read_text()) == {"epoch": 3, "epochs": 10}
    assert [p.name for p in tmp_path.iterdir()] == ["p.json"]  # no temporary file left


def test_progress_and_records_reach_the_runner_while_the_job_runs(tmp_path):
    watch = tmp_path / "results"
    watch.mkdir()
    (watch / "old.json").write_text("{}")  # there before: not reported
    nb = notebook(tmp_path / "nb.ipynb",
                  "import time\nfrom lowrank_helpers.batch.jobs import report_progress",
                  "report_progress(1, 3); time.sleep(1.5)",
                  f"open(r'{watch / 'new.json'}', 'w').write('{{}}')\n"
                  "report_progress(2, 3); time.sleep(1.5)",
                  "x = 41 + 1\nx")
    seen, records = [], []
    out = run_job(nb, tmp_path / "runs" / "nb.ipynb", {}, on_progress=seen.append,
                  watch=watch, on_record=records.append, poll=0.2)
    assert out.ok and out.rc == 0, out.output
    assert {"epoch": 1, "epochs": 3} in seen and {"epoch": 2, "epochs": 3} in seen
    assert records == [watch / "new.json"]
    executed = out.notebook.read_text()
    assert out.notebook == tmp_path / "runs" / "nb.ipynb" and "42" in executed
    assert not list((tmp_path / "runs").glob("*.running.ipynb"))
    assert not list((tmp_path / "runs").glob("*.progress.json"))
    assert json.loads((tmp_path / "runs" / "nb.params.json").read_text()) == {}


def test_a_failing_cell_fails_the_job_with_its_error(tmp_path):
    nb = notebook(tmp_path / "nb.ipynb", "raise ValueError('no such rank: 0')")
    out = run_job(nb, tmp_path / "runs" / "nb.ipynb", {})
    assert out.status == "failed" and out.rc == 1
    assert "no such rank: 0" in out.output
    assert out.notebook.name == "nb.failed.ipynb" and out.notebook.exists()
    assert "job nb FAILED (exit 1)" in out.report()


def test_a_job_past_its_timeout_is_stopped_with_its_kernel(tmp_path):
    marker = tmp_path / "kernel.pid"
    nb = notebook(tmp_path / "nb.ipynb", kernel_pid_cell(marker), "time.sleep(600)")
    start = time.time()
    out = run_job(nb, tmp_path / "runs" / "nb.ipynb", {}, timeout=12, poll=0.2, grace=5)
    assert out.status == "timeout" and out.detail == "timed out after 12 s"
    assert time.time() - start < 60
    assert gone(int(marker.read_text()))
    assert out.notebook.name == "nb.failed.ipynb"  # what it had done is kept
    assert "job nb FAILED (timed out after 12 s)" in out.report()


def test_a_stopped_job_leaves_neither_kernel_nor_notebook(tmp_path):
    marker = tmp_path / "kernel.pid"
    nb = notebook(tmp_path / "nb.ipynb", kernel_pid_cell(marker), "time.sleep(600)")
    out = run_job(nb, tmp_path / "runs" / "nb.ipynb", {}, poll=0.2, grace=5,
                  stopped=lambda: marker.exists())
    assert out.status == "interrupted"
    assert gone(int(marker.read_text()))
    assert not list((tmp_path / "runs").glob("*.ipynb"))  # rerunning redoes it


def test_the_job_process_takes_its_kernel_down_when_its_runner_dies(tmp_path):
    """The child reads the runner's pipe; when the runner is SIGKILLed, the pipe closes."""
    import subprocess
    import sys
    marker = tmp_path / "kernel.pid"
    nb = notebook(tmp_path / "nb.ipynb", kernel_pid_cell(marker), "time.sleep(600)")
    runner = subprocess.Popen([sys.executable, "-c", (
        "import sys; from pathlib import Path; from lowrank_helpers.batch.jobs import run_job\n"
        f"run_job(Path(r'{nb}'), Path(r'{tmp_path / 'runs' / 'nb.ipynb'}'), {{}})")])
    deadline = time.time() + 120
    while not (marker.exists() and marker.read_text()) and time.time() < deadline:
        time.sleep(0.2)
    pid = int(marker.read_text())
    runner.kill()
    runner.wait()
    assert gone(pid)


def test_a_failing_callback_stops_the_job_and_its_kernel(tmp_path):
    """Whatever goes wrong in the runner (Ctrl-C where it runs in the main thread, a callback
    that raises) takes the job down with it and leaves no half-written notebook."""
    marker = tmp_path / "kernel.pid"
    nb = notebook(tmp_path / "nb.ipynb", kernel_pid_cell(marker),
                  "from lowrank_helpers.batch.jobs import report_progress\nreport_progress(1, 2)\n"
                  "time.sleep(600)")

    def broken(info):
        raise RuntimeError("the display broke")
    with pytest.raises(RuntimeError, match="the display broke"):
        run_job(nb, tmp_path / "runs" / "nb.ipynb", {}, on_progress=broken, poll=0.2, grace=5)
    assert gone(int(marker.read_text()))
    assert not list((tmp_path / "runs").glob("*.ipynb"))
    assert not list((tmp_path / "runs").glob("*.progress.json"))


def test_the_dask_client_writes_each_asked_record_once(tmp_path, capsys):
    """DaskRunner.take, without a cluster: a record of a run the job was given is written once
    (a corrupt file in its place is replaced); one it was not given is refused."""
    pytest.importorskip("distributed")
    from lowrank_helpers import RunConfig
    from lowrank_helpers.batch.cluster import DaskRunner

    from .test_results import fake_record
    asked, other = RunConfig(method="full", epochs=1), RunConfig(method="full", epochs=2)
    records = [fake_record(r, acc=0.5) for r in (asked, other)]
    runner = DaskRunner("local", results_dir=tmp_path)
    runner.expected["full"] = {asked.run_id}
    path = tmp_path / f"{asked.name}-{asked.run_id}.json"
    path.write_text('{"partial": ')  # a record cut short by a crash
    runner.take("full", records[0])
    runner.take("full", records[0])  # the same record again (a retry, the final result)
    runner.take("full", records[1])
    assert runner.written == 1 and json.loads(path.read_text())["run_id"] == asked.run_id
    assert runner.refused == {"full": {other.run_id}}  # the job will be reported failed
    assert [p.name for p in tmp_path.glob("*.json")] == [path.name]
    assert "sent back a record of a run it was not given" in capsys.readouterr().err
