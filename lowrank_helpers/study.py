"""The runs of a study: train what has no record yet, write one record per run."""
from __future__ import annotations

import pandas as pd
from tqdm.auto import tqdm

from .config import RunConfig, StudyConfig, SummaryConfig
from .data import Data, load_data
from .models import parameter_counts
from .results import check_writable, has_record, load_records, make_record, save_record
from .training import build_model, resolve_device, train


def run_one(run: RunConfig, data: Data, device="auto", progress: bool = True) -> dict:
    """Build, train and evaluate one run; return its record (not yet saved)."""
    model = build_model(run)
    result = train(model, data, run.train_config(), seed=run.seed, device=device,
                   progress=progress, desc=run.label)
    return make_record(run, result, parameter_counts(model))


def run_study(cfg: StudyConfig, progress: bool = True) -> pd.DataFrame:
    """Train every run of ``cfg`` that has no record in ``cfg.results_dir``; return all of them.

    Each finished run is saved at once, so an interrupted study keeps its finished runs and a
    rerun resumes with the rest. A diverged run is recorded as such and the study goes on.
    """
    results_dir = check_writable(cfg.results_dir)  # fail before training, not after
    runs = cfg.runs()
    todo = [r for r in runs if not has_record(r, results_dir)]
    print(f"{len(runs)} runs: {len(runs) - len(todo)} already recorded in {cfg.results_dir}, "
          f"{len(todo)} to train")
    if todo:
        device = resolve_device(cfg.device)
        data = load_data(cfg.dataset, cfg.data_root, device, cfg.train_subset, cfg.test_subset)
        print(f"data: {data}")
        for run in tqdm(todo, desc="runs", unit="run", disable=not progress):
            record = run_one(run, data, device, progress)
            save_record(record, results_dir)
            if record["diverged_epoch"] is not None:
                print(f"{run.label} (seed {run.seed}) diverged at epoch "
                      f"{record['diverged_epoch']}; recorded as diverged")
    return load_records(results_dir, run_id=[r.run_id for r in runs])


def summary_records(cfg: SummaryConfig) -> pd.DataFrame:
    """The records a summary draws: ``cfg``'s data set and protocol in ``cfg.results_dir``.

    In smoke mode a missing smoke study is trained first, so that a smoke summary runs on its
    own (tests run notebooks in any order).
    """
    where = cfg.record_filter()
    runs = load_records(cfg.results_dir, **where)
    if runs.empty and cfg.smoke:
        protocol = {k: v for k, v in where.items() if k != "dataset"}
        run_study(StudyConfig(dataset=cfg.dataset, results_dir=cfg.results_dir, smoke=True,
                              **protocol), progress=False)
        runs = load_records(cfg.results_dir, **where)
    if runs.empty:
        raise FileNotFoundError(f"no records in {cfg.results_dir} for {where}; run the study "
                                "first (lowrank-study, or notebooks/study.ipynb)")
    return runs
