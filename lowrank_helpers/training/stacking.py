"""Many models of one shape trained as one batched call, for any task and any stackable method.

The PyTorch model-ensembling recipe: ``torch.func.stack_module_state`` stacks M models'
parameters along a leading dimension, and ``vmap`` over ``functional_call`` runs the one
model's forward and loss for all M at once. Each model keeps its own batches (its task's
batches for its seed), its own learning rate, init and seed, its own optimizer state and its
own gradient clipping, written per model (:class:`StackedAdamW`, :class:`StackedSGD`), so that
every model ends where :func:`~lowrank_helpers.training.trainer.fit` would take it alone, up to the order
of floating-point sums (tested to 1e-10 in float64). Frozen parameters (``requires_grad``
False) stay as they are.
"""
from __future__ import annotations

import copy
import math
import time
from pathlib import Path
from typing import Callable

import torch
from torch.func import functional_call, stack_module_state, vmap

from ..core.devices import as_device, device_name, peak_memory, reset_peak_memory
from ..methods import METHODS
from ..core.protocol import RunConfig
from .loop import TrainResult


def _per_model(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A (M,) tensor shaped to broadcast over stacked ``like`` (M, ...)."""
    return t.view(-1, *[1] * (like.dim() - 1)).to(like.device, like.dtype)


class _StackedOptimizer:
    def __init__(self, params: list[torch.Tensor], decays: list[float], protocol):
        self.params, self.decays, self.p = params, decays, protocol

    @torch.no_grad()
    def clip(self, max_norm: float) -> torch.Tensor:
        """Scale each model's gradients to norm ≤ max_norm as ``clip_grad_norm_`` does;
        returns the norms before (M,)."""
        sq = sum(q.grad.pow(2).flatten(1).sum(1) for q in self.params)
        norms = sq.sqrt()
        coef = (max_norm / (norms + 1e-6)).clamp(max=1.0)
        for q in self.params:
            q.grad.mul_(_per_model(coef, q))
        return norms


class StackedAdamW(_StackedOptimizer):
    """AdamW (Loshchilov & Hutter, 2019) as ``torch.optim.AdamW`` computes it, over stacked
    parameters (M, ...) with one learning rate per model; ``decays``: each tensor's weight
    decay (a bool: the protocol's, or none)."""

    def __init__(self, params, decays, protocol, eps: float = 1e-8):
        super().__init__(params, [protocol.weight_decay if d is True else float(d or 0.0)
                                  for d in decays], protocol)
        self.eps = eps
        self.m = [torch.zeros_like(q) for q in params]
        self.v = [torch.zeros_like(q) for q in params]
        self.t = 0

    @torch.no_grad()
    def step(self, lrs: torch.Tensor) -> None:
        """One step at the per-model learning rates ``lrs`` (M,)."""
        self.t += 1
        b1, b2 = self.p.beta1, self.p.beta2
        c1, c2 = 1 - b1 ** self.t, math.sqrt(1 - b2 ** self.t)
        for q, m, v, wd in zip(self.params, self.m, self.v, self.decays):
            lr = _per_model(lrs, q)
            if wd:
                q.mul_(1 - lr * wd)
            m.lerp_(q.grad, 1 - b1)
            v.mul_(b2).addcmul_(q.grad, q.grad, value=1 - b2)
            q.sub_(lr / c1 * m / (v.sqrt() / c2 + self.eps))
            q.grad = None

    def state_bytes(self) -> int:
        """Optimizer state per model (the moments)."""
        return sum(t[0].numel() * t.element_size() for t in (*self.m, *self.v))

    def state(self) -> dict:
        return {"m": self.m, "v": self.v, "t": self.t}

    def load(self, state: dict) -> None:
        for mine, kept in zip((*self.m, *self.v), (*state["m"], *state["v"])):
            mine.copy_(kept)
        self.t = state["t"]


class StackedSGD(_StackedOptimizer):
    """SGD with momentum and (coupled) weight decay as ``torch.optim.SGD`` computes it, over
    stacked parameters with one learning rate per model."""

    def __init__(self, params, decays, protocol):
        super().__init__(params, [protocol.weight_decay if d is True else float(d or 0.0)
                                  for d in decays], protocol)
        self.buf = [None] * len(params)

    @torch.no_grad()
    def step(self, lrs: torch.Tensor) -> None:
        mu = self.p.momentum
        for i, (q, wd) in enumerate(zip(self.params, self.decays)):
            g = q.grad if not wd else q.grad.add(q, alpha=wd)
            if mu:
                self.buf[i] = g.clone() if self.buf[i] is None else self.buf[i].mul_(mu).add_(g)
                g = self.buf[i]
            q.sub_(_per_model(lrs, q) * g)
            q.grad = None

    def state_bytes(self) -> int:
        return sum(b[0].numel() * b.element_size() for b in self.buf if b is not None)

    def state(self) -> dict:
        return {"buf": self.buf}

    def load(self, state: dict) -> None:
        self.buf = [None if b is None else b.to(q.device, q.dtype, copy=True)
                    for b, q in zip(state["buf"], self.params)]


class Stack:
    """M models of one shape as stacked parameters, a vmapped loss and a vmapped forward."""

    def __init__(self, models: list[torch.nn.Module], loss: Callable):
        self.params, self.buffers = stack_module_state(models)
        own = dict(models[0].named_parameters())
        self.trainable = [n for n in self.params if own[n].requires_grad]
        for n in self.params:
            if n not in self.trainable:
                self.params[n] = self.params[n].detach()
        self.base = copy.deepcopy(models[0]).to("meta")
        for module in self.base.modules():       # no batching rule for the fused kernel
            if hasattr(module, "fused_attention"):
                module.fused_attention = False

        def one_loss(p, b, x, y):
            return loss(functional_call(self.base, (p, b), (x,)), y)

        def one_forward(p, b, x):
            return functional_call(self.base, (p, b), (x,))
        self.loss = vmap(one_loss)                                  # own batches (M, ...)
        self.forward = vmap(one_forward, in_dims=(0, 0, None))      # one input for all

    def tensors(self) -> list[torch.Tensor]:
        return [self.params[n] for n in self.trainable]

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Every model's output on the same input (M, ...), on the models' device."""
        with torch.no_grad():
            device = next(iter(self.params.values())).device
            return self.forward(self.params, self.buffers, x.to(device))

    def unstack(self, models: list[torch.nn.Module]) -> None:
        """Copy the trained parameters back into ``models``."""
        with torch.no_grad():
            for i, model in enumerate(models):
                own = dict(model.named_parameters())
                for n in self.trainable:
                    own[n].copy_(self.params[n][i])


def stack_key(run: RunConfig, pad: bool = False) -> tuple:
    """Runs with equal keys can train together: same task, shape, method, targets, rank,
    options and schedule (lr, min_lr, seed and init may differ). With ``pad``, factorized
    runs of different ranks share a key by the rank they would be padded to
    (:func:`~lowrank_helpers.training.planning.stack_rank`: up to 16 together, then each power of 2)."""
    from dataclasses import replace

    from .planning import stack_rank
    proto = replace(run.protocol, lr=1.0, min_lr=0.0)
    rank = stack_rank(run.rank) if pad else run.rank
    return (run.task, run.shape, run.method, run.targets, rank, run.options, proto)


@torch.no_grad()
def pad_ranks(model: torch.nn.Module, rank: int) -> list:
    """Widen every :class:`~lowrank_helpers.models.layers.LowRankLinear` of ``model`` to ``rank``
    with zero rows of A and zero columns of B: the same function, and the padding's gradients
    are zero (∂L/∂A_pad = B_padᵀ δ xᵀ, ∂L/∂B_pad = δ (A_pad x)ᵀ), so it stays zero under SGD
    and AdamW, with or without weight decay or clipping. Returns (layer, own rank) pairs for
    :func:`unpad_ranks`."""
    from ..models.layers import LowRankLinear
    done = []
    for layer in model.modules():
        if isinstance(layer, LowRankLinear) and layer.rank < rank:
            r = layer.rank
            A = layer.A.new_zeros(rank, layer.in_features)    # (rank, d_in)
            B = layer.B.new_zeros(layer.out_features, rank)   # (d_out, rank)
            A[:r], B[:, :r] = layer.A, layer.B
            layer.A = torch.nn.Parameter(A, requires_grad=layer.A.requires_grad)
            layer.B = torch.nn.Parameter(B, requires_grad=layer.B.requires_grad)
            done.append((layer, r))
    return done


@torch.no_grad()
def unpad_ranks(padded: list) -> None:
    """Cut the layers :func:`pad_ranks` widened back to their own rank."""
    for layer, r in padded:
        layer.A = torch.nn.Parameter(layer.A[:r].clone(), requires_grad=layer.A.requires_grad)
        layer.B = torch.nn.Parameter(layer.B[:, :r].clone(), requires_grad=layer.B.requires_grad)


def check_stack(runs: list[RunConfig], pad: bool = False) -> None:
    keys = {stack_key(r, pad) for r in runs}
    if len(keys) != 1:
        raise ValueError("runs trained together must share task, shape, method, targets, rank "
                         "and protocol (all but lr, min_lr, seed and init); got "
                         f"{len(keys)} different ones")
    if not METHODS[runs[0].method].stackable:
        raise ValueError(f"method {runs[0].method!r} changes the training step (its own "
                         "groups, optimizer or hook): train its runs alone (trainer.fit)")


def stack_decays(model: torch.nn.Module, run: RunConfig, names: list[str]) -> list[float]:
    """Each stacked tensor's weight decay, from the task's groups of one model."""
    wd = {}
    for g in run.task_spec.param_groups(model, run.protocol):
        for p in g["params"]:
            wd[id(p)] = g.get("weight_decay", run.protocol.weight_decay)
    own = dict(model.named_parameters())
    return [wd.get(id(own[n]), run.protocol.weight_decay) for n in names]


def train_stacked(runs: list[RunConfig], data, *, device="cpu", dtype=torch.float32,
                  progress: Callable[[int], None] | None = None,
                  pad: bool = False, resume: Path | None = None,
                  save_every: float = 600.0) -> list[TrainResult]:
    """Train ``runs`` (one stack, :func:`check_stack`) together on ``data``: each model on its
    own batches, at its own rate, evaluated as :func:`~lowrank_helpers.training.trainer.fit` evaluates
    it; with ``pad``, factorized models of different ranks padded to the largest
    (:func:`pad_ranks`). ``progress(n)`` after each step. Returns one TrainResult per run, the
    trained models (on the CPU, at their own ranks) in ``result.model``.

    ``resume``: a file where the stack's state (step, parameters, optimizer state, histories)
    is written every ``save_every`` seconds of training, and read back when the same runs are
    trained again: an interrupted stack goes on from its last save (the batches before it are
    drawn again and skipped, so the result is the uninterrupted one) instead of from step 1.
    The last save is after the last step; the caller removes the file once it has kept the
    results (:func:`~lowrank_helpers.studies.reference.run_records`: after their records)."""
    check_stack(runs, pad)
    dev = as_device(device)
    task, protocol = runs[0].task_spec, runs[0].protocol
    data = task.to_device(data, dev)
    models = [r.build().to(device=dev, dtype=dtype) for r in runs]
    top = max((r.rank or 0) for r in runs)
    padded = [pad_ranks(m, top) for m in models] if pad and top else [[] for _ in models]
    stack = Stack(models, task.loss)
    decays = stack_decays(models[0], runs[0], stack.trainable)
    opt = (StackedAdamW if protocol.optimizer == "adamw" else StackedSGD)(
        stack.tensors(), decays, protocol)
    per_epoch = task.steps_per_epoch(protocol, data)
    total = protocol.total_steps(per_epoch)
    every = protocol.eval_every or per_epoch or total
    results = [TrainResult(device=device_name(dev), engine="stacked", stack_size=len(runs))
               for _ in runs]
    for res, init in zip(results, task.evaluate_many(stack.logits, runs[0], data)):
        res.init = init
    reset_peak_memory(dev)
    iters = [task.batches(r, data) for r in runs]
    seen = torch.zeros(len(runs), dtype=torch.float64)
    since, first, before = 0, 1, 0.0
    kept = _read_state(resume, runs, stack.tensors())
    if kept is not None:   # go on from the last save: its state, and its batches skipped
        with torch.no_grad():
            for t, k in zip(stack.tensors(), kept["params"]):
                t.copy_(k)
        opt.load(kept["opt"])
        for it in iters:
            for _ in range(kept["step"]):
                next(it)
        for res, h, d in zip(results, kept["history"], kept["diverged"]):
            res.history, res.diverged = h, d
        seen.copy_(kept["seen"])
        since, first, before = kept["since"], kept["step"] + 1, kept["seconds"]
        if progress is not None:
            progress(kept["step"])
    start = last = saved = time.perf_counter()
    for step in range(first, total + 1):
        xs, ys = zip(*(next(it) for it in iters))
        losses = stack.loss(stack.params, stack.buffers, torch.stack(xs).to(dev),
                            torch.stack(ys).to(dev))                     # (M,)
        losses.sum().backward()
        if protocol.grad_clip:
            opt.clip(protocol.grad_clip)
        lrs = torch.tensor([r.protocol.lr_at(step - 1, total) for r in runs],
                           dtype=torch.float64)
        opt.step(lrs)
        seen += losses.detach().double().cpu()
        since += 1
        if step % every == 0 or step == total:
            now = time.perf_counter()
            scores = task.evaluate_many(stack.logits, runs[0], data)
            for i, res in enumerate(results):
                entry = {task.entry: step // per_epoch if task.entry == "epoch" else step,
                         **scores[i], "train_loss": float(seen[i] / since),
                         "seconds": now - last}
                if task.entry == "iter":
                    entry["lr"] = runs[i].protocol.lr_at(step - 1, total)
                res.history.append(entry)
                if res.diverged is None and not all(
                        math.isfinite(v) for v in entry.values() if isinstance(v, float)):
                    res.diverged = step
            seen.zero_()
            since, last = 0, now
        if resume is not None and (step == total or time.perf_counter() - saved > save_every):
            _write_state(resume, runs, step, stack, opt, results, seen, since,
                         before + time.perf_counter() - start)
            saved = time.perf_counter()
        if progress is not None:
            progress(1)
    seconds = before + time.perf_counter() - start
    finals = task.evaluate_many(stack.logits, runs[0], data, final=True)
    stack.unstack(models)
    for p in padded:
        unpad_ranks(p)
    state, memory = opt.state_bytes(), peak_memory(dev)
    for i, res in enumerate(results):
        res.final, res.wall_time, res.peak_memory = finals[i], seconds, memory
        res.optimizer_state_bytes = state
        res.model = models[i].cpu()
    return results


def _write_state(path, runs, step, stack, opt, results, seen, since, seconds) -> None:
    """The stack's state after ``step`` (see :func:`train_stacked`), written atomically."""
    from ..core.checkpoints import torch_save_atomic
    tensors = stack.tensors()
    torch_save_atomic({
        "run_ids": [r.run_id for r in runs], "step": step,
        "shapes": [list(t.shape) for t in tensors], "dtype": str(tensors[0].dtype),
        "params": [t.detach().cpu() for t in tensors],
        "opt": {k: ([None if t is None else t.detach().cpu() for t in v]
                    if isinstance(v, list) else v) for k, v in opt.state().items()},
        "history": [r.history for r in results], "diverged": [r.diverged for r in results],
        "seen": seen, "since": since, "seconds": seconds}, path)


def _read_state(path, runs, tensors) -> dict | None:
    """The state kept at ``path`` for these runs and stacked ``tensors`` (their shapes and
    dtype), or None (no file, another stack's, or a file that cannot be read: then the stack
    starts from step 1)."""
    if path is None or not Path(path).exists():
        return None
    try:
        kept = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a torn or foreign file: train from the start
        print(f"warning: the stack's saved state {path} cannot be read ({exc}); training "
              "from step 1", flush=True)
        return None
    same = (kept.get("run_ids") == [r.run_id for r in runs]
            and kept.get("shapes") == [list(t.shape) for t in tensors]
            and kept.get("dtype") == str(tensors[0].dtype))
    return kept if same else None
