"""Many models trained in lockstep as stacked models (the default training engine).

K models of one family become one :class:`~lowrank_helpers.training.stacked.StackedMLP`; a step is a
handful of batched matrix products for all K models instead of K separate loops. All stacks of
a group (:mod:`lowrank_helpers.training.planning`) see the same batches and share one optimizer. Per
model this is the same computation as training it alone with :func:`lowrank_helpers.train`, up
to the order of floating-point sums: every model's loss, gradient and update involve only its
own slice of the stacked tensors (the loss is the sum of the models' mean losses, so each
model's gradient is its own), and padded factors stay zero.

On CPU a stack's backward pass is written out rather than recorded by autograd
(:meth:`StackedMLP.written_step`), fused into the update for SGD with or without momentum; on
CUDA, at a constant learning rate, the step is captured into a CUDA graph
(:class:`~lowrank_helpers.training.steps.Steps`).
"""
from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..batch.jobs import report_progress
from ..tasks.images_data import Data
from ..core.devices import as_device, device_name, peak_memory, reset_peak_memory
from ..models.mlp import MLP
from .planning import plan_stacks, stackable, worker_stacks
from ..core.protocol import Protocol, RunConfig
from .stacked import StackedMLP
from .steps import Steps
from ..tasks import build_model
from .loop import Schedule, TrainResult, epoch_batches, epoch_record, make_optimizer
from .workers import train_in_workers


@dataclass
class _StackRun:
    stack: StackedMLP
    members: list[int]
    loss_sum: torch.Tensor = field(default=None)  # summed on the device: no sync per step
    stream: object = None                         # its CUDA stream when stacks run side by side


#: Rows (models × samples) of an evaluation chunk on a CPU: about 1 M activations of a 512-wide
#: layer, which stay in cache (4096 samples of a 10-model stack took 4x longer on a 2-core CPU,
#: bound by memory traffic in the ReLU). A GPU takes 4096 samples a chunk, whatever the stack.
EVAL_ROWS = 2048


