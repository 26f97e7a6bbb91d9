"""The transformer teacher–student control of the language-model study (its ``teacher``
phase): can B·A from scratch find a rank-r solution that exists?

For each teacher rank k of ``teacher_ranks``, the teacher is the anchor (seed 0) cut to rank
k (:mod:`lowrank_helpers.tasks.distill`); the students, of the same shape, are the dense
model and all six projections factorized at k/2, k and 2k (those that fit), each trained on
the teacher's distributions with its rate searched on the study's grid (seed 0 at every rate,
extended at an edge, then the seeds at the choice; no refinement: every rate tried is
reported). Records go to ``<results_dir>/distill``.
"""
from __future__ import annotations

from pathlib import Path

from ..core.protocol import RunConfig

#: Where the students' records go, under the study's results folder.
DISTILL_DIR = "distill"


def teacher_task(corpus: str, k: int) -> str:
    """The distillation task of ``corpus`` whose teacher has rank ``k``."""
    from ..tasks import TASKS
    from ..tasks.distill import CharDistill
    found = [t.name for t in TASKS.values() if isinstance(t, CharDistill)
             and t.corpus == corpus and t.teacher_rank == k]
    if not found:
        have = sorted(t.teacher_rank for t in TASKS.values()
                      if isinstance(t, CharDistill) and t.corpus == corpus)
        raise ValueError(f"no teacher of rank {k} on {corpus!r} is registered; teacher ranks: "
                         f"{', '.join(map(str, have)) or 'none'}")
    return found[0]


def student_ranks(k: int, d_model: int) -> list[int]:
    """Below, at and above the teacher's rank: k/2, k, 2k (those from 1 to d_model)."""
    return [r for r in (k // 2, k, 2 * k) if 1 <= r <= d_model]


def students(cfg, vocab: int, k: int) -> list[RunConfig]:
    """Seed-0 runs of the students of the rank-``k`` teacher, at the grid's first rate."""
    task = teacher_task(cfg.corpus, k)
    base = RunConfig(task, "full", shape=cfg.shape(vocab), protocol=cfg.protocol(cfg.lrs[0]))
    return [base] + [base.replace(method="lora", targets="both", rank=r, init=cfg.inits[0])
                     for r in student_ranks(k, cfg.d_model)]


def teacher_phase(cfg, full_splits, vocab: int, bar) -> None:
    """The anchor's seed 0 (trained if it has no record) kept as a checkpoint, then every
    teacher's students: search and seeds."""
    from .lm import _search_and_seeds, _train
    from .svd import ensure_checkpoints
    from ..core.devices import resolve_device
    from ..training.lm import LMRun
    anchor = LMRun(cfg.corpus, cfg.shape(vocab), protocol=cfg.protocol(1e-3, tune=False))
    _train([anchor], cfg, bar)
    ensure_checkpoints([anchor], full_splits, cfg.results_dir, resolve_device(cfg.device), bar)
    where = str(Path(cfg.results_dir) / DISTILL_DIR)
    for k in cfg.teacher_ranks:
        _search_and_seeds(students(cfg, vocab, k), cfg, bar, cfg.seeds, results_dir=where,
                          refine=False)
