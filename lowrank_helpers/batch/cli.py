"""``lowrank-study``: run the study notebook with papermill once per job, then the summary.

A job is the full-rank baseline, or one stack of factorized ranks (1-16, 32, 64, 128, ...).
The flags of the study and of its training protocol are generated from their declarations
(:class:`~lowrank_helpers.core.config.StudyConfig`, :class:`~lowrank_helpers.core.protocol.Protocol`).

    lowrank-study                         # the reference run: 17 models x 3 seeds, 100 epochs
    lowrank-study --smoke                 # quick end-to-end run into {results,img,runs}/smoke
    lowrank-study --ranks 4 8 --seeds 0 --jobs 2
    lowrank-study --scheduler local       # the jobs on a Dask cluster of --jobs workers here;
                                          # --scheduler tcp://host:8786: on several machines
    lowrank-study table                   # the results table from the records
    lowrank-study readme                  # regenerate README's result blocks from the records
    lowrank-study tune --workers 2        # the tuned comparison into results/tuned, then its
                                          # notebook (lowrank-study tune --help)
    lowrank-study lm                      # the language-model study into
                                          # results/shakespeare_char, then its notebook
    lowrank-study migrate DIR ...         # rewrite records of an earlier schema as today's
"""
from __future__ import annotations

import argparse
import functools
import signal
import sys
from pathlib import Path

from .jobs import run_job
from .plan import plan_jobs
from .runners import JobSpec, LocalRunner, config_tag, make_runner, run_specs
from ..core.config import StudyConfig, SummaryConfig, smoke_dir
from ..tasks.images_data import DataNotFoundError
from ..core.protocol import REFERENCE, Protocol
from ..core.results import ResultsDirError, check_writable
from ..core.settings import choices_of, default_of, settings_of
from ..tasks import TASKS

REPO = Path(__file__).resolve().parent.parent
COMMANDS = ("run", "table", "readme", "tune", "lm")


