"""The studies as presets of the one batch runner: ``lowrank-study tune``, ``lowrank-study lm``
and ``lowrank-study extensions``.

A preset is a study's config (its notebook's parameters), the function that trains what its
records lack, how the study splits into jobs (:func:`~lowrank_helpers.studies.tuned.plan_jobs`: one per
optimizer; :func:`~lowrank_helpers.studies.lm.plan_jobs`: one per group of phases), and its
notebook. With ``--jobs 1`` and no ``--scheduler`` the study trains in this process; with more
jobs, or ``--scheduler local`` / ``tcp://host:8786``, its jobs run as the reference study's do
(:mod:`lowrank_helpers.batch.jobs`: papermill runs of the notebook, locally or on a Dask cluster,
with progress and resume; a job's records come back as they are written). Either way the
notebook then runs once more over all the records for the tables and figures (it trains
nothing more: every job's runs are recorded).
"""
from __future__ import annotations

import argparse
import functools
import sys
from dataclasses import dataclass
from pathlib import Path

from .jobs import run_job
from .runners import JobSpec, config_tag, make_runner, run_specs
from ..core.config import smoke_dir
from ..tasks.images_data import DataError, DataNotFoundError
from ..core.results import ResultsDirError
from ..core.settings import settings_of

#: The notebook each job runs (its parameters: ``study``, a preset's name, and ``config``).
JOB_NOTEBOOK = "job.ipynb"
#: Settings the presets set themselves (paths resolved here, smoke's own folders).
_OWN = ("results_dir", "data_root", "img_dir", "reference_dirs", "scale_dirs", "budget_dir",
        "lm_dir", "tuned_dir", "mlp_dir", "smoke")


def _load(spec: str):
    import importlib
    module, attr = spec.split(":")
    return getattr(importlib.import_module(f"lowrank_helpers.{module}"), attr)


