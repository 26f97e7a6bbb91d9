"""One training loop for every task and every method, one model at a time.

Read top to bottom, as nanoGPT's ``train.py``: the task gives the batches, the loss and the
evaluation (:mod:`lowrank_helpers.tasks`); the method gives the model's target layers, the
optimizer's groups (or its own optimizer) and a hook after the optimizer step
(:mod:`lowrank_helpers.methods`); the protocol gives the optimizer, the schedule, clipping,
the budget and when to evaluate. What changes between experiments is a run, not a copy of the
loop. Many models of one shape train as one batched call instead in
:func:`~lowrank_helpers.training.lm.train_lms` (any task, ``torch.func``) and, for the MLP,
:func:`~lowrank_helpers.training.engine.train_many` (the hand-written stacked engine).
"""
from __future__ import annotations

import math
import time
from typing import Callable

import torch

from ..batch.jobs import report_progress
from ..core.devices import as_device, device_name, peak_memory, reset_peak_memory
from ..methods import METHODS
from ..core.protocol import RunConfig
from .loop import TrainResult, make_optimizer


def param_groups(model: torch.nn.Module, run: RunConfig) -> list[dict]:
    """The optimizer's groups: the method's own (made from the task's), else the task's
    (nanoGPT's for the transformer: tensors of ≥ 2 dimensions decay, the LayerNorms do not;
    one group for the MLP)."""
    base = run.task_spec.param_groups(model, run.protocol)
    own = METHODS[run.method].groups(model, run, base)
    return own if own is not None else base


def set_lr(opt: torch.optim.Optimizer, scales: list[float], lr: float) -> None:
    """Every group at ``lr`` times its own scale (a method's groups keep their ratio)."""
    for g, scale in zip(opt.param_groups, scales):
        g["lr"] = lr * scale


class Step:
    """The trainer's one training step of ``run`` on ``model`` (``total`` steps in all): its
    optimizer (the method's own, else the protocol's over the method's or the task's groups,
    :func:`param_groups`), begun by the method; called as ``step(i, x, y)`` (``i`` from 1) it
    sets the schedule's rate times the method's factor, adds the method's penalty to the
    task's loss, clips as the protocol says, steps the optimizer and runs the method's hook
    when it is due; it returns the task's loss (detached) and the rate. :func:`fit` trains
    with it, ``benchmarks/bench_extensions.py`` times it."""

    def __init__(self, run: RunConfig, model: torch.nn.Module, total: int,
                 groups: list[dict] | None = None):
        self.run, self.model, self.total = run, model, total
        self.task, self.method, self.protocol = run.task_spec, METHODS[run.method], run.protocol
        groups = groups or param_groups(model, run)
        self.opt = self.method.make_optimizer(groups, run) or make_optimizer(groups,
                                                                               self.protocol)
        self.hook_every = self.method.every_for(run)
        self.method.begin(model, self.opt, total, run)
        self.scales = [g.get("lr", self.protocol.lr) / self.protocol.lr
                       for g in self.opt.param_groups]
        self.last_factor = None

    def __call__(self, step: int, x: torch.Tensor, y: torch.Tensor):
        run, method, protocol, opt = self.run, self.method, self.protocol, self.opt
        factor = method.lr_factor(step - 1, run)
        lr = protocol.lr_at(step - 1, self.total) * factor
        if not protocol.constant_lr or factor != self.last_factor:  # step 1, and a factor change
            set_lr(opt, self.scales, lr)
        self.last_factor = factor
        loss = self.task.loss(self.model(x), y)
        opt.zero_grad(set_to_none=True)
        extra = method.penalty(self.model, run)
        (loss if extra is None else loss + extra).backward()
        if protocol.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), protocol.grad_clip)
        opt.step()
        if self.hook_every and step % self.hook_every == 0:
            method.after_step(self.model, opt, step, run)
        return loss.detach(), lr


def fit(run: RunConfig, data, *, device="cpu", progress: bool = True,
        model: torch.nn.Module | None = None, dtype: torch.dtype | None = None,
        groups: list[dict] | None = None, desc: str | None = None, final_eval: bool = True,
        analyze: Callable[[torch.nn.Module], dict] | None = None) -> TrainResult:
    """Train ``run`` (its model, or ``model`` if given) on ``data`` (its task's splits) and
    return the TrainResult: one history entry per evaluation (after every epoch, or every
    ``eval_every`` steps), the initial and final metrics (``final_eval``: read on every
    sample of the splits), the cost. ``groups``: the optimizer's groups (default: the
    method's, else the task's). A NaN or inf loss ends the run, marked diverged. The trained
    model is left in ``result.model``."""
    task, method, protocol = run.task_spec, METHODS[run.method], run.protocol
    dev = as_device(device)
    model = (model if model is not None else run.build()).to(dev)
    if dtype is not None:
        model = model.to(dtype)
    data = task.to_device(data, dev)
    per_epoch = task.steps_per_epoch(protocol, data)
    total = protocol.total_steps(per_epoch)
    every = protocol.eval_every or per_epoch or total
    train_step = Step(run, model, total, groups)
    opt = train_step.opt
    result = TrainResult(device=device_name(dev), engine="plain")
    result.init = task.evaluate(model, data, protocol)
    reset_peak_memory(dev)
    bar = _bar(progress, total, desc or run.label)
    model.train()
    start = last = time.perf_counter()
    loss_sum, seen = None, 0  # summed on the device (no sync per step), in the loss's dtype
    for step, (x, y) in enumerate(task.batches(run, data), start=1):
        loss, lr = train_step(step, x.to(dev), y.to(dev))
        loss_sum = loss if loss_sum is None else loss_sum + loss
        seen += 1
        if step % every == 0 or step == total:
            now = time.perf_counter()
            train_loss = loss_sum.item() / seen
            entry = {task.entry: step // per_epoch if task.entry == "epoch" else step,
                     **task.evaluate(model, data, protocol), "train_loss": train_loss,
                     "seconds": now - last}
            if task.entry == "iter":
                entry["lr"] = lr
            result.history.append(entry)
            report_progress(entry[task.entry], total // per_epoch if task.entry == "epoch"
                            else total)
            loss_sum, seen, last = None, 0, now
            if not all(math.isfinite(v) for v in entry.values() if isinstance(v, float)):
                result.diverged = step
                break
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    result.wall_time = time.perf_counter() - start
    result.peak_memory = peak_memory(dev)
    if final_eval:
        result.final = task.evaluate(model, data, protocol, final=True)
    result.optimizer_state_bytes = method.state_bytes(model, opt)
    result.model = model
    result.analysis = {**method.summary(model), **(analyze(model) if analyze else {})}
    return result


def _state_bytes(opt: torch.optim.Optimizer) -> int:
    from ..methods import optimizer_state_bytes
    return optimizer_state_bytes(opt)


def _bar(progress: bool, total: int, desc: str):
    if not progress:
        return None
    from tqdm.auto import tqdm
    return tqdm(total=total, desc=desc, unit="step", leave=False)

