"""Training character LMs: many runs of the character task at once, and one alone.

A run is a :class:`~lowrank_helpers.core.protocol.RunConfig` of a character task
(:mod:`lowrank_helpers.tasks.chars`); its protocol defaults to nanoGPT's ``train.py`` loop
with its ``shakespeare_char`` settings (:func:`~lowrank_helpers.tasks.lm_protocol`: AdamW, β2
0.99, weight decay 0.1 on the matrices, linear warm-up then cosine decay to ``min_lr``,
gradient clipping at 1.0, random windows of the training split). :func:`LMRun` and
:func:`LMProtocol` build them under the language-model study's first names.

:func:`train_lms` trains runs that share a model shape, method, targets, rank and schedule but
may differ in seed, init and learning rate as one batched computation: the PyTorch
model-ensembling recipe, ``torch.func.stack_module_state`` + ``vmap`` over ``functional_call``,
with AdamW and clipping written per model (each model's own lr and gradient norm).
:func:`train_lm_eager` is the plain loop (``torch.optim.AdamW``, ``clip_grad_norm_``), one model
at a time: the reference the batched one is tested and benchmarked against.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..models.charlm import CharTransformer, LMShape
from ..core.protocol import Protocol, RunConfig
from .stacking import StackedAdamW, check_stack, stack_key, train_stacked  # noqa: F401
from ..tasks.chars import lm_protocol
from ..tasks.text import CORPORA, Splits

LN2 = math.log(2.0)

#: nanoGPT's protocol at its CPU size, under its first name (``iters``, ``tune_chars`` and
#: ``eval_windows`` are accepted for ``steps``, ``val_size`` and ``eval_samples``).
LMProtocol = lm_protocol


def _task_of_corpus(corpus: str) -> str:
    from ..tasks import TASKS
    found = [t.name for t in TASKS.values() if getattr(t, "corpus", None) == corpus]
    if not found:
        raise ValueError(f"unknown corpus {corpus!r}; valid corpora: {', '.join(CORPORA)}")
    return found[0]


def LMRun(corpus: str = "tinyshakespeare", shape: LMShape = LMShape(), factorize: str = "none",
          rank=None, init=None, seed: int = 0, protocol: Protocol | None = None,
          method: str | None = None, options=None) -> RunConfig:
    """A run of the character task of ``corpus`` under the language-model study's first
    names: ``factorize`` is the target set (``"none"``: the dense model), the method ``lora``
    unless given."""
    from ..models.charlm import check_factorize
    check_factorize(factorize)
    if factorize == "none":
        if rank is not None or init is not None:
            raise ValueError("the dense model (factorize='none') takes no rank or init")
        method, targets = method or "full", None
    else:
        method, targets = method or "lora", factorize
    return RunConfig(_task_of_corpus(corpus), method, rank, init, seed=seed, shape=shape,
                     protocol=protocol if protocol is not None else lm_protocol(),
                     targets=targets, options=options)


def batch_generator(seed: int) -> torch.Generator:
    """The generator of a run's training windows (its own stream: seed-paired runs see the
    same windows, whatever else trains beside them)."""
    return torch.Generator().manual_seed(10_000 + seed)


def get_batch(data: torch.Tensor, block: int, batch: int, gen: torch.Generator):
    """nanoGPT's ``get_batch``: ``batch`` random windows of ``block`` characters and their
    next-character targets, each (batch, block)."""
    ix = torch.randint(len(data) - block, (batch,), generator=gen).tolist()
    x = torch.stack([data[i:i + block] for i in ix])
    y = torch.stack([data[i + 1:i + 1 + block] for i in ix])
    return x, y


def windows(data: torch.Tensor, block: int, n: int | None = None):
    """Non-overlapping windows covering ``data`` (or ``n`` of them, evenly spread) and their
    targets: every held-out character is scored once, with the context nanoGPT's windows give."""
    count = (len(data) - 1) // block
    starts = torch.arange(count) * block
    if n is not None and n < count:
        starts = starts[torch.linspace(0, count - 1, n).round().long()]
    idx = starts[:, None] + torch.arange(block)
    return data[idx], data[idx + 1]


