"""Training character LMs: many runs of the character task at once, and one alone.

A run is a :class:`~lowrank_helpers.protocol.RunConfig` of a character task
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

import copy
import math
import time
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F
from torch.func import functional_call, stack_module_state, vmap

from .charlm import CharTransformer, LMShape
from .devices import as_device, device_name
from .protocol import Protocol, RunConfig
from .tasks.chars import lm_protocol
from .text import CORPORA, Splits

LN2 = math.log(2.0)

#: nanoGPT's protocol at its CPU size, under its first name (``iters``, ``tune_chars`` and
#: ``eval_windows`` are accepted for ``steps``, ``val_size`` and ``eval_samples``).
LMProtocol = lm_protocol


def _task_of_corpus(corpus: str) -> str:
    from .tasks import TASKS
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
    from .charlm import check_factorize
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


def stack_key(run: RunConfig) -> tuple:
    """Runs with equal keys train together: same shape, method, targets, rank and schedule
    (lr, min_lr, seed and init may differ)."""
    proto = replace(run.protocol, lr=1.0, min_lr=0.0)
    return (run.task, run.shape, run.method, run.targets, run.rank, run.options, proto)


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


class StackedAdamW:
    """AdamW (Loshchilov & Hutter, 2019) as ``torch.optim.AdamW`` computes it, over stacked
    parameters (M, ...) with one learning rate per model, and per-model gradient clipping as
    ``clip_grad_norm_`` does it."""

    def __init__(self, params: list[torch.Tensor], decays: list[bool], protocol: Protocol,
                 eps: float = 1e-8):
        self.params, self.decays, self.p, self.eps = params, decays, protocol, eps
        self.m = [torch.zeros_like(q) for q in params]
        self.v = [torch.zeros_like(q) for q in params]
        self.t = 0

    @torch.no_grad()
    def clip(self, max_norm: float) -> torch.Tensor:
        """Scale each model's gradients to norm ≤ max_norm; returns the norms before (M,)."""
        sq = sum(q.grad.pow(2).flatten(1).sum(1) for q in self.params)
        norms = sq.sqrt()
        coef = (max_norm / (norms + 1e-6)).clamp(max=1.0)
        for q in self.params:
            q.grad.mul_(coef.view(-1, *[1] * (q.dim() - 1)))
        return norms

    @torch.no_grad()
    def step(self, lrs: torch.Tensor) -> None:
        """One step at the per-model learning rates ``lrs`` (M,)."""
        self.t += 1
        b1, b2 = self.p.beta1, self.p.beta2
        c1, c2 = 1 - b1 ** self.t, math.sqrt(1 - b2 ** self.t)
        for q, m, v, decays in zip(self.params, self.m, self.v, self.decays):
            lr = lrs.view(-1, *[1] * (q.dim() - 1)).to(q.device, q.dtype)
            if decays and self.p.weight_decay:
                q.mul_(1 - lr * self.p.weight_decay)
            m.lerp_(q.grad, 1 - b1)
            v.mul_(b2).addcmul_(q.grad, q.grad, value=1 - b2)
            q.sub_(lr / c1 * m / (v.sqrt() / c2 + self.eps))
            q.grad = None


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


