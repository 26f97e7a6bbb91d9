"""A batch's jobs: a study's runs cut into notebook runs that a runner (local or Dask) can
execute, resume and report on."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from ..core.config import StudyConfig
from ..core.results import has_record, read_record, record_path
from ..methods import METHODS
from ..training.planning import stack_rank


@dataclass
class Job:
    """One notebook run of a study: the reference study's jobs are a dense method ("full") or
    a stack of ranks ("r001-r016"), whose runs are known in advance (``config.runs()``); a
    study that chooses its runs as it goes (a learning-rate search) plans none, and its job
    may write any run's record."""
    name: str
    config: object       # the notebook's parameters for this job (a NotebookParams config)

    def runs(self) -> list | None:
        return self.config.runs() if hasattr(self.config, "runs") else None

    def run_ids(self) -> set[str] | None:
        """The ids of the runs the job may write (None: any)."""
        runs = self.runs()
        return None if runs is None else {r.run_id for r in runs}

    def done(self) -> bool:
        """Every planned run is recorded (a job without planned runs is run again: it resumes
        from the records)."""
        runs = self.runs()
        return runs is not None and all(has_record(r, self.config.results_dir) for r in runs)

    def records(self) -> list[dict]:
        """The records it starts from (a job that stopped half way has some): those of its
        planned runs, or every record of the results folder."""
        runs, folder = self.runs(), Path(self.config.results_dir)
        if runs is not None:
            return [read_record(record_path(r, folder)) for r in runs if has_record(r, folder)]
        out = []
        for path in sorted(folder.glob("*.json")) if folder.is_dir() else ():
            try:
                out.append(read_record(path))
            except ValueError:
                pass
        return out


def plan_jobs(cfg: StudyConfig) -> list[Job]:
    """One job per dense method and one per stack of factorized ranks (ranks up to 16
    together, then one per power of two; all factorized methods and seeds in each), so that the
    engine can stack each job's models."""
    def job(name, methods, ranks):
        takes = any(METHODS[m].takes_init() for m in methods)
        return Job(name, dataclasses.replace(cfg, methods=tuple(methods), ranks=tuple(ranks),
                                             init=cfg.init if takes else None))
    jobs = [job(m, [m], []) for m in cfg.methods if not METHODS[m].takes_rank]
    factorized = [m for m in cfg.methods if METHODS[m].takes_rank]
    buckets: dict[int, list[int]] = {}
    for r in cfg.ranks:
        buckets.setdefault(stack_rank(r), []).append(r)
    for ranks in buckets.values() if factorized else ():
        name = f"r{ranks[0]:03d}" + (f"-r{ranks[-1]:03d}" if len(ranks) > 1 else "")
        jobs.append(job(name, factorized, ranks))
    return jobs
