"""Training character LMs: nanoGPT's protocol, one run's settings, and many runs at once.

:class:`LMProtocol` is nanoGPT's ``train.py`` loop with its ``shakespeare_char`` settings
(AdamW, β2 0.99, weight decay 0.1 on the matrices, linear warm-up then cosine decay to
``min_lr``, gradient clipping at 1.0, random windows of the training split). :class:`LMRun` is
one run: corpus, model shape, factorization and seed beside the protocol; its ``run_id`` hashes
them all.

:func:`train_lms` trains runs that share a model shape, factorization, rank and protocol but
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
from dataclasses import asdict, dataclass, field, replace

import torch
import torch.nn.functional as F
from torch.func import functional_call, stack_module_state, vmap

from .charlm import (FACTORIZE, CharTransformer, LMShape, check_lm_rank, lm_parameters,
                     lm_training_flops)
from .layers import check_init, check_rank
from .devices import as_device, device_name
from .protocol import _hash
from .settings import check_settings, fraction, non_negative, positive, setting, settings_of
from .text import CORPORA, Splits

LN2 = math.log(2.0)


@dataclass(frozen=True)
class LMProtocol:
    """How a character LM is trained and evaluated. The defaults are nanoGPT's
    ``config/train_shakespeare_char.py`` with the README's CPU overrides (batch 12, 2,000
    iterations, cosine decay over all of them, no dropout)."""
    iters: int = setting(2000, "int", "optimizer steps", check=positive)
    batch_size: int = setting(12, "int", "sequences per step", check=positive)
    lr: float = setting(1e-3, "float", "peak learning rate", check=positive)
    min_lr: float = setting(1e-4, "float", "learning rate at the end of the cosine decay",
                            check=non_negative)
    warmup_steps: int = setting(100, "int", "steps of linear warm-up", check=non_negative)
    beta1: float = setting(0.9, "float", "AdamW β1", check=fraction)
    beta2: float = setting(0.99, "float", "AdamW β2", check=fraction)
    weight_decay: float = setting(0.1, "float", "decoupled weight decay of the matrices and "
                                  "embeddings (not of the LayerNorms)", check=non_negative)
    grad_clip: float = setting(1.0, "float", "clip each model's gradient norm to this (0: off)",
                               check=non_negative)
    tune_chars: int = setting(0, "int", "characters cut from the end of the training split "
                              "as the tuning slice (0: train on all of it)", check=non_negative)
    eval_every: int = setting(250, "int", "steps between evaluations", check=positive)
    eval_windows: int = setting(100, "int", "windows of each split in an evaluation during "
                                "training (the final one reads the whole split)", check=positive)

    def __post_init__(self):
        check_settings(self)
        if self.min_lr > self.lr:
            raise ValueError(f"min_lr ({self.min_lr:g}) must not exceed lr ({self.lr:g})")

    def lr_at(self, it: int, lr: float | None = None) -> float:
        """nanoGPT's ``get_lr``: lr·(it+1)/(warmup+1) during the warm-up, then a cosine from
        lr down to min_lr at the last step (Loshchilov & Hutter, 2017)."""
        lr = self.lr if lr is None else lr
        if it < self.warmup_steps:
            return lr * (it + 1) / (self.warmup_steps + 1)
        ratio = min(1.0, (it - self.warmup_steps) / max(1, self.iters - self.warmup_steps))
        return self.min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (lr - self.min_lr)

    def init_decay(self, lr: float | None = None) -> float:
        """γ = Π_t (1 − lr_t · weight_decay): the factor by which AdamW's decoupled weight
        decay (Loshchilov & Hutter, 2019) shrinks a decayed tensor's initial value over the
        run (each step multiplies it by 1 − lr_t·λ before the update is added), so a trained
        W = γ·W₀ + the decayed sum of the updates."""
        gamma = 1.0
        for it in range(self.iters):
            gamma *= 1 - self.lr_at(it, lr) * self.weight_decay
        return gamma

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class LMRun:
    """One LM training run. ``factorize="none"`` is the dense model (no rank, no init)."""
    corpus: str = "tinyshakespeare"
    shape: LMShape = field(default_factory=LMShape)
    factorize: str = "none"
    rank: int | None = None
    init: str | None = None
    seed: int = 0
    protocol: LMProtocol = field(default_factory=LMProtocol)

    def __post_init__(self):
        if self.corpus not in CORPORA:
            raise ValueError(f"unknown corpus {self.corpus!r}; valid: {', '.join(CORPORA)}")
        if self.factorize not in FACTORIZE:
            raise ValueError(f"unknown factorize {self.factorize!r}; valid: "
                             f"{', '.join(FACTORIZE)}")
        if self.factorize == "none":
            if self.rank is not None or self.init is not None:
                raise ValueError("the dense model (factorize='none') takes no rank or init")
        else:
            object.__setattr__(self, "rank", check_rank(self.rank))
            check_lm_rank(self.rank, self.shape.d_model)
            object.__setattr__(self, "init", check_init(self.init or "lora"))
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise TypeError(f"seed must be int, got {self.seed!r}")

    def replace(self, **changes) -> "LMRun":
        """This run with ``changes``: its own fields, or the protocol's by name."""
        proto = {k: changes.pop(k) for k in list(changes)
                 if k in {f.name for f in settings_of(LMProtocol)}}
        return replace(self, **changes, protocol=replace(self.protocol, **proto))

    def to_dict(self) -> dict:
        return {"corpus": self.corpus, **asdict(self.shape), "factorize": self.factorize,
                "rank": self.rank, "init": self.init, "seed": self.seed,
                "protocol": self.protocol.to_dict()}

    @classmethod
    def from_dict(cls, d: dict) -> "LMRun":
        d = dict(d)
        shape = LMShape(**{k: d.pop(k) for k in asdict(LMShape())})
        return cls(shape=shape, protocol=LMProtocol(**d.pop("protocol")), **d)

    @property
    def run_id(self) -> str:
        return _hash(self.to_dict())

    @property
    def group_id(self) -> str:
        """Every field but the seed: runs with one are replicates."""
        return _hash({**self.to_dict(), "seed": None})

    @property
    def model_key(self) -> str:
        """The model, without lr, min_lr and seed: what a learning-rate search chooses a
        rate for."""
        d = self.to_dict()
        d["protocol"] = {**d["protocol"], "lr": None, "min_lr": None}
        return _hash({**d, "seed": None})

    @property
    def stack_key(self) -> tuple:
        """Runs with equal keys train together: same shapes and schedule (lr, seed and init
        may differ)."""
        proto = replace(self.protocol, lr=1.0, min_lr=0.0)
        return (self.corpus, self.shape, self.factorize, self.rank, proto)

    @property
    def name(self) -> str:
        model = "dense" if self.factorize == "none" else \
            f"{self.factorize}-r{self.rank:03d}-{self.init}"
        return (f"{self.corpus}-{model}-d{self.shape.d_model}-lr{self.protocol.lr:g}"
                f"-s{self.seed}")

    @property
    def label(self) -> str:
        if self.factorize == "none":
            return f"dense d={self.shape.d_model}"
        return f"{self.factorize} r={self.rank} ({self.init} init)"

    def build(self) -> CharTransformer:
        """The run's model, drawn from ``seed`` without touching the global generator."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            return CharTransformer(self.shape, self.factorize, self.rank, self.init or "lora")

    def parameters(self) -> dict[str, int]:
        return lm_parameters(self.shape, self.factorize, self.rank)


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

    def __init__(self, params: list[torch.Tensor], decays: list[bool], protocol: LMProtocol,
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


def check_stack(runs: list[LMRun]) -> None:
    keys = {r.stack_key for r in runs}
    if len(keys) != 1:
        raise ValueError("runs trained together must share corpus, shape, factorization, rank "
                         "and protocol (all but lr, min_lr, seed and init); got "
                         f"{len(keys)} different ones")


def _sample(model: CharTransformer, splits: Splits, chars: int, seed: int) -> str:
    gen = torch.Generator().manual_seed(seed)
    start = torch.tensor([[splits.chars.index("\n") if "\n" in splits.chars else 0]])
    return splits.decode(model.generate(start, chars, generator=gen)[0, 1:])


def train_lms(runs: list[LMRun], splits: Splits, progress=None, sample_chars: int = 0,
              dtype=torch.float32, device="cpu") -> list[LMResult]:
    """Train ``runs`` together (one stack, :func:`check_stack`) on ``splits``; evaluate every
    ``eval_every`` steps on ``eval_windows`` windows of the tuning slice (if any) and the
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
    evals = {"val": on(windows(splits.val, shape.block_size, proto.eval_windows))}
    if len(splits.tune):
        evals["tune"] = on(windows(splits.tune, shape.block_size, proto.eval_windows))
    results = [LMResult(stack_size=len(runs)) for _ in runs]
    seen = torch.zeros(len(runs), dtype=torch.float64)
    start, since = time.perf_counter(), 0
    for it in range(proto.iters):
        xs, ys = zip(*(get_batch(splits.train, shape.block_size, proto.batch_size, g)
                       for g in gens))
        losses = stack.loss(stack.params, stack.buffers, torch.stack(xs).to(device),
                            torch.stack(ys).to(device))
        losses.sum().backward()
        if proto.grad_clip:
            opt.clip(proto.grad_clip)
        lrs = torch.tensor([r.protocol.lr_at(it) for r in runs], dtype=torch.float64)
        opt.step(lrs)
        seen += losses.detach().double()
        since += 1
        for i, loss in enumerate(losses.detach().tolist()):
            if not math.isfinite(loss) and results[i].diverged_iter is None:
                results[i].diverged_iter = it
        if (it + 1) % proto.eval_every == 0 or it + 1 == proto.iters:
            row = {"iter": it + 1, "seconds": time.perf_counter() - start}
            scores = {k: stack.evaluate(*v).tolist() for k, v in evals.items()}
            for i, res in enumerate(results):
                res.history.append({**row, "train_loss": float(seen[i] / since),
                                    "lr": runs[i].protocol.lr_at(it),
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


def train_lm_eager(run: LMRun, splits: Splits, iters: int | None = None,
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
    for it in range(proto.iters if iters is None else iters):
        x, y = get_batch(splits.train, shape.block_size, proto.batch_size, gen)
        loss = F.cross_entropy(model(x).reshape(-1, shape.vocab_size), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if proto.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), proto.grad_clip)
        for g in opt.param_groups:
            g["lr"] = proto.lr_at(it)
        opt.step()
        losses.append(loss.item())
    return model, losses


def lm_record(run: LMRun, result: LMResult) -> dict:
    """The record of a finished LM run: config (the shape under its own names beside the
    protocol), parameters, history, final losses, cost and provenance."""
    from . import __version__
    from .results import _finite_or_none, git_commit
    import platform
    tokens = run.protocol.iters * run.protocol.batch_size * run.shape.block_size
    return _finite_or_none({
        "schema": "lm-1", "run_id": run.run_id, "name": run.name, "config": run.to_dict(),
        "parameters": run.parameters(), "history": result.history, "final": result.final,
        "diverged_iter": result.diverged_iter,
        "cost": {"training_flops_per_token": lm_training_flops(run.shape, run.factorize,
                                                                run.rank),
                 "tokens": tokens, "seconds": result.seconds, "stack_size": result.stack_size,
                 "tokens_per_second": tokens * result.stack_size / result.seconds
                 if result.seconds else None},
        "device": result.device, "torch_threads": torch.get_num_threads(),
        "versions": {"lowrank_helpers": __version__, "torch": torch.__version__,
                     "python": platform.python_version()},
        "git_commit": git_commit(),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    })
