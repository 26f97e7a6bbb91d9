"""Trained models kept for later runs to start from (the SVD-started control), in the data
cache, not in git: a checkpoint is rebuilt by retraining its run when it is absent. Beside
them, ``stacks/`` holds the state of stacks still training (:func:`stack_state_path`).

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


def _cache(root, folder: str) -> Path:
    """``folder`` of the data root (``root``, else the default one)."""
    from ..tasks.images_data import default_root
    return (Path(root) if root is not None else default_root()) / folder


def checkpoint_path(run: RunConfig, root=None) -> Path:
    """Where ``run``'s trained model is kept."""
    return _cache(root, "checkpoints") / f"{run.name}-{run.run_id}.pt"


def stack_state_path(runs: list[RunConfig], root=None) -> Path:
    """Where a stack of ``runs`` keeps its state while it trains
    (:func:`~lowrank_helpers.training.stacking.train_stacked`'s ``resume``): ``stacks/``,
    named by the runs' ids."""
    import hashlib
    key = hashlib.sha256(" ".join(sorted(r.run_id for r in runs)).encode()).hexdigest()[:16]
    return _cache(root, "stacks") / f"{key}.pt"


def torch_save_atomic(obj, path) -> Path:
    """``torch.save(obj)`` at ``path`` through a temporary file: never a torn file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)
    return path


def save_checkpoint(run: RunConfig, model: torch.nn.Module, final: dict, root=None) -> Path:
    """Keep ``model`` (trained by ``run``, with its ``final`` metrics); written atomically."""
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    return torch_save_atomic(
        {"state_dict": state, "config": run.to_dict(),
         "final": {k: v for k, v in final.items() if isinstance(v, (int, float))}},
        checkpoint_path(run, root))


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
