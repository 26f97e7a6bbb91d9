"""Trained models kept for later runs to start from (the SVD-started control), in the data
cache, not in git: a checkpoint is rebuilt by retraining its run when it is absent.

A checkpoint is one file per run, ``<data root>/checkpoints/<run name>-<run id>.pt``, holding
the trained ``state_dict``, the run's config and its final metrics (the check that a retrained
model is the recorded one). The data root is ``$LOWRANK_DATA`` or
``~/.cache/lowrank_helpers/data`` (:func:`~lowrank_helpers.tasks.images_data.default_root`).
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from .protocol import RunConfig


def checkpoint_path(run: RunConfig, root=None) -> Path:
    """Where ``run``'s trained model is kept."""
    from ..tasks.images_data import default_root
    base = Path(root) if root is not None else default_root()
    return base / "checkpoints" / f"{run.name}-{run.run_id}.pt"


def save_checkpoint(run: RunConfig, model: torch.nn.Module, final: dict, root=None) -> Path:
    """Keep ``model`` (trained by ``run``, with its ``final`` metrics); written atomically."""
    path = checkpoint_path(run, root)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    torch.save({"state_dict": state, "config": run.to_dict(),
                "final": {k: v for k, v in final.items() if isinstance(v, (int, float))}}, tmp)
    os.replace(tmp, path)
    return path


def has_checkpoint(run: RunConfig, root=None) -> bool:
    return checkpoint_path(run, root).exists()


def load_checkpoint(run: RunConfig, root=None) -> dict:
    """``run``'s checkpoint (``state_dict``, ``config``, ``final``). A missing one is an error
    that names the run and how to rebuild it."""
    path = checkpoint_path(run, root)
    if not path.exists():
        raise FileNotFoundError(
            f"no checkpoint of {run.label} (seed {run.seed}, lr {run.lr:g}) at {path}: it is "
            "rebuilt by retraining that run: lowrank-study lm --phases svd (or teacher) does "
            "this, as does lowrank_helpers.studies.svd.ensure_checkpoints(runs, splits, "
            "results_dir)")
    return torch.load(path, map_location="cpu", weights_only=True)
