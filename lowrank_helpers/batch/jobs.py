"""One job of a batch (a papermill run of a notebook) in a child process that can be timed out,
stopped, and followed epoch by epoch. (Which jobs a study has: :mod:`.plan`.)

The child (:func:`job_main`) runs papermill's ``execute_notebook`` and holds a pipe from whoever
started it on its stdin: when that pipe closes (the runner exited, or was killed with SIGKILL),
it kills its kernel and exits, so that no kernel trains on in the background. (The kernel also leaves when its parent dies: ipykernel
polls ``JPY_PARENT_PID``.) Training reports its epoch through a small file named by
``$LOWRANK_PROGRESS`` (:func:`report_progress`), which the runner reads once a second.

This module imports only the standard library (papermill in the child), so that the child and
training's progress reports start without loading the package's heavy parts.

Both runners, the local one (:class:`~lowrank_helpers.batch.runners.LocalRunner`, threads on
this machine) and the Dask one (:mod:`lowrank_helpers.batch.cluster`), run jobs through
:func:`run_job`.
"""
from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable


#: The file a kernel started by a batch runner writes its progress to (see report_progress).
PROGRESS_ENV = "LOWRANK_PROGRESS"
#: The last characters of a job's output kept for its report.
OUTPUT_TAIL = 20_000


def usable_cores() -> int:
    """The cores this process may run on (a SLURM or container allocation, not the machine's)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def report_progress(epoch: int, epochs: int) -> None:
    """Tell the batch runner that started this kernel, if one did, that training has finished
    ``epoch`` of ``epochs``: one small JSON file, replaced atomically; a no-op otherwise."""
    path = os.environ.get(PROGRESS_ENV)
    if not path:
        return
    try:
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            json.dump({"epoch": int(epoch), "epochs": int(epochs)}, f)
        os.replace(tmp, path)
    except OSError:  # progress is a courtesy: training goes on without it
        pass


@dataclass
class Outcome:
    """How a job ended: status "done", "failed", "timeout" or "interrupted"."""
    name: str
    status: str
    rc: int
    output: str = ""
    notebook: Path | None = None   # the executed notebook (``*.failed.ipynb`` if it failed)
    detail: str = ""               # why it failed, in words, where the exit code does not say

    @property
    def ok(self) -> bool:
        return self.status == "done"

    def report(self, tail: int = 3000, label: str | None = None) -> str:
        why = self.detail or f"exit {self.rc}"
        return f"{label or 'job ' + self.name} FAILED ({why}):\n{self.output[-tail:]}"


def _kill_tree(proc: subprocess.Popen, grace: float) -> None:
    """SIGINT (papermill then shuts its kernel down), then after ``grace`` seconds SIGKILL to
    the child and everything it started."""
    import psutil

    def tree():
        try:
            return psutil.Process(proc.pid).children(recursive=True)
        except psutil.Error:
            return []
    started = tree()
    try:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=grace)
    except (OSError, subprocess.TimeoutExpired):
        pass
    for p in [*started, *tree(), proc]:
        try:
            p.kill()
        except (OSError, psutil.Error):
            pass
    proc.wait()


def _read_progress(path: Path, last: dict | None) -> dict | None:
    """The progress file's content if it changed since ``last``, else None."""
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return None if info == last else info


