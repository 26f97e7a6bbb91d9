"""Many MLPs trained in lockstep as one stacked model (the default training engine).

K models of one family (dense, or factorized padded to one rank R) become one module whose
parameters have a leading model dimension; a step is a handful of batched matrix products for
all K models instead of K separate loops. All stacks of a group see the same batches and share
one optimizer. Per model this is the same computation as training it alone (up to the order of
floating-point sums), because every model's loss, gradient and optimizer update only involve its
own slice of the stacked tensors:

- padding a factorized model from rank r to R adds rows r..R-1 of A and columns r..R-1 of B that
  are zero. Their gradients are zero (dL/dA_j ∝ B_{:,j} = 0, dL/dB_{:,j} ∝ (Ax)_j = 0), so SGD
  (with momentum and weight decay) and Adam(W) leave them at zero;
- the loss is the sum of the models' mean losses, so each model's gradient is its own.

On CPU, for plain SGD (the study's protocol), a stack's step is written out rather than recorded
by autograd (:meth:`StackedMLP.sgd_step`): the same arithmetic in fewer operations, with each
weight's gradient product added straight into the weight.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .config import RunConfig, TrainConfig
from .data import Data
from .models import MLP
from .steps import Steps
from .training import (TrainResult, build_model, device_name, epoch_batches, make_optimizer,
                       peak_memory, reset_peak_memory, resolve_device)

#: Factorized models up to this rank share one stack padded to it: they are bound by per-step
#: overhead and by the passes over their 512-wide activations more than by the padded arithmetic,
#: so padding costs little. Above it, ranks pad to the next power of 2.
SMALL_RANK = 16


def stack_rank(rank: int | None, small_rank: int = SMALL_RANK) -> int | None:
    """The rank a model is padded to in its stack (None: dense)."""
    if rank is None:
        return None
    return small_rank if rank <= small_rank else 1 << (rank - 1).bit_length()


class StackedMLP(nn.Module):
    """K MLPs of the same widths, all dense or all factorized at ranks <= ``rank``, in one module.

    Weights are stored transposed, so every product reads contiguous memory: layer l's dense
    weight as ``w{l}`` (K, d_in, d_out), its factors as ``a{l}`` = Aᵀ (K, d_in, R) and ``b{l}`` =
    Bᵀ (K, R, d_out), its bias as ``bias{l}`` (K, 1, d_out). The first layer, whose input all
    models share, is stored (d_in, K, ·) so that one matrix product serves all K models.
    """

    def __init__(self, models: list[MLP], rank: int | None = None):
        super().__init__()
        if not models:
            raise ValueError("a stack needs at least one model")
        dense = {m.method == "full" for m in models}
        widths = {m.widths for m in models}
        if len(dense) > 1 or len(widths) > 1:
            raise ValueError("a stack holds models of one family and one widths; got methods "
                             f"{sorted({m.method for m in models})} and widths {sorted(widths)}; "
                             "use plan_stacks() to split them")
        self.dense = dense.pop()
        self.widths = widths.pop()
        self.K = len(models)
        self.ranks = [m.rank for m in models]
        self.rank = None if self.dense else (rank or max(self.ranks))
        if not self.dense and max(self.ranks) > self.rank:
            raise ValueError(f"stack rank {self.rank} is below model rank {max(self.ranks)}")
        layers = [m.linear_layers() for m in models]
        for l, (d_in, d_out) in enumerate(zip(self.widths[:-1], self.widths[1:])):
            per_model = [ls[l] for ls in layers]
            with torch.no_grad():
                bias = torch.stack([m.bias for m in per_model]).unsqueeze(1)  # (K, 1, d_out)
                if self.dense:
                    first = torch.stack([m.weight.T for m in per_model])      # (K, d_in, d_out)
                else:
                    first = torch.zeros(self.K, d_in, self.rank)              # (K, d_in, R)
                    second = torch.zeros(self.K, self.rank, d_out)            # (K, R, d_out)
                    for k, m in enumerate(per_model):
                        first[k, :, :m.rank] = m.A.T
                        second[k, :m.rank, :] = m.B.T
                    self.register_parameter(f"b{l}", nn.Parameter(second))
                if l == 0:
                    first = first.transpose(0, 1).contiguous()               # (d_in, K, ·)
                self.register_parameter(f"{'w' if self.dense else 'a'}{l}",
                                        nn.Parameter(first.contiguous()))
                self.register_parameter(f"bias{l}", nn.Parameter(bias.clone()))

    @property
    def n_layers(self) -> int:
        return len(self.widths) - 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (K, N, classes) of all K models for the shared input x (N, ...)."""
        x = x.flatten(1)                                                     # (N, d_in)
        n = x.shape[0]
        h = x
        for l in range(self.n_layers):
            first = getattr(self, f"{'w' if self.dense else 'a'}{l}")
            bias = getattr(self, f"bias{l}")
            if l == 0:  # one (N, d_in) @ (d_in, K·out) product for all models
                z = (h @ first.view(first.shape[0], -1)).view(n, self.K, -1)
                z = z.transpose(0, 1).contiguous()                           # (K, N, out)
            else:
                h = F.relu(h)
                z = h if self.dense else torch.bmm(h, first)                 # (K, N, R)
            if self.dense:
                h = z + bias if l == 0 else torch.baddbmm(bias, z, first)    # (K, N, d_out)
            else:
                h = torch.baddbmm(bias, z, getattr(self, f"b{l}"))           # (K, N, d_out)
        return h

    def losses(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy of each model on the batch: (K,)."""
        logits = self.forward(x)                                            # (K, N, C)
        return F.cross_entropy(logits.transpose(1, 2), y.expand(self.K, -1),
                               reduction="none").mean(1)

    @torch.no_grad()
    def sgd_step(self, x: torch.Tensor, y: torch.Tensor, lr: float,
                 weight_decay: float = 0.0) -> torch.Tensor:
        """One step of plain SGD (no momentum) on every model's mean cross-entropy, with the
        backward pass written out instead of recorded by autograd; returns the models' losses
        before the step, (K,). The same step as ``losses(x, y).sum().backward()`` followed by
        ``torch.optim.SGD(lr=lr, weight_decay=weight_decay).step()``, up to the order of
        floating-point sums, in fewer and fused operations: each weight's gradient product is
        added straight into the weight (``baddbmm_``/``addmm_`` with alpha = −lr and
        beta = 1 − lr·weight_decay), after the gradient it passes down has been computed from
        the weight as it was. Padding stays zero: the gradient of a padded row of A or column of
        B is a product with a zero factor.
        """
        x = x.flatten(1)                                                     # (N, d_in)
        n, K = x.shape[0], self.K
        beta = 1.0 - lr * weight_decay
        inputs, mids = [], []  # per layer: its input; A·input (factorized) or its output (dense)
        h = x
        for l in range(self.n_layers):
            first = getattr(self, f"{'w' if self.dense else 'a'}{l}")
            bias = getattr(self, f"bias{l}")
            if l == 0:
                z = (x @ first.view(first.shape[0], -1)).view(n, K, -1).transpose(0, 1)
            else:
                h = F.relu(h)
                z = h if self.dense else torch.bmm(h, first)
            inputs.append(h)
            mids.append(z)
            if self.dense:
                h = z + bias if l == 0 else torch.baddbmm(bias, z, first)
            else:
                h = torch.baddbmm(bias, z, getattr(self, f"b{l}"))
        logp = torch.log_softmax(h, dim=2)                                   # (K, N, C)
        label = y.view(1, n, 1).expand(K, n, 1)
        picked = logp.gather(2, label)
        losses = -picked.squeeze(2).mean(1)
        delta = logp.exp_().scatter_(2, label, picked.exp() - 1).div_(n)     # ∂L/∂logits
        for l in reversed(range(self.n_layers)):
            first = getattr(self, f"{'w' if self.dense else 'a'}{l}")
            bias = getattr(self, f"bias{l}")
            if self.dense:
                grad_in = delta                                              # (K, N, d_out)
            else:
                b = getattr(self, f"b{l}")
                grad_in = torch.bmm(delta, b.transpose(1, 2))                # ∂L/∂(Ax): (K, N, R)
                b.baddbmm_(mids[l].transpose(1, 2), delta, beta=beta, alpha=-lr)
            if l == 0:  # input shared by all models: one (d_in, N) @ (N, K·out) product
                flat = grad_in.transpose(0, 1).reshape(n, -1)
                first.view(first.shape[0], -1).addmm_(x.T, flat, beta=beta, alpha=-lr)
            else:
                down = torch.ops.aten.threshold_backward(
                    torch.bmm(grad_in, first.transpose(1, 2)), inputs[l], 0.0)  # through ReLU
                first.baddbmm_(inputs[l].transpose(1, 2), grad_in, beta=beta, alpha=-lr)
            if weight_decay:
                bias.mul_(beta)
            bias.add_(delta.sum(1, keepdim=True), alpha=-lr)
            if l > 0:
                delta = down
        return losses

    @torch.no_grad()
    def unstack(self) -> list[MLP]:
        """The K models as separate MLPs with their own ranks (padding dropped)."""
        models = []
        for k, rank in enumerate(self.ranks):
            m = MLP("full" if self.dense else "lora", None if self.dense else rank,
                    widths=self.widths)
            for l, layer in enumerate(m.linear_layers()):
                first = getattr(self, f"{'w' if self.dense else 'a'}{l}")
                first = first[:, k] if l == 0 else first[k]                   # (d_in, ·)
                if self.dense:
                    layer.weight.copy_(first.T)
                else:
                    layer.A.copy_(first[:, :rank].T)
                    layer.B.copy_(getattr(self, f"b{l}")[k, :rank].T)
                layer.bias.copy_(getattr(self, f"bias{l}")[k, 0])
            models.append(m)
        return models


def group_key(run: RunConfig) -> tuple:
    """Runs with equal keys can train in lockstep: same data, batches and optimizer settings.
    With shuffling the batch order depends on the seed, so then the seed is part of the key."""
    return (run.dataset, run.train_subset, run.test_subset, run.train_config(),
            run.seed if run.shuffle else None)


def plan_stacks(runs: list[RunConfig], small_rank: int = SMALL_RANK) -> list[list[list[int]]]:
    """Indices of ``runs`` grouped for lockstep training: a list of groups (same batches, one
    optimizer), each a list of stacks (same family, widths and padded rank)."""
    groups: dict[tuple, dict[tuple, list[int]]] = {}
    for i, run in enumerate(runs):
        family = (run.method == "full", run.widths, stack_rank(run.rank, small_rank))
        groups.setdefault(group_key(run), {}).setdefault(family, []).append(i)
    return [list(stacks.values()) for stacks in groups.values()]


def worker_stacks(runs: list[RunConfig], workers: int) -> list[list[int]]:
    """The stacks :func:`train_many` shares out to ``workers`` CPU processes: those of
    :func:`plan_stacks`, the costliest halved while it would keep one worker busy longer than
    an even share of the whole (or there are fewer stacks than workers)."""
    from .workers import stack_cost
    stacks = [members for group in plan_stacks(runs) for members in group]
    cost = lambda members: stack_cost([runs[i] for i in members])  # noqa: E731
    while True:
        big = max(stacks, key=cost)
        share = sum(map(cost, stacks)) / workers  # each split adds a stack's overhead
        if len(big) < 2 or (cost(big) <= share and len(stacks) >= workers):
            return stacks
        stacks.remove(big)
        stacks += [big[:len(big) // 2], big[len(big) // 2:]]


@dataclass
class _StackRun:
    stack: StackedMLP
    members: list[int]
    loss_sum: torch.Tensor = field(default=None)  # summed on the device: no sync per step
    stream: object = None                         # its CUDA stream when stacks run side by side


@torch.no_grad()
def _evaluate(stacks: list[_StackRun], X: torch.Tensor, y: torch.Tensor, chunk: int = 4096):
    """Per stack: lists of accuracy and mean loss per model on (X, y) (one sync per stack)."""
    out = []
    for s in stacks:
        correct = torch.zeros(s.stack.K, dtype=torch.long, device=X.device)
        loss = torch.zeros(s.stack.K, device=X.device)
        for i in range(0, len(X), chunk):
            logits = s.stack(X[i:i + chunk])                                 # (K, n, C)
            yb = y[i:i + chunk].expand(s.stack.K, -1)
            loss += F.cross_entropy(logits.transpose(1, 2), yb, reduction="none").sum(1)
            correct += (logits.argmax(2) == yb).sum(1)
        out.append(([c / len(X) for c in correct.tolist()],  # as evaluate() computes them
                    [v / len(X) for v in loss.tolist()]))
    return out


def train_group(models: list[MLP], stacks: list[list[int]], data: Data, config: TrainConfig,
                *, seed: int = 0, device="auto", progress: bool = True,
                desc: str | None = None, cuda_graphs: bool = True,
                fused_sgd: bool | None = None) -> list[TrainResult]:
    """Train ``models`` in lockstep, stacked as ``stacks`` (lists of indices into ``models``);
    return one TrainResult per model, as :func:`lowrank_helpers.train` would for each alone, and
    leave the trained weights in ``models``.

    On CUDA the step is captured into a CUDA graph (``cuda_graphs=False``: eager steps; see
    :class:`~lowrank_helpers.steps.Steps`). ``fused_sgd`` (default: on CPU, for plain SGD
    without momentum, the study's protocol) takes the step without autograd, with the backward
    pass written out (:meth:`StackedMLP.sgd_step`); ``False`` keeps autograd and the optimizer.
    A model whose loss becomes NaN or inf is marked diverged at that epoch; the others go on.
    """
    dev = resolve_device(device) if isinstance(device, str) else torch.device(device)
    if sorted(i for idx in stacks for i in idx) != list(range(len(models))):
        raise ValueError(f"stacks {stacks} must list each of the {len(models)} models once")
    if data.device != dev:
        data = data.to(dev)
    runs = [_StackRun(StackedMLP([models[i] for i in idx]).to(dev), idx) for idx in stacks]
    for r in runs:
        r.loss_sum = torch.zeros(r.stack.K, device=dev)
    plain_sgd = config.optimizer == "sgd" and config.momentum == 0
    if fused_sgd is None:
        fused_sgd = plain_sgd and dev.type == "cpu"
    elif fused_sgd and not plain_sgd:
        raise ValueError("fused_sgd takes plain SGD steps; this run uses optimizer "
                         f"{config.optimizer!r} with momentum {config.momentum}: use "
                         "fused_sgd=None or False")
    opt = None if fused_sgd else make_optimizer(
        [p for r in runs for p in r.stack.parameters()], config,
        capturable=cuda_graphs and dev.type == "cuda")
    reset_peak_memory(dev)
    results = [TrainResult(device=device_name(dev), engine="stacked") for _ in models]
    for idx in stacks:
        for i in idx:
            results[i].stack_size = len(idx)
    alive = [True] * len(models)
    for r, (acc, loss) in zip(runs, _evaluate(runs, data.X_test, data.y_test)):
        for k, i in enumerate(r.members):
            results[i].init_test_accuracy, results[i].init_test_loss = acc[k], loss[k]
    X, y, n = data.X_train, data.y_train, len(data.X_train)
    shuffle_gen = torch.Generator().manual_seed(seed)
    steps = math.ceil(n / config.batch_size)
    step = Steps(runs, opt, config.batch_size, dev, cuda_graphs,
                 fused_sgd=(config.lr, config.weight_decay) if fused_sgd else None)
    start = time.perf_counter()
    bar = tqdm(range(1, config.epochs + 1), desc=desc, disable=not progress, unit="epoch",
               leave=False)
    for epoch in bar:
        t0 = time.perf_counter()
        for r in runs:
            r.loss_sum.zero_()  # in place: a captured graph adds into this very tensor
        for xb, yb in epoch_batches(X, y, config.batch_size, config.shuffle, shuffle_gen):
            step(xb, yb)
        evals = _evaluate(runs, data.X_test, data.y_test)
        seconds = time.perf_counter() - t0
        for r, (acc, loss) in zip(runs, evals):
            train_loss = [v / steps for v in r.loss_sum.tolist()]
            for k, i in enumerate(r.members):
                if not alive[i]:
                    continue
                results[i].history.append({"epoch": epoch, "test_accuracy": acc[k],
                                           "test_loss": loss[k], "train_loss": train_loss[k],
                                           "seconds": seconds})
                if not (math.isfinite(train_loss[k]) and math.isfinite(loss[k])):
                    results[i].diverged_epoch, alive[i] = epoch, False
        if progress:
            best = max((h["test_accuracy"] for res in results for h in res.history[-1:]),
                       default=float("nan"))
            bar.set_postfix(models=sum(alive), best_acc=f"{best:.2%}")
        if not any(alive):
            break
    bar.close()
    wall, memory = time.perf_counter() - start, peak_memory(dev)
    for res in results:
        res.wall_time, res.peak_memory, res.step_mode = wall, memory, step.mode
    for r in runs:  # like train(), leave the given models trained
        for i, trained in zip(r.members, r.stack.unstack()):
            models[i].load_state_dict(trained.state_dict())
    return results


def train_many(runs: list[RunConfig], data: Data, device="auto", progress: bool = True,
               desc: str | None = None, on_group_done=None, *, lockstep: bool | None = None,
               workers: int = 1, cuda_graphs: bool = True) -> list[TrainResult]:
    """Train ``runs`` with the stacked engine, grouped by :func:`plan_stacks`; one TrainResult
    per run, in order. Each model is built as :func:`build_model` builds it for a lone run.

    ``lockstep`` (default: on CUDA) trains all stacks of a group together, each on a CUDA
    stream of its own; otherwise stacks train one after another. ``workers`` > 1 (CPU only)
    trains stacks in that many processes side by side, one thread each, largest stacks first
    (a stack costlier than an even share of the whole is halved first): small stacks are bound by
    per-step overhead, which one core does about as fast as two.
    ``on_group_done(runs, results)`` is called as each stack or group ends (to save records).
    A group or stack that runs out of GPU memory is split in two and goes on, saying so.
    """
    dev = resolve_device(device) if isinstance(device, str) else torch.device(device)
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive integer, got {workers!r}")
    if workers > 1 and dev.type != "cpu":
        raise ValueError(f"workers > 1 trains on CPU cores; on {dev.type} use workers=1 (one "
                         "process drives the whole device)")
    lockstep = dev.type == "cuda" if lockstep is None else lockstep
    results: list[TrainResult | None] = [None] * len(runs)

    def done(members: list[int], trained: list[TrainResult]) -> None:
        for i, res in zip(members, trained):
            results[i] = res
        if on_group_done is not None:
            on_group_done([runs[i] for i in members], trained)

    if workers > 1:
        stacks = worker_stacks(runs, workers)
        from .workers import train_in_workers  # (imports this module)
        train_in_workers(runs, stacks, data, workers, done, progress)
        return results

    def train_stacks(stacks: list[list[int]]) -> None:
        members = [i for stack in stacks for i in stack]
        first = runs[members[0]]
        label = desc or (f"{len(members)} models in {len(stacks)} stacks" if len(stacks) > 1
                         else f"stack of {len(members)} ({first.label} ...)")
        try:
            trained = train_group([build_model(runs[i]) for i in members],
                                  [[members.index(i) for i in stack] for stack in stacks], data,
                                  first.train_config(), seed=first.seed, device=dev,
                                  progress=progress, desc=label, cuda_graphs=cuda_graphs)
        except torch.cuda.OutOfMemoryError:
            if len(members) == 1:
                raise
            torch.cuda.empty_cache()
            if len(stacks) > 1:
                print(f"out of GPU memory with {len(stacks)} stacks in lockstep: training them "
                      "one after another")
                for stack in stacks:
                    train_stacks([stack])
                return
            half = len(members) // 2
            print(f"out of GPU memory with a stack of {len(members)} models: splitting it into "
                  f"{half} + {len(members) - half} and going on")
            train_stacks([members[:half]])
            train_stacks([members[half:]])
            return
        done(members, trained)

    for group in plan_stacks(runs):
        if lockstep:
            train_stacks(group)
        else:  # stack after stack: each stack's records are saved as it ends
            for members in group:
                train_stacks([members])
    return results
