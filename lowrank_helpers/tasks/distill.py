"""A teacher–student control that can discriminate: students learn a low-rank transformer's
next-character distributions.

The teacher is the trained dense transformer (the anchor of the student's protocol: nanoGPT's
lr 1e-3 on the whole training split, seed ``teacher_seed``, kept as a checkpoint,
:mod:`lowrank_helpers.core.checkpoints`) with every block projection cut to rank k by its SVD
(:mod:`lowrank_helpers.methods.svd_start`). A student of the same shape is trained by
cross-entropy on the teacher's distributions over the training split's windows (Hinton et al.,
2015, at temperature 1): its loss is KL(teacher ‖ student) plus the teacher's entropy, so the
floor is the teacher itself, KL = 0.

A student with all six projections factorized at rank r ≥ k, and a dense student, can
express the teacher exactly (its projections have rank k; every other tensor is free). Such a
student that ends measurably above KL = 0 shows B·A (or W) trained from scratch failing to
find a solution that exists; students at r < k show what the missing rank costs.

One task per teacher rank (``shakespeare_teacher8``, ``shakespeare_teacher32``; the smoke
tests' ``python_teacher2``), so that a run's id names its teacher. Metrics: ``val_kl`` and
``tune_kl`` (nats per character, against the teacher), ``val_loss`` and ``tune_loss`` (against
the real next characters, as the language-model task scores them).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from ..models.charlm import FACTORIZE
from .base import register_task
from .chars import LM_METRICS, TASKS_CORPUS, TASKS_SMOKE, CharLM

if TYPE_CHECKING:
    from ..core.protocol import RunConfig

DISTILL_METRICS = {
    **LM_METRICS,
    "val_kl": "KL(teacher ‖ student) per held-out character (nats): 0 where the student "
              "predicts as the teacher does; during training on eval_samples windows, at the "
              "end on all of the held-out split",
    "tune_kl": "the same on the tuning slice, where learning rates are chosen",
    "train_loss": "mean over the steps since the last evaluation of the batch's cross-entropy "
                  "against the teacher's distributions (KL plus the teacher's entropy, nats)",
}
#: nanoGPT's learning rate: the anchor's, the teacher's source.
ANCHOR_LR = 1e-3
#: Added to a student's seed for its init (:meth:`CharDistill.init_seed`).
STUDENT_SEED_OFFSET = 1_000_003


@dataclass(frozen=True)
class CharDistill(CharLM):
    """Students of a rank-``teacher_rank`` teacher on a character corpus (module doc)."""
    teacher_rank: int = 8
    teacher_seed: int = 0

    def init_seed(self, run: "RunConfig") -> int:
        """A student's init is drawn from its seed plus :data:`STUDENT_SEED_OFFSET`, so that
        no student starts from the init of an anchor a teacher was trained from (the
        embeddings are drawn first, from the same stream, and the trained W keeps part of its
        init)."""
        return run.seed + STUDENT_SEED_OFFSET

    # -- the teacher ------------------------------------------------------------------------
    def anchor(self, run: "RunConfig") -> "RunConfig":
        """The dense model the teacher is cut from: the anchor of ``run``'s protocol (the
        student's shape and budget; nanoGPT's lr, the whole training split)."""
        from ..core.protocol import RunConfig
        from .chars import min_lr_for
        from ..training.lm import _task_of_corpus
        return RunConfig(_task_of_corpus(self.corpus), "full", shape=run.shape,
                         seed=self.teacher_seed,
                         protocol=run.protocol, lr=ANCHOR_LR, min_lr=min_lr_for(ANCHOR_LR),
                         val_size=0)

    def teacher_run(self, run: "RunConfig") -> "RunConfig":
        from ..studies.svd import svd_run
        return svd_run(self.anchor(run), self.teacher_rank)

    def teacher(self, run: "RunConfig") -> torch.nn.Module:
        """The teacher of ``run`` (built once per process)."""
        return _teacher(self.teacher_run(run))

    # -- training and evaluation ------------------------------------------------------------
    def batches(self, run: "RunConfig", data):
        """The language-model task's windows, each with the teacher's log-probabilities of
        every next character, (N, T, vocab)."""
        teacher = self.teacher(run)
        for x, _ in super().batches(run, data):
            with torch.no_grad():       # left before the yield: grad mode is the caller's
                target = F.log_softmax(teacher(x), dim=-1)
            yield x, target

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Cross-entropy against the teacher's distributions ``y`` (log-probabilities):
        −Σ p_teacher · log p_student, the mean over every position."""
        return -(y.exp() * F.log_softmax(logits, dim=-1)).sum(-1).mean()

    def evaluate(self, model, data, protocol, final: bool = False) -> dict:
        run = _run_of_model(self, model, protocol)
        device = next(model.parameters()).device
        return self.evaluate_many(lambda x: model(x.to(device))[None], run, data, final)[0]

    def evaluate_many(self, forward, run: "RunConfig", data, final: bool = False) -> list[dict]:
        """KL to the teacher and the real next characters' cross-entropy, on the held-out
        split and the tuning slice (all windows when ``final``), for every stacked model."""
        from ..training.lm import windows
        teacher = self.teacher(run)
        block = run.shape.block_size
        n = None if final else run.protocol.eval_samples
        out = None
        was = teacher.training
        teacher.eval()
        for split in ("val", "tune"):
            tokens = getattr(data, split)
            if len(tokens) <= block:
                continue
            x, y = windows(tokens, block, n)
            kl = ce = None
            with torch.no_grad():
                for i in range(0, len(x), 128):
                    xb, yb = x[i:i + 128], y[i:i + 128]
                    logits = forward(xb)                                 # (M, n, T, V)
                    dev = logits.device
                    lp_t = F.log_softmax(teacher(xb), -1).to(dev)         # (n, T, V)
                    lp_s = F.log_softmax(logits, -1)                      # (M, n, T, V)
                    k = (lp_t.exp() * (lp_t - lp_s)).sum(-1).mean((1, 2)).double() * len(xb)
                    c = -lp_s.gather(-1, yb.to(dev).expand(lp_s.shape[:-1])[..., None]
                                     ).squeeze(-1).mean((1, 2)).double() * len(xb)
                    kl, ce = (k, c) if kl is None else (kl + k, ce + c)
            out = out or [{} for _ in range(len(kl))]
            for m in range(len(kl)):
                out[m][f"{split}_kl"] = (kl[m] / len(x)).item()
                out[m][f"{split}_loss"] = (ce[m] / len(x)).item()
        teacher.train(was)
        return out or []

    # -- ids --------------------------------------------------------------------------------
    def canonical(self, run: "RunConfig", seed: bool = True, model: bool = True) -> dict:
        """The language-model layout with the task's name (which names the teacher)."""
        return {"task": self.name, **super().canonical(run, seed, model)}

    def from_config(self, d: dict) -> dict:
        d = dict(d)
        d.pop("task", None)
        return super().from_config(d)

    def name_of(self, run: "RunConfig") -> str:
        return f"{self.name}-{super().name_of(run).split('-', 1)[1]}"


def _run_of_model(task, model, protocol):
    from ..core.protocol import RunConfig
    return RunConfig(task.name, "full", shape=model.shape, protocol=protocol)


@lru_cache(maxsize=4)
def _teacher(run: "RunConfig") -> torch.nn.Module:
    model = run.build()
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def _register(name: str, title: str, corpus: str, k: int, smoke: str | None) -> None:
    register_task(CharDistill(name, title, DISTILL_METRICS,
                              targets={t: v for t, v in FACTORIZE.items() if t != "none"},
                              default_targets="both", score="val_kl", higher_is_better=False,
                              entry="iter", selection=(("tune_kl", -1),), corpus=corpus,
                              teacher_rank=k))
    TASKS_CORPUS[name] = corpus
    if smoke:
        TASKS_SMOKE[name] = smoke


_register("python_teacher2", "Python source, a rank-2 teacher", "python_stdlib", 2, None)
for _k in (8, 32):
    _register(f"shakespeare_teacher{_k}", f"tiny-shakespeare, a rank-{_k} teacher",
              "tinyshakespeare", _k, "python_teacher2")