def decay_mask(names_and_params) -> list[bool]:
    """nanoGPT's groups: every tensor of ≥ 2 dimensions decays (matrices, embeddings), the
    rest (LayerNorm weights) does not."""
    return [p.dim() >= 2 for _, p in names_and_params]


@dataclass
class LMResult:
    """What :func:`train_lms` returns per run."""
    history: list = field(default_factory=list)
    final: dict = field(default_factory=dict)
    diverged_iter: int | None = None
    seconds: float = 0.0
    stack_size: int = 1
    model: CharTransformer | None = None   # trained, on the CPU
    device: str = "cpu"


def _sample(model: CharTransformer, splits: Splits, chars: int, seed: int) -> str:
    gen = torch.Generator().manual_seed(seed)
    start = torch.tensor([[splits.chars.index("\n") if "\n" in splits.chars else 0]])
    return splits.decode(model.generate(start, chars, generator=gen)[0, 1:])


def train_lms(runs: list[RunConfig], splits: Splits, progress=None, sample_chars: int = 0,
              dtype=torch.float32, device="cpu") -> list[LMResult]:
    """Train ``runs`` together (one stack) on ``splits`` through the one stacked path
    (:func:`~lowrank_helpers.training.stacking.train_stacked`): evaluated every ``eval_every`` steps on
    ``eval_samples`` windows of the tuning slice (if any) and the held-out split, and at the
    end on all of both; ``sample_chars`` characters sampled from each trained model.
    ``progress(n)`` is called after each step. Windows are drawn on the CPU (the same on every
    device), the models train on ``device``."""
    shape = runs[0].shape
    if shape.vocab_size != splits.vocab_size:
        raise ValueError(f"the model's vocab_size is {shape.vocab_size}, the corpus "
                         f"{splits.corpus!r} has {splits.vocab_size} characters")
    out = []
    for run, res in zip(runs, train_stacked(runs, splits, device=device, dtype=dtype,
                                            progress=progress)):
        final = {}
        for k, v in res.final.items():
            final[k] = v
            final[k.replace("_loss", "_bits")] = v / LN2
        if sample_chars:
            final["sample"] = _sample(res.model, splits, sample_chars, run.seed)
        out.append(LMResult(history=res.history, final=final, diverged_iter=res.diverged,
                            seconds=res.wall_time, stack_size=res.stack_size, model=res.model,
                            device=res.device))
    return out


def retrain(runs: list[RunConfig], splits: Splits, device="cpu", bar=None, what: str = ""):
    """Train ``runs`` again, those that share a stack together (:func:`train_lms`), yielding
    (run, LMResult) as each stack ends; ``bar`` (a tqdm) counts their steps, its postfix
    ``what`` and the stack. For a control that needs the trained model of a recorded run."""
    from collections import defaultdict
    stacks = defaultdict(list)
    for run in runs:
        stacks[stack_key(run)].append(run)
    for group in stacks.values():
        if bar is not None:
            bar.set_postfix_str(f"{what}{group[0].label} ×{len(group)}")
        progress = (lambda n, k=len(group): bar.update(n * k)) if bar is not None else None
        yield from zip(group, train_lms(group, splits, progress=progress, device=device))


def another_model(path, what: str, gap: float, tolerance: float, consequence: str) -> bool:
    """Whether a retrained run (:func:`retrain`) is another model than its record at ``path``
    says: ``what`` (its measure) differs by ``gap`` > ``tolerance``; then a warning says so and
    what follows (``consequence``)."""
    if gap <= tolerance:
        return False
    import warnings
    warnings.warn(f"{Path(path).name}: retrained, its {what} differs from the record's by "
                  f"{gap:.2g} (> {tolerance:g}): another model; {consequence}", stacklevel=3)
    return True


def train_lm_eager(run: RunConfig, splits: Splits, dtype=torch.float32
                   ) -> tuple[CharTransformer, list[dict]]:
    """One model through the one training loop (:func:`~lowrank_helpers.training.trainer.fit`:
    nanoGPT's ``train.py``, ``torch.optim.AdamW`` with its two groups, ``clip_grad_norm_``, the
    same windows as :func:`train_lms`), without the final reading of the whole splits.
    Returns the trained model and its history (the reference for tests and the benchmark)."""
    from .trainer import fit
    result = fit(run, splits, dtype=dtype, progress=False, final_eval=False)
    return result.model, result.history