@dataclass(frozen=True)
class StudyPreset:
    """A study that trains what its records lack (in this process or as jobs of the batch
    runner), then runs its notebook for the tables and figures."""
    name: str
    description: str
    config: str          # "module:Class" of its NotebookParams config
    train: str           # "module:function" that trains from the config
    plan: str            # "module:function": the config's jobs
    results: str         # default results directory, relative to the working directory
    notebook: str        # file name in notebooks/
    smoke_help: str

    @property
    def config_class(self):
        return _load(self.config)

    @property
    def train_function(self):
        return _load(self.train)

    def parser(self) -> argparse.ArgumentParser:
        from .cli import _add_settings
        p = argparse.ArgumentParser(prog=f"lowrank-study {self.name}",
                                    description=self.description)
        _add_settings(p.add_argument_group(f"the {self.name} study"), _load(self.config),
                      skip=_OWN)
        p.add_argument("--results-dir", default=None, help=f"run records (default: "
                       f"{self.results}; with --smoke: {self.results}/smoke)")
        p.add_argument("--runs-dir", default="runs", help="executed notebooks (default: runs)")
        p.add_argument("--img-dir", default="img", help="figures (default: img)")
        p.add_argument("--data-root", default=None, help="data directory")
        p.add_argument("--notebook", default=None, help=f"default: notebooks/{self.notebook}")
        p.add_argument("--no-notebook", action="store_true", help="train only")
        p.add_argument("--smoke", action="store_true", help=self.smoke_help)
        p.add_argument("--jobs", type=int, default=1, help="jobs in parallel (default 1: "
                       "train in this process; with --scheduler local: the local cluster's "
                       "worker processes)")
        p.add_argument("--scheduler", default=None, metavar="ADDRESS", help="run the jobs on "
                       "the Dask scheduler at ADDRESS, or on a local Dask cluster (local)")
        p.add_argument("--job-timeout", type=float, default=None, metavar="SECONDS",
                       help="fail a job that runs longer than this (the others go on)")
        return p

    def config_of(self, args, p) -> object:
        cls = self.config_class
        given = {f.name: getattr(args, f.name) for f in settings_of(cls)
                 if f.metadata["flag"] and f.name not in _OWN
                 and getattr(args, f.name, None) is not None}
        params = {**{k: tuple(v) if isinstance(v, list) else v for k, v in given.items()},
                  "results_dir": str(Path(args.results_dir or self.results).resolve()),
                  "img_dir": str(Path(args.img_dir).resolve()), "smoke": args.smoke,
                  "data_root": str(Path(args.data_root).resolve()) if args.data_root else None}
        if "scale_dirs" in cls.parameter_names() and not args.smoke:
            params["scale_dirs"] = [str(Path("results/lm_scale").resolve())]
            params["budget_dir"] = str(Path("results/lm_budget").resolve())
        for name, where in (("lm_dir", "results/shakespeare_char"),
                            ("tuned_dir", "results/tuned")):   # the rows other studies give
            if name in cls.parameter_names():
                params[name] = str(Path(where).resolve())
        if "reference_dirs" in cls.parameter_names():
            params["reference_dirs"] = [str(Path(d).resolve())
                                        for d in ("results", "results/inits")]
        try:
            return cls.from_params(params)
        except (ValueError, TypeError) as exc:
            p.error(str(exc))

    def run_jobs(self, cfg, args, notebook: Path, runs_dir: Path) -> list[str]:
        """The study's jobs (``notebook``, :data:`JOB_NOTEBOOK`, once per job) on the runner of
        ``--jobs``/``--scheduler``; returns the names of those that failed."""
        jobs = _load(self.plan)(cfg)
        tag = config_tag(cfg)
        specs = [JobSpec(job, notebook, runs_dir / f"{self.name}-{job.name}-{tag}.ipynb",
                         {"study": self.name, "config": job.config.to_dict()})
                 for job in jobs]
        with make_runner(args.jobs, args.scheduler, args.job_timeout, cfg.results_dir) as runner:
            print(f"{len(specs)} jobs of the {self.name} study ({', '.join(j.name for j in jobs)}),"
                  f" {runner.describe()}; executed notebooks go to {runs_dir}/", flush=True)
            runner.prepare(functools.partial(_task_of(cfg).prepare, cfg.data_root))
            return run_specs(runner, specs)

    def __call__(self, argv) -> int:
        p = self.parser()
        args = p.parse_args(argv)
        if args.jobs < 1:
            p.error(f"--jobs must be >= 1, got {args.jobs}")
        cfg = self.config_of(args, p)
        notebook = None if args.no_notebook else _find_notebook(args.notebook, self.notebook)
        runs_dir = Path(smoke_dir(args.runs_dir) if args.smoke else args.runs_dir)
        from .cluster import ClusterError
        try:
            if args.jobs == 1 and args.scheduler is None:
                self.train_function(cfg)
            else:
                failed = self.run_jobs(cfg, args, _find_notebook(None, JOB_NOTEBOOK),
                                       runs_dir)
                if failed:
                    print(f"failed: {', '.join(failed)} (see the *.failed.ipynb notebooks in "
                          f"{runs_dir}/)", file=sys.stderr)
                    return 1
        except (ResultsDirError, DataNotFoundError, DataError, ClusterError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print(f"\ninterrupted: finished runs are kept in {cfg.results_dir}; run the same "
                  "command again to resume", file=sys.stderr)
            return 130
        if args.no_notebook:
            return 0
        nb_params = cfg.to_dict()  # its sizes and folders as trained here (smoke: idempotent)
        try:
            outcome = run_job(notebook, runs_dir / self.notebook, nb_params, name=self.name)
        except KeyboardInterrupt:
            print(f"\ninterrupted while the notebook ran: the records are kept in "
                  f"{cfg.results_dir}; run the same command again for the notebook",
                  file=sys.stderr)
            return 130
        if not outcome.ok:
            print(outcome.report(label="notebook"), file=sys.stderr)
            return 1
        print(f"figures written to {nb_params['img_dir']}/; notebook: "
              f"{runs_dir / self.notebook}")
        return 0


def _task_of(cfg):
    """The task a study's config trains (the language-model study names its corpus)."""
    from ..tasks import TASKS
    from ..training.lm import _task_of_corpus
    return TASKS[cfg.task if hasattr(cfg, "task") else _task_of_corpus(cfg.corpus)]


def _find_notebook(path: str | None, name: str) -> Path:
    from .cli import _find_notebook as find
    return find(path, name)


PRESETS = {c.name: c for c in (
    StudyPreset("tune", "The fair comparison: every model's learning rate tuned on a "
                "validation split under SGD with momentum and under AdamW, then seeds "
                "(resumes from the records), then notebooks/tuned.ipynb for the tables and "
                "figures. Jobs: one per optimizer.", "studies.tuned:TunedConfig",
                "studies.tuned:run_tuning", "studies.tuned:plan_jobs", "results/tuned",
                "tuned.ipynb",
                "tiny data, 2 ranks, 1 epoch"),
    StudyPreset("lm", "The language-model study: nanoGPT's character transformer on "
                "tiny-shakespeare, dense against factorized projections, each model's rate "
                "tuned on a slice of the training split, then seeds and controls (resumes from "
                "the records), then notebooks/shakespeare_char.ipynb. Jobs: the anchor, the "
                "search with its seeds, and each control.", "studies.lm:LMStudyConfig",
                "studies.lm:run_lm_study", "studies.lm:plan_jobs", "results/shakespeare_char",
                "shakespeare_char.ipynb", "a tiny model on Python source text, a few steps"),
    StudyPreset("extensions", "The extensions on one protocol: LoRA+, ReLoRA, AdaLoRA, "
                "GaLore, CoLA, LORO and SLTrain on the language-model study's transformer, "
                "each model's rate searched and refined on the tuning slice, then seeds "
                "(resumes from the records), then notebooks/extensions.ipynb. Jobs: one per "
                "method.", "studies.extensions:ExtensionsConfig",
                "studies.extensions:run_extensions", "studies.extensions:plan_jobs",
                "results/extensions", "extensions.ipynb",
                "a tiny model on Python source text, two methods, a few steps"),
)}