def run_job(notebook: Path, out: Path, params: dict, *, name: str | None = None,
            env: dict | None = None, timeout: float | None = None,
            on_progress: Callable[[dict], None] | None = None,
            watch: Path | None = None, on_record: Callable[[Path], None] | None = None,
            stopped: Callable[[], bool] = lambda: False, grace: float = 20.0,
            poll: float = 1.0) -> Outcome:
    """Execute ``notebook`` with ``params`` into ``out`` in a child process (named
    ``*.running.ipynb`` until it ends, ``*.failed.ipynb`` if it fails; the parameters are kept
    beside it as ``*.params.json``).

    Once a second: ``on_progress({"epoch", "epochs"})`` when training reported a new epoch,
    ``on_record(path)`` for each new ``*.json`` under ``watch``, and the job is stopped
    (status "interrupted") if ``stopped()``, or after ``timeout`` seconds (status "timeout").
    """
    name = name or out.stem
    out.parent.mkdir(parents=True, exist_ok=True)
    params_file = out.with_suffix(".params.json")  # the job's exact parameters, kept
    params_file.write_text(json.dumps(params, indent=1))
    running = out.with_name(out.stem + ".running.ipynb")
    progress_file = out.with_suffix(".progress.json")
    progress_file.unlink(missing_ok=True)
    env = {**(os.environ if env is None else env), PROGRESS_ENV: str(progress_file)}
    seen = set(watch.rglob("*.json")) if watch is not None else set()

    def new_records():
        if watch is None:
            return
        for path in sorted(set(watch.rglob("*.json")) - seen):
            seen.add(path)
            if on_record is not None:
                on_record(path)

    # own session: a terminal's Ctrl-C reaches only the runner, which passes it on once
    proc = subprocess.Popen([sys.executable, "-c", _JOB_MAIN, str(notebook), str(running),
                             str(params_file)], env=env, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    tail: collections.deque[str] = collections.deque()
    size, lock = [0], threading.Lock()

    def read_output():
        for line in proc.stdout:
            with lock:
                tail.append(line)
                size[0] += len(line)
                while size[0] > OUTPUT_TAIL and len(tail) > 1:
                    size[0] -= len(tail.popleft())

    reader = threading.Thread(target=read_output, daemon=True)
    reader.start()
    status, detail, start, last = None, "", time.monotonic(), None
    try:
        while proc.poll() is None:
            try:
                proc.wait(timeout=poll)
                break
            except subprocess.TimeoutExpired:
                pass
            info = _read_progress(progress_file, last)
            if info is not None:
                last = info
                if on_progress is not None:
                    on_progress(info)
            new_records()
            if stopped():
                status = "interrupted"
            elif timeout is not None and time.monotonic() - start > timeout:
                status, detail = "timeout", f"timed out after {timeout:g} s"
            if status is not None:
                _kill_tree(proc, grace)
                break
        new_records()
    except BaseException:  # Ctrl-C where we run in the main thread, a callback that failed
        _kill_tree(proc, grace)
        running.unlink(missing_ok=True)
        raise
    finally:
        proc.stdin.close()  # the child's lifeline, no longer needed
        reader.join(timeout=5)  # (a kernel outliving papermill may hold the pipe a moment)
        if not reader.is_alive():
            proc.stdout.close()
        progress_file.unlink(missing_ok=True)
    rc = proc.returncode
    if status is None:
        status = "done" if rc == 0 else "failed"
    executed = None
    if status == "done":
        running.replace(out)
        executed = out
    elif status == "interrupted":
        running.unlink(missing_ok=True)  # interrupted, not failed: rerunning redoes it
    elif running.exists():
        executed = out.with_name(out.stem + ".failed.ipynb")
        running.replace(executed)
    with lock:
        output = "".join(tail)
    return Outcome(name, status, rc, output, executed, detail)


def _exit_when_parent_exits() -> None:
    """Block until stdin closes (the runner is gone), then kill our kernel and exit."""
    try:
        while os.read(0, 4096):  # unbuffered: holds no lock that would block our exit
            pass
    except OSError:
        pass
    import psutil
    for child in psutil.Process().children(recursive=True):
        try:
            child.kill()
        except psutil.Error:
            pass
    os._exit(137)


#: The job's child process: ``python -c _JOB_MAIN NOTEBOOK OUT PARAMS_JSON``.
_JOB_MAIN = "import sys; from lowrank_helpers.batch.jobs import job_main; sys.exit(job_main(sys.argv[1:]))"


def job_main(argv: list[str]) -> int:
    """Execute a notebook as a batch runner's child, with the runner's pipe on stdin."""
    notebook, out, params = argv
    threading.Thread(target=_exit_when_parent_exits, daemon=True).start()
    import traceback

    import papermill
    try:
        papermill.execute_notebook(notebook, out, parameters=json.loads(Path(params).read_text()),
                                   kernel_name="python3", cwd=str(Path(notebook).parent),
                                   progress_bar=False)
    except KeyboardInterrupt:
        print("interrupted", flush=True)
        return 130
    except Exception:  # the failing cell's traceback: the runner shows the tail
        traceback.print_exc(file=sys.stdout)
        return 1
    return 0

