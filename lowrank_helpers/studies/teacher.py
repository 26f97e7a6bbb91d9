"""Teacher–student control: does a factorized student's loss follow the teacher's spectrum?

A dense teacher W (d_out × d_in) with chosen singular values σ_1 ≥ σ_2 ≥ … (flat, power law or
exponential; random singular vectors) maps x ~ N(0, I) to y = Wx. A student B·A of rank r
learns it from fresh samples with AdamW. Its population loss is exactly
E‖(W − BA)x‖²/d_out = ‖W − BA‖²_F/d_out, and no rank-r matrix does better than the tail
Σ_{i>r} σ_i²/d_out (Eckart & Young, 1936). A student at the floor says the optimizer and the
init find what rank r allows, so its loss against rank is the teacher's spectrum; a student
above it says they do not.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd
import torch

from ..models.layers import LowRankLinear
from ..training.lm import LMProtocol, StackedAdamW

#: Singular-value profiles σ_i (i = 1…n), before scaling to ‖W‖²_F = d_out.
SPECTRA = {
    "flat": lambda i: torch.ones_like(i),
    "power": lambda i: i ** -1.0,            # σ_i ∝ 1/i
    "exponential": lambda i: torch.exp(-i / 8.0),   # σ_i ∝ e^(−i/8)
}


def teacher(kind: str, d: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A d×d teacher with spectrum ``kind`` and ‖W‖²_F = d (outputs of unit variance), and
    its singular values; float64."""
    if kind not in SPECTRA:
        raise ValueError(f"unknown spectrum {kind!r}; valid: {', '.join(SPECTRA)}")
    gen = torch.Generator().manual_seed(seed)
    s = SPECTRA[kind](torch.arange(1, d + 1, dtype=torch.float64))
    s = s * math.sqrt(d / (s ** 2).sum())
    u, _ = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))
    return u @ torch.diag(s) @ v.T, s


def floor(s: torch.Tensor, rank: int) -> float:
    """The best rank-r loss Σ_{i>r} σ_i² / d_out (Eckart–Young)."""
    return float((s[rank:] ** 2).sum() / len(s))


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


def run_teacher_student(cfg: TeacherConfig = TeacherConfig(), progress: bool = True
                        ) -> pd.DataFrame:
    """Every (spectrum, init, lr) student at every rank, trained together per rank with AdamW
    (no weight decay, cosine to lr/10 as the LM study); one row per student with its final
    loss and the floor. The best rate per (spectrum, init, rank) is the study's answer."""
    from tqdm.auto import tqdm
    teachers = {k: teacher(k, cfg.d, cfg.seed) for k in cfg.spectra}
    combos = [(k, i, lr) for k in cfg.spectra for i in cfg.inits for lr in cfg.lrs]
    proto = LMProtocol(steps=cfg.steps, lr=1.0, min_lr=0.1, warmup_steps=0, weight_decay=0.0,
                       grad_clip=0.0)
    rows = []
    bar = tqdm(total=len(cfg.ranks) * cfg.steps, desc="teacher-student", disable=not progress)
    for rank in cfg.ranks:
        a, b = [], []
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed + rank)
            for _, init, _ in combos:
                layer = LowRankLinear(cfg.d, cfg.d, rank, bias=False, init=init)
                a.append(layer.A.detach())
                b.append(layer.B.detach())
        A = torch.stack(a).requires_grad_()      # (M, r, d_in)
        B = torch.stack(b).requires_grad_()      # (M, d_out, r)
        W = torch.stack([teachers[k][0].float() for k, _, _ in combos])  # (M, d_out, d_in)
        peaks = torch.tensor([lr for *_, lr in combos], dtype=torch.float64)
        opt = StackedAdamW([A, B], [False, False], proto)
        gen = torch.Generator().manual_seed(cfg.seed)
        for step in range(cfg.steps):
            x = torch.randn(cfg.batch, cfg.d, generator=gen)               # (N, d_in)
            err = (x @ A.transpose(1, 2)) @ B.transpose(1, 2) - x @ W.transpose(1, 2)
            loss = err.pow(2).mean(dim=(1, 2))                              # (M,)
            loss.sum().backward()
            opt.step(peaks * proto.lr_at(step, cfg.steps))
            bar.update(1)
        with torch.no_grad():
            final = ((W.double() - B.double() @ A.double()) ** 2).sum(dim=(1, 2)) / cfg.d
        for (kind, init, lr), f in zip(combos, final.tolist()):
            rows.append({"spectrum": kind, "init": init, "lr": lr, "rank": rank,
                         "loss": f, "floor": floor(teachers[kind][1], rank)})
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
        if stored.get("config") == want:
            return pd.DataFrame(stored["students"])
    df = run_teacher_student(cfg, progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_atomic({"config": want, "students": df.to_dict(orient="records")}, path)
    return df
