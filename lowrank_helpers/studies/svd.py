"""The SVD-started control of the language-model study (its ``svd`` phase): representation or
optimization?

The dense model at its chosen rate (seeds 0 … ``seeds``-1) is kept as a checkpoint
(:func:`ensure_checkpoints`, rebuilt by retraining when absent from the data cache). For each
rank of ``svd_ranks`` and each seed, its six projections are cut to rank r by their SVD
(:mod:`lowrank_helpers.methods.svd_start`), and

- **truncated**: the model is evaluated with no further step (:func:`truncation_losses`,
  stored in ``svd/truncated.json`` under the results folder): what rank r represents, starting from
  the dense solution;
- **SVD-started**: the model is trained on as B·A under the study's protocol, its rate searched
  on ``svd_lrs`` (the one search and seed rule), records like every other run's.

If SVD-started models end clearly below the from-scratch ones of the same rank, a better
rank-r solution exists that B·A from scratch does not find (optimization); if they end at
the from-scratch loss, the rank itself limits (representation), as far as this protocol sees.
"""
from __future__ import annotations

import json
from pathlib import Path

from ..core.checkpoints import has_checkpoint, save_checkpoint
from ..core.protocol import RunConfig
from ..core.results import read_record, record_path, write_atomic
from ..training.lm import another_model, retrain

#: The untrained truncations, beside the study's records.
TRUNCATED = "svd/truncated.json"
#: How far (nats) a retrained dense model's final held-out loss may lie from its record's
#: before the checkpoint is refused as another model's.
CHECKPOINT_TOLERANCE = 1e-3


def ensure_checkpoints(runs: list[RunConfig], splits, results_dir, device="cpu",
                       bar=None) -> list[str]:
    """Keep each recorded run's trained model as a checkpoint: retrain (in stacks) the runs
    without one, check each against its record's final held-out loss (within
    :data:`CHECKPOINT_TOLERANCE`) and save it. Returns the runs refused (named in a warning)."""
    refused = []
    for run, res in retrain([r for r in runs if not has_checkpoint(r)], splits, device, bar,
                            "checkpoint of "):
        path = record_path(run, results_dir)
        if path.exists():
            stored = read_record(path)["final"]["val_loss"]
            gap = abs(stored - res.final["val_loss"])
            if another_model(path, "held-out loss", gap, CHECKPOINT_TOLERANCE,
                             "no checkpoint kept"):
                refused.append(run.name)
                continue
        save_checkpoint(run, res.model, res.final)
    return refused


def svd_run(dense: RunConfig, rank: int, targets: str = "both") -> RunConfig:
    """The SVD-started run of ``dense`` (same task, shape, protocol and seed) at ``rank``."""
    return dense.replace(method="svd_start", rank=rank, targets=targets,
                         options={"dense_lr": dense.lr})


def truncation_losses(dense_runs: list[RunConfig], ranks, splits, results_dir,
                      device="cpu") -> list[dict]:
    """Each dense run's model cut to each rank by its SVD, evaluated on all of the held-out
    split and the tuning slice with no further step; resumes from ``svd/truncated.json``
    (rows keyed by the dense run's id and the rank)."""
    path = Path(results_dir) / TRUNCATED
    rows = json.loads(path.read_text())["rows"] if path.exists() else []
    have = {(r["dense_run_id"], r["rank"]) for r in rows}
    for dense in dense_runs:
        for rank in ranks:
            if (dense.run_id, rank) in have:
                continue
            run = svd_run(dense, rank)
            model = run.build().to(device)
            scores = run.task_spec.evaluate(model, splits, run.protocol, final=True)
            rows.append({"dense_run_id": dense.run_id, "dense_lr": dense.lr,
                         "seed": dense.seed, "rank": rank, "d_model": dense.shape.d_model,
                         **{k: round(v, 6) for k, v in scores.items()}})
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(path, json.dumps({"what": "dense models cut to rank r by their SVD, "
                                           "evaluated with no further step", "rows": rows},
                                          indent=1).encode())
    return rows


def load_truncated(results_dir):
    """``svd/truncated.json``'s rows as a DataFrame (empty where there is none)."""
    import pandas as pd
    path = Path(results_dir) / TRUNCATED
    return pd.DataFrame(json.loads(path.read_text())["rows"]) if path.exists() else \
        pd.DataFrame()
