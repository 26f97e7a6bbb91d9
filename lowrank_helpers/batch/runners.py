"""The runners of a batch's jobs: :class:`LocalRunner` (this machine, jobs at a time in child
processes) beside :class:`~lowrank_helpers.batch.cluster.DaskRunner`, and what drives either:
:class:`JobSpec` (one job to run), :func:`run_specs` with its :class:`JobProgress` bar,
:func:`make_runner` and :func:`config_tag`. One job itself runs through
:func:`~lowrank_helpers.batch.jobs.run_job`.
"""
from __future__ import annotations

import contextlib
import json
import os
import threading
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from .jobs import Outcome, run_job, usable_cores
from .plan import Job


@dataclass
class JobSpec:
    """One job to run: its name, its notebook and parameters, and where its executed notebook
    goes (the runner's runs directory)."""
    job: Job
    notebook: Path
    out: Path
    params: dict = field(default_factory=dict)


class LocalRunner:
    """Jobs on this machine, ``jobs`` at a time, each in its own child process; the cores are
    shared among the jobs (``OMP_NUM_THREADS``) instead of oversubscribed."""

    def __init__(self, jobs: int = 1, timeout: float | None = None):
        self.jobs, self.timeout = jobs, timeout
        self.env = dict(os.environ)
        if jobs > 1:
            self.env["OMP_NUM_THREADS"] = str(max(1, usable_cores() // jobs))
        self._stop = threading.Event()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()

    def describe(self) -> str:
        return f"{self.jobs} at a time on this machine"

    def summary(self) -> str:
        return ""  # the notebooks write their records themselves

    def prepare(self, task_prepare: Callable[[], None]) -> None:
        task_prepare()  # once, here: parallel jobs must not race to download the data

    def run(self, specs: list[JobSpec], on_progress: Callable[[str, dict], None]
            ) -> Iterator[Outcome]:
        pool = ThreadPoolExecutor(max_workers=self.jobs)
        futures = [pool.submit(self._run_one, s, on_progress) for s in specs]
        try:
            for fut in as_completed(futures):
                yield fut.result()
        finally:
            for fut in futures:
                fut.cancel()
            self.stop()
            pool.shutdown(wait=True)

    def _run_one(self, spec: JobSpec, on_progress) -> Outcome:
        if self._stop.is_set():
            return Outcome(spec.job.name, "interrupted", 130, "not started: interrupted")
        return run_job(spec.notebook, spec.out, spec.params, name=spec.job.name, env=self.env,
                       timeout=self.timeout, stopped=self._stop.is_set,
                       on_progress=lambda info: on_progress(spec.job.name, info))

    def stop(self) -> None:
        """Stop every running job (each is interrupted, then killed after a grace period)."""
        self._stop.set()


def make_runner(jobs: int = 1, scheduler: str | None = None, timeout: float | None = None,
                results_dir="results"):
    """The local runner of ``jobs`` at a time, or the Dask one for ``scheduler`` (an address,
    or "local"; it connects on entering)."""
    if scheduler is None:
        return LocalRunner(jobs, timeout)
    from .cluster import DaskRunner
    return DaskRunner(scheduler, jobs, timeout, results_dir)


def config_tag(cfg) -> str:
    """A short hash of a study's parameters: its executed notebooks' names."""
    import hashlib
    return hashlib.sha1(json.dumps(cfg.to_dict(), sort_keys=True).encode()).hexdigest()[:6]


def run_specs(runner, specs: list["JobSpec"]) -> list[str]:
    """Run ``specs`` on ``runner`` under a :class:`JobProgress` bar, saying how each ended and
    what the runner wrote; returns the names of the jobs that failed."""
    failed = []
    progress = JobProgress(len(specs))
    with contextlib.closing(runner.run(specs, progress.update)) as outcomes:
        for outcome in outcomes:
            progress.finish(outcome)
            if not outcome.ok:
                failed.append(outcome.name)
    progress.close()
    if runner.summary():
        print(runner.summary())
    return failed


class JobProgress:
    """A tqdm bar of the jobs done; after it, the epoch each running job's current stack has
    reached (``r001-r016 epoch 37/100``). Safe to update from any thread."""

    def __init__(self, total: int):
        from tqdm.auto import tqdm
        self.bar = tqdm(total=total, desc="jobs", unit="job")
        self.running: dict[str, str] = {}
        self.finished: set[str] = set()  # a late report of a finished job is not shown
        self.lock = threading.Lock()

    def _show(self) -> None:
        self.bar.set_postfix_str(" · ".join(self.running.values()))

    def update(self, name: str, info: dict) -> None:
        with self.lock:
            if name not in self.finished:
                self.running[name] = f"{name} epoch {info['epoch']}/{info['epochs']}"
                self._show()

    def finish(self, outcome: Outcome) -> None:
        with self.lock:
            self.finished.add(outcome.name)
            self.running.pop(outcome.name, None)
            self._show()
            self.bar.update()
            self.bar.write(f"job {outcome.name} done" if outcome.ok else outcome.report())

    def close(self) -> None:
        self.bar.close()
