"""The runs of a study: train what has no record yet, write one record per run, with resume."""
from __future__ import annotations

import math
from functools import partial

import pandas as pd
from tqdm.auto import tqdm

from ..core.config import StudyConfig, SummaryConfig, TheoryConfig, smoke_protocol
from ..tasks.images_data import Data
from ..core.devices import as_device, resolve_device
from ..training.engine import train_many
from ..core.checkpoints import stack_state_path
from ..training.stacking import stack_key, train_stacked
from ..methods import METHODS, ORIGINAL_METHODS, method_for_init
from ..training.planning import stackable
from ..core.protocol import Protocol, RunConfig
from ..core.results import check_writable, has_record, load_records, make_record, save_record
from ..tasks import TASKS
from .theory import trained_singular_values


def run_result(run: RunConfig, data: Data, device="auto", progress: bool = True,
               analyze=None):
    """Build and train one run with the one training loop (:func:`~lowrank_helpers.training.trainer.fit`:
    the method's groups, optimizer and hooks); return its TrainResult."""
    from ..training.trainer import fit
    return _as_record_result(run, fit(run, data, device=as_device(device),
                                      progress=progress, analyze=analyze))


def run_one(run: RunConfig, data: Data, device="auto", progress: bool = True) -> dict:
    """Build, train and evaluate one run with the plain loop; return its record (not saved)."""
    return make_record(run, run_result(run, data, device, progress))


def _data_key(run: RunConfig) -> tuple:
    """Runs with equal keys train on the same data splits."""
    p = run.protocol
    return (run.task, p.train_subset, p.test_subset, p.val_size)


def _stacks(runs: list[RunConfig]) -> list[list[RunConfig]]:
    """``runs`` grouped by :func:`~lowrank_helpers.training.stacking.stack_key`."""
    groups: dict[tuple, list[RunConfig]] = {}
    for r in runs:
        groups.setdefault(stack_key(r), []).append(r)
    return list(groups.values())


def _as_record_result(run: RunConfig, result):
    """A TrainResult of the one loop or the generic stacked path under the names the MLP
    records use (the initial test metrics, the epoch a run diverged at)."""
    if run.task_spec.entry == "epoch":
        result.init_test_accuracy = result.init.get("test_accuracy")
        result.init_test_loss = result.init.get("test_loss")
        bad = [h["epoch"] for h in result.history
               if not all(math.isfinite(v) for v in h.values() if isinstance(v, float))]
        result.diverged_epoch = bad[0] if bad else None
    return result


def run_records(runs: list[RunConfig], results_dir, *, data_root=None, device="auto",
                engine: bool = True, progress: bool = True, analyze=None,
                workers: int = 1, finish=None, bar=None, verbose: bool = True
                ) -> pd.DataFrame:
    """Train every run of ``runs`` that has no record in ``results_dir``; return the records
    of all of them.

    With ``engine`` (the default) the runs train stacked in lockstep (see
    :mod:`lowrank_helpers.training.engine`) and each stack's or group's records are saved as it ends;
    otherwise (and for methods that change the training step) one model at a time with the
    plain loop, each record saved as its run ends. An interrupted study keeps what was saved
    and a rerun resumes with the rest. A diverged run is recorded as such and the study goes
    on. ``analyze(model)``: a dict of each trained model, stored in its record. ``workers``:
    CPU processes for the stacked runs (on a GPU, one). ``finish(run, result, data)``: called
    on each result before its record is written (a study's additions: samples, analyses of the
    trained ``result.model``). ``bar``: a tqdm bar that the generic stacked path advances by
    model-steps, and a run trained alone by its steps once it ends (the language-model and
    extensions studies'); ``verbose``: print what is trained how.
    """
    say = print if verbose else (lambda *a, **k: None)
    results_dir = check_writable(results_dir)  # fail before training, not after
    runs = list({r.run_id: r for r in runs}.values())
    todo = [r for r in runs if not has_record(r, results_dir)]
    say(f"{len(runs)} runs: {len(runs) - len(todo)} already recorded in {results_dir}, "
        f"{len(todo)} to train")
    if not todo:
        return load_records(results_dir, run_id=[r.run_id for r in runs])
    dev = resolve_device(device)

    def save(done_runs, results, data=None):
        for run, result in zip(done_runs, results):
            if finish is not None:
                finish(run, result, data)
            record = make_record(run, result)
            save_record(record, results_dir)
            if record["diverged_epoch"] is not None:
                print(f"{run.label} (seed {run.seed}) diverged at epoch "
                      f"{record['diverged_epoch']}; recorded as diverged")
    by_data: dict[tuple, list[RunConfig]] = {}
    for run in todo:
        by_data.setdefault(_data_key(run), []).append(run)
    for part in by_data.values():
        first = part[0]
        data = TASKS[first.task].load(first.protocol, data_root, dev)
        stacked = [r for r in part if engine and stackable(r)]
        generic = [r for r in part if engine and r not in stacked
                   and METHODS[r.method].stackable and analyze is None]
        alone = [r for r in part if r not in stacked and r not in generic]
        say(f"data: {data}; " + ", ".join(
            f"{n} {how}" for n, how in ((len(stacked), "stacked"),
                                        (len(generic), "stacked (torch.func)"),
                                        (len(alone), "one at a time")) if n))
        if stacked:  # records are saved as each stack or group ends
            train_many(stacked, data, dev, progress, on_group_done=partial(save, data=data),
                       analyze=analyze, workers=workers if dev.type == "cpu" else 1)
        for group in _stacks(generic):
            step = None
            if bar is not None:
                bar.set_postfix_str(f"{group[0].label} ×{len(group)}")
                step = partial(lambda n, k: bar.update(n * k), k=len(group))  # model-steps
            kept = stack_state_path(group, data_root)     # the stack's state as it trains
            save(group, [_as_record_result(r, res) for r, res in
                         zip(group, train_stacked(group, data, device=dev, progress=step,
                                                  resume=kept))],
                 data)
            kept.unlink(missing_ok=True)                  # its records are written
        for run in tqdm(alone, desc="runs", unit="run", disable=not progress or not alone):
            if bar is not None:
                bar.set_postfix_str(f"{run.label} (alone)")
            result = run_result(run, data, dev, progress, analyze)
            save([run], [result], data)
            if bar is not None:                     # the study's bar counts model-steps
                bar.update(run.protocol.total_steps(
                    TASKS[run.task].steps_per_epoch(run.protocol, data)))
    return load_records(results_dir, run_id=[r.run_id for r in runs])


