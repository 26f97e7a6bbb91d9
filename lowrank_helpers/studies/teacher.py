"""The linear teacher–student control: does a factorized student's loss follow the teacher's
spectrum? The task (teachers, students, the Eckart–Young floor) is
:mod:`lowrank_helpers.tasks.linear`; this module trains every (spectrum, init, rate) student
at every rank through the one stacked trainer and keeps the table of their final losses.
"""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from ..tasks.linear import SPECTRA, floor, linear_protocol

#: Stored tables of an older trainer are retrained (its own loop drew the inits in sequence).
STUDENTS_SCHEMA = 2


@dataclass(frozen=True)
class TeacherConfig:
    d: int = 128                                  # the LM's d_model: its attention matrices
    ranks: tuple = (1, 2, 4, 8, 16, 32, 64, 128)
    spectra: tuple = tuple(SPECTRA)
    inits: tuple = ("lora", "default", "he", "spectral")
    lrs: tuple = (1e-3, 1e-2, 1e-1)
    steps: int = 2000
    batch: int = 256
    seed: int = 0


def students(cfg: "TeacherConfig") -> list:
    """The runs of ``cfg``: every (spectrum, init, rate) student at every rank, seed
    ``cfg.seed`` (all see the same samples; one init per (init, rank))."""
    from ..core.protocol import RunConfig
    proto = linear_protocol(steps=cfg.steps, batch_size=cfg.batch)
    out = []
    for rank in cfg.ranks:
        for kind in cfg.spectra:
            for init in cfg.inits:
                run = RunConfig(f"linear_{kind}", "lora", rank=rank, init=init, shape=cfg.d,
                                seed=cfg.seed, protocol=proto)
                out += [run.task_spec.at_rate(run, lr) for lr in cfg.lrs]
    return out


def run_teacher_student(cfg: TeacherConfig = TeacherConfig(), progress: bool = True
                        ) -> pd.DataFrame:
    """Train :func:`students` (those of one spectrum and rank together, through
    :func:`~lowrank_helpers.training.stacking.train_stacked`); one row per student with its
    final population loss and the floor. The best rate per (spectrum, init, rank) is the
    study's answer."""
    from itertools import groupby
    from tqdm.auto import tqdm
    from ..training.stacking import train_stacked
    runs = students(cfg)
    rows = []
    bar = tqdm(total=len(cfg.ranks) * len(cfg.spectra) * cfg.steps,   # a stack's steps each
               desc="teacher-student", disable=not progress)
    for (task, rank), group in groupby(runs, key=lambda r: (r.task, r.rank)):
        group = list(group)
        spec = group[0].task_spec
        data = spec.load(group[0].protocol)
        for run, res in zip(group, train_stacked(group, data, progress=bar.update)):
            rows.append({"spectrum": spec.spectrum, "init": run.init, "lr": run.protocol.lr,
                         "rank": rank, "loss": res.final["val_loss"],
                         "floor": floor(data(cfg.d)[1], rank)})
    bar.close()
    return pd.DataFrame(rows)


def best_students(df: pd.DataFrame) -> pd.DataFrame:
    """The lowest loss over rates per (spectrum, init, rank), with excess = loss − floor as a
    fraction of the teacher's energy (1: the student learned nothing)."""
    best = df.loc[df.groupby(["spectrum", "init", "rank"]).loss.idxmin()].copy()
    best["excess"] = best.loss - best.floor
    return best.reset_index(drop=True)


def stored_students(path) -> pd.DataFrame | None:
    """The students stored at ``path`` by :func:`teacher_results`, or None if there are none."""
    import json
    from pathlib import Path
    path = Path(path)
    return pd.DataFrame(json.loads(path.read_text())["students"]) if path.exists() else None


def teacher_results(path, cfg: TeacherConfig = TeacherConfig(), progress: bool = True
                    ) -> pd.DataFrame:
    """The students of ``cfg``: read from ``path`` (JSON, with the config it was run with) if
    it holds this config's, else trained and written there atomically."""
    import json
    from dataclasses import asdict
    from pathlib import Path
    from ..core.results import _write_atomic
    path = Path(path)
    want = json.loads(json.dumps(asdict(cfg)))
    if path.exists():
        stored = json.loads(path.read_text())
        if stored.get("config") == want and stored.get("schema") == STUDENTS_SCHEMA:
            return pd.DataFrame(stored["students"])
    df = run_teacher_student(cfg, progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_atomic({"schema": STUDENTS_SCHEMA, "config": want, "students": df.to_dict(orient="records")}, path)
    return df
