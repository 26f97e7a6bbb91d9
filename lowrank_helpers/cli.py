"""``lowrank-study``: run the study notebook with papermill once per job, then the summary.

A job is the full-rank baseline, or one stack of factorized ranks (1-16, 32, 64, 128, ...).

    lowrank-study                         # the reference run: 17 models x 3 seeds, 100 epochs
    lowrank-study --smoke                 # quick end-to-end run into {results,img,runs}/smoke
    lowrank-study --ranks 4 8 --seeds 0 --jobs 2
    lowrank-study table                   # the results table from the records
    lowrank-study readme                  # regenerate README's result blocks from the records
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from .config import StudyConfig, smoke_dir
from .engine import stack_rank
from .data import DATASETS
from .layers import INITS
from .models import METHODS
from .results import check_writable, has_record

REPO = Path(__file__).resolve().parent.parent


@dataclass
class Job:
    name: str            # "full" or "r004"
    config: StudyConfig  # the notebook's parameters for this job

    def done(self) -> bool:
        return all(has_record(run, self.config.results_dir) for run in self.config.runs())


def plan_jobs(cfg: StudyConfig) -> list[Job]:
    """One job for the full-rank baseline and one per stack of factorized ranks (ranks up to 16
    together, then one per power of two; both factorized methods and all seeds in each), so
    that the engine can stack each job's models."""
    params = cfg.to_dict()
    jobs = []
    if "full" in cfg.methods:
        jobs.append(Job("full", StudyConfig(**{**params, "methods": ["full"], "ranks": []})))
    factorized = [m for m in cfg.methods if m != "full"]
    buckets: dict[int, list[int]] = {}
    for r in cfg.ranks:
        buckets.setdefault(stack_rank(r), []).append(r)
    for ranks in buckets.values() if factorized else ():
        name = f"r{ranks[0]:03d}" + (f"-r{ranks[-1]:03d}" if len(ranks) > 1 else "")
        jobs.append(Job(name, StudyConfig(**{**params, "methods": factorized, "ranks": ranks})))
    return jobs


def _find_notebook(path: str | None, name: str) -> Path:
    candidates = [Path(path)] if path else [Path.cwd() / "notebooks" / name,
                                            REPO / "notebooks" / name]
    for c in candidates:
        if c.is_file():
            return c.resolve()
    raise SystemExit(f"error: notebook {name} not found (looked in "
                     f"{', '.join(map(str, candidates))}); run from the repository root or "
                     f"pass its path")