@torch.no_grad()
def _evaluate(stacks: list[_StackRun], X: torch.Tensor, y: torch.Tensor):
    """Per stack: lists of accuracy and mean loss per model on (X, y) (one sync per stack)."""
    out = []
    for s in stacks:
        chunk = 4096 if X.is_cuda else max(128, EVAL_ROWS // s.stack.K)
        correct = torch.zeros(s.stack.K, dtype=torch.long, device=X.device)
        loss = torch.zeros(s.stack.K, dtype=X.dtype, device=X.device)
        for i in range(0, len(X), chunk):
            logits = s.stack(X[i:i + chunk])                                 # (K, n, C)
            yb = y[i:i + chunk].expand(s.stack.K, -1)
            loss += F.cross_entropy(logits.transpose(1, 2), yb, reduction="none").sum(1)
            correct += (logits.argmax(2) == yb).sum(1)
        out.append(([c / len(X) for c in correct.tolist()],  # as evaluate() computes them
                    [v / len(X) for v in loss.tolist()]))
    return out


def train_group(models: list[MLP], stacks: list[list[int]], data: Data, protocol: Protocol,
                *, seed: int = 0, device="auto", progress: bool = True,
                desc: str | None = None, cuda_graphs: bool = True,
                written: bool | None = None,
                analyze: Callable | None = None) -> list[TrainResult]:
    """Train ``models`` in lockstep, stacked as ``stacks`` (lists of indices into ``models``);
    return one TrainResult per model, as :func:`lowrank_helpers.train` would for each alone, and
    leave the trained weights in ``models``.

    On CUDA, at a constant learning rate, the step is captured into a CUDA graph
    (``cuda_graphs=False``: eager steps; see :class:`~lowrank_helpers.training.steps.Steps`).
    ``written`` (default: on CPU) takes the step without autograd, the backward pass written
    out (:meth:`StackedMLP.written_step`): SGD (with or without momentum) fused into the
    weights, AdamW from the written gradients; ``False`` keeps autograd.
    ``analyze(model)``: a dict of each trained model, kept in its result. A model whose loss
    becomes NaN or inf is marked diverged at that epoch; the others go on.
    """
    dev = as_device(device)
    if sorted(i for idx in stacks for i in idx) != list(range(len(models))):
        raise ValueError(f"stacks {stacks} must list each of the {len(models)} models once")
    if data.device != dev:
        data = data.to(dev)
    runs = [_StackRun(StackedMLP([models[i] for i in idx]).to(dev), idx) for idx in stacks]
    for r in runs:
        r.loss_sum = torch.zeros(r.stack.K, dtype=data.X_train.dtype, device=dev)
    if written is None:
        written = dev.type == "cpu"
    fused = written and protocol.optimizer == "sgd"  # no optimizer: the rule steps
    opt = None if fused else make_optimizer(
        [p for r in runs for p in r.stack.parameters()], protocol,
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
    steps = math.ceil(n / protocol.batch_size)
    schedule = Schedule(opt, protocol, protocol.epochs * steps)
    step = Steps(runs, opt, protocol.batch_size, dev,
                 graphs=cuda_graphs and protocol.constant_lr, written=written,
                 momentum=protocol.momentum, weight_decay=protocol.weight_decay)
    has_val = len(data.y_val) > 0
    start = time.perf_counter()
    bar = tqdm(range(1, protocol.epochs + 1), desc=desc, disable=not progress, unit="epoch",
               leave=False)
    for epoch in bar:
        t0 = time.perf_counter()
        for r in runs:
            r.loss_sum.zero_()  # in place: a captured graph adds into this very tensor
        for xb, yb in epoch_batches(X, y, protocol.batch_size, protocol.shuffle, shuffle_gen):
            step(xb, yb, schedule.next())
        tests = _evaluate(runs, data.X_test, data.y_test)
        vals = _evaluate(runs, data.X_val, data.y_val) if has_val else [None] * len(runs)
        seconds = time.perf_counter() - t0
        for r, test, val in zip(runs, tests, vals):
            train_loss = [v / steps for v in r.loss_sum.tolist()]
            for k, i in enumerate(r.members):
                if not alive[i]:
                    continue
                results[i].history.append(epoch_record(
                    epoch, (test[0][k], test[1][k]), train_loss[k], seconds,
                    (val[0][k], val[1][k]) if val else None))
                if not (math.isfinite(train_loss[k]) and math.isfinite(test[1][k])):
                    results[i].diverged_epoch, alive[i] = epoch, False
        if progress:
            best = max((h["test_accuracy"] for res in results for h in res.history[-1:]),
                       default=float("nan"))
            bar.set_postfix(models=sum(alive), best_acc=f"{best:.2%}")
        report_progress(epoch, protocol.epochs)  # to a batch runner, if one started us
        if not any(alive):
            break
    bar.close()
    wall, memory = time.perf_counter() - start, peak_memory(dev)
    for res in results:
        res.wall_time, res.peak_memory, res.step_mode = wall, memory, step.mode
    for r in runs:  # like train(), leave the given models trained
        for i, trained in zip(r.members, r.stack.unstack()):
            models[i].load_state_dict(trained.state_dict())
            if analyze is not None:
                results[i].analysis = analyze(models[i])
    return results


def train_many(runs: list[RunConfig], data: Data, device="auto", progress: bool = True,
               desc: str | None = None, on_group_done=None, *, lockstep: bool | None = None,
               workers: int = 1, cuda_graphs: bool = True, analyze: Callable | None = None,
               dtype: torch.dtype | None = None,
               written: bool | None = None) -> list[TrainResult]:
    """Train ``runs`` with the stacked engine, grouped by :func:`plan_stacks`; one TrainResult
    per run, in order. Each model is built as :func:`lowrank_helpers.build_model` builds it for
    a lone run.

    ``lockstep`` (default: on CUDA) trains all stacks of a group together, each on a CUDA
    stream of its own; otherwise stacks train one after another. ``workers`` > 1 (CPU only)
    trains stacks in that many processes side by side, one thread each, largest stacks first
    (a stack costlier than an even share of the whole is halved first): small stacks are bound by
    per-step overhead, which one core does about as fast as two. ``analyze``: as for
    :func:`train_group` (a module-level function, where workers are used). ``dtype``: the
    models' (the data's images must have it too), e.g. float64 to check the engine against the
    plain loop beyond float32 rounding. ``written``: as for :func:`train_group`.
    ``on_group_done(runs, results)`` is called as each stack or group ends (to save records).
    A group or stack that runs out of GPU memory is split in two and goes on, saying so.
    """
    dev = as_device(device)
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive integer, got {workers!r}")
    if workers > 1 and dev.type != "cpu":
        raise ValueError(f"workers > 1 trains on CPU cores; on {dev.type} use workers=1 (one "
                         "process drives the whole device)")
    odd = sorted({r.method for r in runs if not stackable(r)})
    if odd:
        raise ValueError(f"method(s) {', '.join(odd)} change the training step and cannot be "
                         "stacked; train them with lowrank_helpers.train (run_study does)")
    lockstep = dev.type == "cuda" if lockstep is None else lockstep
    results: list[TrainResult | None] = [None] * len(runs)

    def done(members: list[int], trained: list[TrainResult]) -> None:
        for i, res in zip(members, trained):
            results[i] = res
        if on_group_done is not None:
            on_group_done([runs[i] for i in members], trained)

    if workers > 1:
        serial = functools.partial(train_many, device="cpu", progress=False, lockstep=False,
                                   written=written)
        train_in_workers(runs, worker_stacks(runs, workers), data, workers, done, progress,
                         train=serial, analyze=analyze, dtype=dtype)
        return results

    def train_stacks(stacks: list[list[int]]) -> None:
        members = [i for stack in stacks for i in stack]
        first = runs[members[0]]
        label = desc or (f"{len(members)} models in {len(stacks)} stacks" if len(stacks) > 1
                         else f"stack of {len(members)} ({first.label} ...)")
        try:
            trained = train_group([build_model(runs[i]).to(dtype) for i in members],
                                  [[members.index(i) for i in stack] for stack in stacks], data,
                                  first.protocol, seed=first.seed, device=dev,
                                  progress=progress, desc=label, cuda_graphs=cuda_graphs,
                                  analyze=analyze, written=written)
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