def run_study(cfg: StudyConfig, progress: bool = True) -> pd.DataFrame:
    """Train every run of ``cfg`` that has no record in ``cfg.results_dir``; return all of them
    (see :func:`run_records`)."""
    return run_records(cfg.runs(), cfg.results_dir, data_root=cfg.data_root, device=cfg.device,
                       engine=cfg.engine, progress=progress)


def summary_records(cfg: SummaryConfig) -> pd.DataFrame:
    """The records a summary draws: ``cfg``'s task, widths and protocol in ``cfg.results_dir``.

    In smoke mode a missing smoke study is trained first, so that a smoke summary runs on its
    own (tests run notebooks in any order).
    """
    runs = load_records(cfg.results_dir, protocol_id=cfg.protocol_id)
    if runs.empty and cfg.smoke:
        run_study(cfg.study(smoke=True), progress=False)
        runs = load_records(cfg.results_dir, protocol_id=cfg.protocol_id)
    if runs.empty:
        raise FileNotFoundError(f"no records in {cfg.results_dir} of task {cfg.task!r} with "
                                f"widths {'-'.join(map(str, cfg.study().widths))} under "
                                f"{cfg.protocol.describe()}; run the study first (lowrank-study, "
                                "or notebooks/study.ipynb)")
    return runs


def init_study_records(results_dirs, inits, smoke: bool = False) -> pd.DataFrame:
    """Reference-protocol records of every init, from ``results_dirs`` (the reference run's
    directory first: full-rank, "lora" and autoencoder layers; then the other inits').

    In smoke mode missing smoke studies are trained first (tests run notebooks in any order).
    """
    protocol = smoke_protocol(Protocol()) if smoke else Protocol()
    dirs = list(results_dirs)
    if smoke:  # the reference run (its methods with their own inits), then one study per init
        own = {METHODS[m].own_init for m in ORIGINAL_METHODS if METHODS[m].factorized}
        studies = [(None, list(ORIGINAL_METHODS), dirs[0])]
        studies += [(init, [method_for_init(init)[0]], dirs[-1]) for init in inits
                    if init not in own]
        for init, methods, target in studies:
            cfg = StudyConfig(methods=methods, init=init, results_dir=target, smoke=True)
            if any(not has_record(r, cfg.results_dir) for r in cfg.runs()):
                run_study(cfg, progress=False)
    frames = [load_records(d, protocol_id=RunConfig(protocol=protocol).protocol_id)
              for d in dirs]
    frames = [f for f in frames if not f.empty]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def spectra_records(cfg: TheoryConfig, progress: bool = True) -> pd.DataFrame:
    """The theory notebook's spectra models (:meth:`TheoryConfig.spectra_runs`) trained, with
    their layers' singular values after training in each record (``analysis``); resumes."""
    return run_records(cfg.spectra_runs(), cfg.spectra_dir, data_root=cfg.data_root,
                       device="cpu", progress=progress, analyze=trained_singular_values)