def _find_notebook(path: str | None, name: str) -> Path:
    candidates = [Path(path)] if path else [Path.cwd() / "notebooks" / name,
                                            REPO / "notebooks" / name]
    for c in candidates:
        if c.is_file():
            return c.resolve()
    raise SystemExit(f"error: notebook {name} not found (looked in "
                     f"{', '.join(map(str, candidates))}); run from the repository root or "
                     f"pass its path")


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def run_batch(cfg: StudyConfig, args) -> int:
    runs_dir = Path(args.runs_dir)
    check_writable(cfg.results_dir)
    check_writable(runs_dir, "executed notebooks", "--runs-dir")
    study_nb = _find_notebook(args.notebook, "study.ipynb")
    summary_nb = None if args.no_summary else _find_notebook(args.summary_notebook,
                                                             "summary.ipynb")
    jobs = plan_jobs(cfg)
    todo = [j for j in jobs if not j.done()]
    tag = config_tag(cfg)
    specs = [JobSpec(job, study_nb, runs_dir / f"study-{cfg.task}-{job.name}-{tag}.ipynb",
                     job.config.to_dict()) for job in todo]
    failed = []
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)  # a kill stops like Ctrl-C
    try:
        # nothing to run: no cluster to reach, straight to the summary
        with make_runner(args.jobs, args.scheduler, args.job_timeout, cfg.results_dir) \
                if todo else LocalRunner() as runner:
            print(f"{len(jobs)} jobs ({len(cfg.runs())} runs): {len(jobs) - len(todo)} done "
                  f"already in {cfg.results_dir}, {len(todo)} to run"
                  f"{', ' + runner.describe() if todo else ''}; "
                  f"executed notebooks go to {runs_dir}/", flush=True)
            if todo:
                runner.prepare(functools.partial(TASKS[cfg.task].prepare, cfg.data_root))
            failed = run_specs(runner, specs)
        if failed:
            print("summary skipped: some jobs failed", file=sys.stderr)
        elif summary_nb is not None:  # the figures are drawn here, from the records here
            summary = SummaryConfig(task=cfg.task, results_dir=cfg.results_dir,
                                    img_dir=str(Path(args.img_dir).resolve()),
                                    hidden_sizes=cfg.hidden_sizes, smoke=cfg.smoke,
                                    protocol=cfg.protocol)
            outcome = run_job(summary_nb, runs_dir / f"summary-{cfg.task}-{tag}.ipynb",
                              summary.to_dict(), name="summary")
            if not outcome.ok:
                failed.append("summary")
                print(outcome.report(label="summary"), file=sys.stderr)
            else:
                print(f"figures written to {args.img_dir}/")
    except KeyboardInterrupt:
        print("\ninterrupted: finished runs are kept in "
              f"{cfg.results_dir}; run the same command again to resume", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    if failed:
        print(f"failed: {', '.join(failed)} (see the *.failed.ipynb notebooks in {runs_dir}/)",
              file=sys.stderr)
        return 1
    return 0


def print_table(args) -> int:
    """The results table of the records in ``--results-dir``: the MLP study's comparison
    table, or the language-model study's table where the records are of that study."""
    from ..reports.reference import comparison_table
    from ..core.results import load_records
    runs = load_records(args.results_dir, task=args.task)
    if runs.empty:
        from ..reports.lm import lm_table, lm_tables_markdown
        from ..studies.lm import load_lm_records
        lm = load_lm_records(args.results_dir)
        if len(lm):
            print(lm_tables_markdown(lm_table(lm)))
            return 0
        print(f"error: no {args.task} records in {args.results_dir}", file=sys.stderr)
        return 1
    print(comparison_table(runs).to_markdown(index=False))
    return 0


def readme(args) -> int:
    from ..readme import update_readme
    stale = update_readme(args.readme, check=args.check)
    if args.check and stale:
        print(f"{args.readme} is stale: {', '.join(stale)}; run lowrank-study readme",
              file=sys.stderr)
        return 1
    print(f"{args.readme}: {'updated ' + ', '.join(stale) if stale else 'up to date'}")
    return 0


def _add_settings(group, cls, skip=()) -> None:
    """One flag per setting of ``cls`` (``--batch-size``), typed, with its help, default and
    choices; its value None unless given, so that only what is given overrides the
    declaration's default."""
    for f in settings_of(cls):
        if not f.metadata["flag"] or f.name in skip:
            continue
        kind, flag = f.metadata["kind"], "--" + f.name.replace("_", "-")
        default = default_of(f)
        shown = " ".join(map(str, default)) if isinstance(default, tuple) else default
        choices = choices_of(f)  # checked by the config, which says what is accepted
        among = f"; one of {', '.join(map(str, choices))}" if choices else ""
        kw = {"default": None, "help": f"{f.metadata['help']} (default: {shown}{among})"}
        if kind == "bool":
            kw["action"] = argparse.BooleanOptionalAction
        else:
            base = kind.replace("|None", "")
            if base.startswith("list["):
                kw["nargs"] = "+"
                base = base[5:-1]
            kw["type"] = {"int": int, "float": float, "str": str}[base]
            kw["metavar"] = f.name.upper().rstrip("S") if "nargs" in kw else f.name.upper()
        group.add_argument(flag, dest=f.name, **kw)


#: StudyConfig settings the command line sets itself (paths resolved from the working
#: directory, smoke's own folders), not by a generated flag.
_OWN_FLAGS = ("results_dir", "data_root", "smoke")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lowrank-study", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", nargs="?", default="run", metavar="COMMAND",
                   help="run the study (default); table: print the results table; readme: "
                   "regenerate README's result blocks from the records")
    p.add_argument("--readme", default="README.md", help="with 'readme': the file to update")
    p.add_argument("--check", action="store_true", help="with 'readme': only check, exit 1 "
                   "if stale")
    _add_settings(p.add_argument_group("the study"), StudyConfig, skip=_OWN_FLAGS)
    _add_settings(p.add_argument_group("the training protocol"), Protocol)
    p.add_argument("--jobs", type=int, default=1, help="papermill jobs in parallel (default 1; "
                   "with --scheduler local: the local cluster's worker processes)")
    p.add_argument("--scheduler", default=None, metavar="ADDRESS", help="run the jobs on the "
                   "Dask scheduler at ADDRESS (tcp://host:8786), or on a local Dask cluster of "
                   "--jobs workers (local); needs the cluster extra")
    p.add_argument("--job-timeout", type=float, default=None, metavar="SECONDS",
                   help="fail a job that runs longer than this (the others go on)")
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