class _Stack:
    """M models of one shape as stacked parameters and a vmapped loss."""

    def __init__(self, models: list[CharTransformer]):
        self.params, self.buffers = stack_module_state(models)
        self.base = copy.deepcopy(models[0]).to("meta")
        for block in self.base.blocks:
            block.fused_attention = False
        self.names = list(self.params)
        vocab = models[0].shape.vocab_size

        def loss(p, b, x, y):
            logits = functional_call(self.base, (p, b), (x,))   # (N, T, V)
            return F.cross_entropy(logits.reshape(-1, vocab), y.reshape(-1))
        self.loss = vmap(loss)                           # batches: (M, N, T) each
        self.loss_shared = vmap(loss, in_dims=(0, 0, None, None))  # one batch for all

    def tensors(self):
        return [self.params[n] for n in self.names]

    def unstack(self, models: list[CharTransformer]) -> None:
        """Copy the trained parameters back into ``models`` (for sampling and analysis)."""
        with torch.no_grad():
            for i, model in enumerate(models):
                own = dict(model.named_parameters())
                for n in self.names:
                    own[n].copy_(self.params[n][i])

    @torch.no_grad()
    def evaluate(self, x: torch.Tensor, y: torch.Tensor, chunk: int = 128) -> torch.Tensor:
        """Mean cross-entropy per character of each model on windows ``x``, ``y`` (M,)."""
        total = 0.0
        for i in range(0, len(x), chunk):
            total = total + self.loss_shared(self.params, self.buffers, x[i:i + chunk],
                                             y[i:i + chunk]) * len(x[i:i + chunk])
        return total / len(x)


def check_stack(runs: list[RunConfig]) -> None:
    from .methods import METHODS
    keys = {stack_key(r) for r in runs}
    if len(keys) != 1:
        raise ValueError("runs trained together must share task, shape, method, targets, rank "
                         "and protocol (all but lr, min_lr, seed and init); got "
                         f"{len(keys)} different ones")
    if not METHODS[runs[0].method].stackable:
        raise ValueError(f"method {runs[0].method!r} changes the training step (its own "
                         "groups, optimizer or hook): train its runs alone (train_lm_eager)")


def _sample(model: CharTransformer, splits: Splits, chars: int, seed: int) -> str:
    gen = torch.Generator().manual_seed(seed)
    start = torch.tensor([[splits.chars.index("\n") if "\n" in splits.chars else 0]])
    return splits.decode(model.generate(start, chars, generator=gen)[0, 1:])


def train_lms(runs: list[RunConfig], splits: Splits, progress=None, sample_chars: int = 0,
              dtype=torch.float32, device="cpu") -> list[LMResult]:
    """Train ``runs`` together (one stack, :func:`check_stack`) on ``splits``; evaluate every
    ``eval_every`` steps on ``eval_samples`` windows of the tuning slice (if any) and the
    held-out split, and at the end on all of both. ``progress(n)`` is called after each step.
    Windows are drawn on the CPU (the same on every device), the models train on ``device``."""
    device = as_device(device)
    check_stack(runs)
    proto, shape = runs[0].protocol, runs[0].shape
    if shape.vocab_size != splits.vocab_size:
        raise ValueError(f"the model's vocab_size is {shape.vocab_size}, the corpus "
                         f"{splits.corpus!r} has {splits.vocab_size} characters")
    models = [r.build().to(device=device, dtype=dtype) for r in runs]
    stack = _Stack(models)
    opt = StackedAdamW(stack.tensors(), decay_mask((n, p) for n, p in models[0].named_parameters()
                                                   if n in stack.params), proto)
    gens = [batch_generator(r.seed) for r in runs]
    on = lambda xy: tuple(t.to(device) for t in xy)
    evals = {"val": on(windows(splits.val, shape.block_size, proto.eval_samples))}
    if len(splits.tune):
        evals["tune"] = on(windows(splits.tune, shape.block_size, proto.eval_samples))
    results = [LMResult(stack_size=len(runs)) for _ in runs]
    seen = torch.zeros(len(runs), dtype=torch.float64)
    start, since = time.perf_counter(), 0
    total = proto.total_steps()
    for it in range(total):
        xs, ys = zip(*(get_batch(splits.train, shape.block_size, proto.batch_size, g)
                       for g in gens))
        losses = stack.loss(stack.params, stack.buffers, torch.stack(xs).to(device),
                            torch.stack(ys).to(device))
        losses.sum().backward()
        if proto.grad_clip:
            opt.clip(proto.grad_clip)
        lrs = torch.tensor([r.protocol.lr_at(it, total) for r in runs], dtype=torch.float64)
        opt.step(lrs)
        seen += losses.detach().double()
        since += 1
        for i, loss in enumerate(losses.detach().tolist()):
            if not math.isfinite(loss) and results[i].diverged_iter is None:
                results[i].diverged_iter = it
        if (it + 1) % proto.eval_every == 0 or it + 1 == total:
            row = {"iter": it + 1, "seconds": time.perf_counter() - start}
            scores = {k: stack.evaluate(*v).tolist() for k, v in evals.items()}
            for i, res in enumerate(results):
                res.history.append({**row, "train_loss": float(seen[i] / since),
                                    "lr": runs[i].protocol.lr_at(it, total),
                                    **{f"{k}_loss": s[i] for k, s in scores.items()}})
            seen.zero_()
            since = 0
        if progress is not None:
            progress(1)
    seconds = time.perf_counter() - start
    finals = {"val": stack.evaluate(*on(windows(splits.val, shape.block_size)))}
    if len(splits.tune):
        finals["tune"] = stack.evaluate(*on(windows(splits.tune, shape.block_size)))
    stack.unstack(models)
    models = [m.cpu() for m in models]
    for i, res in enumerate(results):
        for k, v in finals.items():
            res.final[f"{k}_loss"] = float(v[i])
            res.final[f"{k}_bits"] = float(v[i]) / LN2
        res.seconds, res.model, res.device = seconds, models[i], device_name(device)
        if sample_chars:
            res.final["sample"] = _sample(models[i], splits, sample_chars, runs[i].seed)
    return results


