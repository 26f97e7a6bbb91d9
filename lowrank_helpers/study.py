"""The runs of a study: train what has no record yet, write one record per run."""
from __future__ import annotations

import pandas as pd
from tqdm.auto import tqdm

from .config import RunConfig, StudyConfig, SummaryConfig
from .data import Data, load_data
from .engine import train_many
from .results import check_writable, has_record, load_records, make_record, save_record
from .training import build_model, resolve_device, train


def run_result(run: RunConfig, data: Data, device="auto", progress: bool = True):
    """Build and train one run with the plain loop; return its TrainResult."""
    return train(build_model(run), data, run.train_config(), seed=run.seed, device=device,
                 progress=progress, desc=run.label)


def run_one(run: RunConfig, data: Data, device="auto", progress: bool = True) -> dict:
    """Build, train and evaluate one run with the plain loop; return its record (not saved)."""
    return make_record(run, run_result(run, data, device, progress))


def run_study(cfg: StudyConfig, progress: bool = True) -> pd.DataFrame:
    """Train every run of ``cfg`` that has no record in ``cfg.results_dir``; return all of them.

    With ``cfg.engine`` (the default) the runs train stacked in lockstep (see
    :mod:`lowrank_helpers.engine`) and each lockstep group's records are saved as it ends;
    otherwise one model at a time with the plain loop, each record saved as its run ends. An
    interrupted study keeps what was saved and a rerun resumes with the rest. A diverged run is
    recorded as such and the study goes on.
    """
    results_dir = check_writable(cfg.results_dir)  # fail before training, not after
    runs = cfg.runs()
    todo = [r for r in runs if not has_record(r, results_dir)]
    print(f"{len(runs)} runs: {len(runs) - len(todo)} already recorded in {cfg.results_dir}, "
          f"{len(todo)} to train")
    if todo:
        device = resolve_device(cfg.device)
        data = load_data(cfg.dataset, cfg.data_root, device, cfg.train_subset, cfg.test_subset)
        print(f"data: {data}; engine: {'stacked' if cfg.engine else 'plain loop'}")

        def save(done_runs, results):
            for run, result in zip(done_runs, results):
                record = make_record(run, result)
                save_record(record, results_dir)
                if record["diverged_epoch"] is not None:
                    print(f"{run.label} (seed {run.seed}) diverged at epoch "
                          f"{record['diverged_epoch']}; recorded as diverged")
        if cfg.engine:  # all runs in lockstep stacks; records are saved as each group ends
            train_many(todo, data, device, progress, on_group_done=save)
        else:  # one model at a time; each record is saved as its run ends
            for run in tqdm(todo, desc="runs", unit="run", disable=not progress):
                save([run], [run_result(run, data, device, progress)])
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


def init_study_records(results_dirs, inits, smoke: bool = False) -> pd.DataFrame:
    """Reference-protocol records of every init, from ``results_dirs`` (the reference run's
    directory first: full-rank, "lora" and autoencoder layers; then the other inits').

    In smoke mode missing smoke studies are trained first (tests run notebooks in any order).
    """
    where = SummaryConfig(smoke=smoke).record_filter()
    dirs = list(results_dirs)
    if smoke:
        for init in ["lora", *[x for x in inits if x not in ("lora", "default")]]:
            target = dirs[0] if init == "lora" else dirs[-1]
            methods = ["full", "lora", "ae"] if init == "lora" else ["lora"]
            cfg = StudyConfig(methods=methods, init=init, results_dir=target, smoke=True)
            if any(not has_record(r, cfg.results_dir) for r in cfg.runs()):
                run_study(cfg, progress=False)
    frames = [load_records(d, **where) for d in dirs]
    frames = [f for f in frames if not f.empty]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