def parse_args(argv=None) -> argparse.Namespace:
    """Parse the command line; unknown options and commands are named as such."""
    p = build_parser()
    args, unknown = p.parse_known_args(argv)
    if unknown:
        extra = [] if args.command in COMMANDS else [args.command]
        p.error(f"unrecognized arguments: {' '.join(unknown + extra)}")
    if args.command not in COMMANDS:
        p.error(f"unknown command {args.command!r} (choose from {', '.join(COMMANDS)})")
    return args


def study_config(args) -> StudyConfig:
    """The StudyConfig of the flags given (the declarations' defaults for the rest)."""
    given = {f.name: getattr(args, f.name) for f in (*settings_of(StudyConfig),
                                                       *settings_of(Protocol))
             if f.metadata["flag"] and f.name not in _OWN_FLAGS
             and getattr(args, f.name, None) is not None}
    return StudyConfig.from_params({
        **given, "results_dir": str(Path(args.results_dir).resolve()),
        "data_root": str(Path(args.data_root).resolve()) if args.data_root else None,
        "smoke": args.smoke})


def migrate(argv) -> int:
    """``lowrank-study migrate DIR ...``: rewrite the records of an earlier schema in each
    folder as today's (:func:`~lowrank_helpers.core.migrate.migrate_dir`; nothing retrains)."""
    from ..core.migrate import migrate_dir
    p = argparse.ArgumentParser(prog="lowrank-study migrate", description=migrate.__doc__)
    p.add_argument("dirs", nargs="+", metavar="DIR", help="results folders")
    dirs = p.parse_args(argv).dirs
    missing = [d for d in dirs if not Path(d).is_dir()]
    if missing:
        raise SystemExit(f"error: not a folder: {', '.join(missing)}")
    for d in dirs:
        print(f"{d}: {len(migrate_dir(d))} records rewritten")
    return 0


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["migrate"]:
        return migrate(argv[1:])
    from .presets import PRESETS
    if argv[:1] and argv[0] in PRESETS:
        return PRESETS[argv[0]](argv[1:])
    args = parse_args(argv)
    args.results_dir = args.results_dir or "results"
    args.runs_dir = args.runs_dir or "runs"
    args.img_dir = args.img_dir or "img"
    if args.smoke:  # as the notebooks do: smoke output goes into smoke/ subfolders
        args.runs_dir, args.img_dir = smoke_dir(args.runs_dir), smoke_dir(args.img_dir)
    if args.command == "table":
        args.task = args.task or REFERENCE.task
        return print_table(args)
    if args.command == "readme":
        return readme(args)
    if args.jobs < 1:
        raise SystemExit(f"error: --jobs must be >= 1, got {args.jobs}")
    if args.job_timeout is not None and not args.job_timeout > 0:
        raise SystemExit(f"error: --job-timeout must be > 0 seconds, got {args.job_timeout:g}")
    try:
        cfg = study_config(args)
    except (ValueError, TypeError) as exc:
        raise SystemExit(f"error: {exc}")
    from .cluster import ClusterError
    try:
        return run_batch(cfg, args)
    except (ResultsDirError, DataNotFoundError, ClusterError) as exc:  # one line
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