class Runner:
    """Runs papermill jobs as subprocesses, so that Ctrl-C or a kill stops them all cleanly."""

    def __init__(self, threads_per_job: int | None):
        self.procs: set[subprocess.Popen] = set()
        self.lock = threading.Lock()
        self.stopped = False
        self.env = dict(os.environ)
        if threads_per_job:  # parallel jobs share the cores instead of oversubscribing them
            self.env["OMP_NUM_THREADS"] = str(threads_per_job)

    def papermill(self, notebook: Path, out: Path, params: dict) -> tuple[int, str]:
        """Execute ``notebook`` into ``out``; it is named ``*.running.ipynb`` until done and
        ``*.failed.ipynb`` if it fails. Returns papermill's exit code and output."""
        out.parent.mkdir(parents=True, exist_ok=True)
        params_file = out.with_suffix(".params.json")  # the job's exact parameters, kept
        params_file.write_text(json.dumps(params, indent=1))
        running = out.with_name(out.stem + ".running.ipynb")
        cmd = [sys.executable, "-m", "papermill", str(notebook), str(running), "-f",
               str(params_file), "--cwd", str(notebook.parent), "-k", "python3",
               "--no-progress-bar", "--log-level", "ERROR"]
        with self.lock:
            if self.stopped:
                return 130, "not started: the batch was interrupted"
            # own session: a terminal's Ctrl-C reaches only us, and we pass it on once
            proc = subprocess.Popen(cmd, env=self.env, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True, start_new_session=True)
            self.procs.add(proc)
        output, _ = proc.communicate()
        with self.lock:
            self.procs.discard(proc)
        if proc.returncode == 0:
            running.replace(out)
        elif self.stopped:
            running.unlink(missing_ok=True)  # interrupted, not failed: rerunning redoes it
        elif running.exists():
            running.replace(out.with_name(out.stem + ".failed.ipynb"))
        return proc.returncode, output

    def stop_all(self, grace: float = 20.0) -> None:
        """Interrupt every papermill job (papermill then shuts its kernel down); kill laggards."""
        with self.lock:
            self.stopped = True
            procs = list(self.procs)
        for proc in procs:
            proc.send_signal(signal.SIGINT)
        for proc in procs:
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                proc.kill()


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def run_batch(cfg: StudyConfig, args) -> int:
    runs_dir = Path(args.runs_dir)
    check_writable(cfg.results_dir)
    study_nb = _find_notebook(args.notebook, "study.ipynb")
    summary_nb = None if args.no_summary else _find_notebook(args.summary_notebook,
                                                             "summary.ipynb")
    jobs = plan_jobs(cfg)
    todo = [j for j in jobs if not j.done()]
    print(f"{len(jobs)} jobs ({len(cfg.runs())} runs): {len(jobs) - len(todo)} done already in "
          f"{cfg.results_dir}, {len(todo)} to run, {args.jobs} at a time; executed notebooks "
          f"go to {runs_dir}/", flush=True)
    runner = Runner(max(1, (os.cpu_count() or 1) // args.jobs) if args.jobs > 1 else None)
    tag = hashlib.sha1(json.dumps(cfg.to_dict(), sort_keys=True).encode()).hexdigest()[:6]
    failed = []
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)  # a kill stops like Ctrl-C
    pool, futures = ThreadPoolExecutor(max_workers=args.jobs), {}
    try:
        futures = {pool.submit(runner.papermill, study_nb,
                               runs_dir / f"study-{cfg.dataset}-{job.name}-{tag}.ipynb",
                               job.config.to_dict()): job for job in todo}
        with tqdm(total=len(todo), desc="jobs", unit="job") as bar:
            for fut in as_completed(futures):
                job, (rc, output) = futures[fut], fut.result()
                bar.update()
                if rc != 0:
                    failed.append(job.name)
                    tqdm.write(f"job {job.name} FAILED (exit {rc}):\n{output[-3000:]}")
                else:
                    tqdm.write(f"job {job.name} done")
        if failed:
            print("summary skipped: some jobs failed", file=sys.stderr)
        elif summary_nb is not None:
            rc, output = runner.papermill(
                summary_nb, runs_dir / f"summary-{cfg.dataset}-{tag}.ipynb",
                {"dataset": cfg.dataset, "results_dir": cfg.results_dir,
                 "img_dir": str(Path(args.img_dir).resolve()), "epochs": cfg.epochs,
                 "lr": cfg.lr, "batch_size": cfg.batch_size, "optimizer": cfg.optimizer,
                 "momentum": cfg.momentum, "weight_decay": cfg.weight_decay,
                 "shuffle": cfg.shuffle, "smoke": cfg.smoke})
            if rc != 0:
                failed.append("summary")
                print(f"summary FAILED (exit {rc}):\n{output[-3000:]}", file=sys.stderr)
            else:
                print(f"figures written to {args.img_dir}/")
    except KeyboardInterrupt:
        for fut in futures:
            fut.cancel()
        runner.stop_all()
        pool.shutdown(wait=True)
        print("\ninterrupted: finished runs are kept in "
              f"{cfg.results_dir}; run the same command again to resume", file=sys.stderr)
        return 130
    finally:
        pool.shutdown(wait=False)
        signal.signal(signal.SIGTERM, previous)
    if failed:
        print(f"failed: {', '.join(failed)} (see the *.failed.ipynb notebooks in {runs_dir}/)",
              file=sys.stderr)
        return 1
    return 0


def print_table(args) -> int:
    from .report import comparison_table
    from .results import load_records
    runs = load_records(args.results_dir, dataset=args.dataset)
    if runs.empty:
        print(f"error: no {args.dataset} records in {args.results_dir}", file=sys.stderr)
        return 1
    print(comparison_table(runs).to_markdown(index=False))
    return 0


def readme(args) -> int:
    from .report import update_readme
    stale = update_readme(args.readme, check=args.check)
    if args.check and stale:
        print(f"{args.readme} is stale: {', '.join(stale)}; run lowrank-study readme",
              file=sys.stderr)
        return 1
    print(f"{args.readme}: {'updated ' + ', '.join(stale) if stale else 'up to date'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lowrank-study", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", nargs="?", default="run", choices=["run", "table", "readme"],
                   help="run the study (default); print the results table; or regenerate "
                   "README's result blocks from the records")
    p.add_argument("--readme", default="README.md", help="with 'readme': the file to update")
    p.add_argument("--check", action="store_true", help="with 'readme': only check, exit 1 "
                   "if stale")
    p.add_argument("--dataset", default="fashion_mnist", choices=list(DATASETS))
    p.add_argument("--methods", nargs="+", default=list(METHODS), metavar="METHOD",
                   help=f"any of {', '.join(METHODS)} (default: all)")
    p.add_argument("--ranks", nargs="+", type=int, default=[1, 2, 4, 8, 16, 32, 64, 128])
    p.add_argument("--init", default="lora", help=f"init of the 'lora' method: "
                   f"{', '.join(sorted(INITS))}")
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--optimizer", default="sgd", help="sgd or adamw")
    p.add_argument("--momentum", type=float, default=0.0, help="SGD momentum")
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--shuffle", action="store_true", help="shuffle the training data each "
                   "epoch (the original does not)")
    p.add_argument("--hidden-sizes", nargs="+", type=int, default=[512, 512])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--jobs", type=int, default=1, help="papermill jobs in parallel (default 1)")
    p.add_argument("--no-engine", action="store_true", help="train one model at a time with "
                   "the plain loop instead of the stacked engine")
    p.add_argument("--results-dir", default=None, help="run records (default: results; "
                   "with --smoke: results/smoke)")
    p.add_argument("--runs-dir", default=None, help="executed notebooks (default: runs; "
                   "with --smoke: runs/smoke)")
    p.add_argument("--img-dir", default=None, help="figures (default: img; with --smoke: "
                   "img/smoke)")
    p.add_argument("--data-root", default=None, help="data directory (default: $LOWRANK_DATA "
                   "or ~/.cache/lowrank_helpers/data)")
    p.add_argument("--notebook", default=None, help="study notebook (default: "
                   "notebooks/study.ipynb)")
    p.add_argument("--summary-notebook", default=None)
    p.add_argument("--no-summary", action="store_true", help="skip the summary notebook")
    p.add_argument("--smoke", action="store_true", help="tiny data, 2 epochs, 2 ranks")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    args.results_dir = args.results_dir or "results"
    args.runs_dir = args.runs_dir or "runs"
    args.img_dir = args.img_dir or "img"
    if args.smoke:  # as the notebooks do: smoke output goes into smoke/ subfolders
        args.runs_dir, args.img_dir = smoke_dir(args.runs_dir), smoke_dir(args.img_dir)
    if args.command == "table":
        return print_table(args)
    if args.command == "readme":
        return readme(args)
    if args.jobs < 1:
        raise SystemExit(f"error: --jobs must be >= 1, got {args.jobs}")
    try:
        cfg = StudyConfig(dataset=args.dataset, methods=args.methods, ranks=args.ranks,
                          init=args.init, epochs=args.epochs, batch_size=args.batch_size,
                          lr=args.lr, optimizer=args.optimizer, momentum=args.momentum,
                          weight_decay=args.weight_decay, shuffle=args.shuffle,
                          hidden_sizes=args.hidden_sizes, seeds=args.seeds,
                          engine=not args.no_engine,
                          device=args.device, results_dir=str(Path(args.results_dir).resolve()),
                          data_root=(str(Path(args.data_root).resolve()) if args.data_root
                                     else None), smoke=args.smoke)
    except (ValueError, TypeError) as exc:
        raise SystemExit(f"error: {exc}")
    return run_batch(cfg, args)


if __name__ == "__main__":
    sys.exit(main())