def train_lm_eager(run: RunConfig, splits: Splits, iters: int | None = None,
                   dtype=torch.float32) -> tuple[CharTransformer, list[float]]:
    """nanoGPT's loop for one model: ``torch.optim.AdamW`` with its two groups,
    ``clip_grad_norm_``, the same windows as :func:`train_lms`. Returns the model and the
    loss of every step (the reference for tests and the benchmark)."""
    proto, shape = run.protocol, run.shape
    model = run.build().to(dtype)
    named = list(model.named_parameters())
    groups = [{"params": [p for (_, p), d in zip(named, decay_mask(named)) if d],
               "weight_decay": proto.weight_decay},
              {"params": [p for (_, p), d in zip(named, decay_mask(named)) if not d],
               "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=proto.lr, betas=(proto.beta1, proto.beta2),
                            foreach=False)
    gen = batch_generator(run.seed)
    losses = []
    total = proto.total_steps()
    for it in range(total if iters is None else iters):
        x, y = get_batch(splits.train, shape.block_size, proto.batch_size, gen)
        loss = F.cross_entropy(model(x).reshape(-1, shape.vocab_size), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if proto.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), proto.grad_clip)
        for g in opt.param_groups:
            g["lr"] = proto.lr_at(it, total)
        opt.step()
        losses.append(loss.item())
    return model, losses


def lm_record(run: RunConfig, result: LMResult) -> dict:
    """The record of a finished LM run: config (the shape under its own names beside the
    protocol), parameters, history, final losses, cost and provenance."""
    from . import __version__
    from .results import _finite_or_none, git_commit
    import platform
    tokens = run.protocol.total_steps() * run.protocol.batch_size * run.shape.block_size
    return _finite_or_none({
        "schema": "lm-1", "run_id": run.run_id, "name": run.name, "config": run.to_dict(),
        "parameters": run.task_spec.parameters(run), "history": result.history,
        "final": result.final,
        "diverged_iter": result.diverged_iter,
        "cost": {"training_flops_per_token": run.task_spec.training_flops(run),
                 "tokens": tokens, "seconds": result.seconds, "stack_size": result.stack_size,
                 "tokens_per_second": tokens * result.stack_size / result.seconds
                 if result.seconds else None},
        "device": result.device, "torch_threads": torch.get_num_threads(),
        "versions": {"lowrank_helpers": __version__, "torch": torch.__version__,
                     "python": platform.python_version()},
        "git_commit": git_commit(),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    })
