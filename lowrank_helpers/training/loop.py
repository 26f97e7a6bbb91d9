"""Training one model: the plain loop over in-memory tensors (the one to read when learning).

The stacked engine (:mod:`lowrank_helpers.training.engine`) trains many models as this loop trains one,
on the same batches (:func:`epoch_batches`) with the same optimizer and schedule.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..tasks.images_data import Data
from ..core.devices import as_device as resolve
from ..core.protocol import Protocol


def make_optimizer(params, protocol: Protocol, capturable: bool = False) -> torch.optim.Optimizer:
    """The protocol's optimizer over ``params`` (tensors, or parameter groups whose own
    ``lr`` or ``weight_decay`` overrides the protocol's). ``capturable``: AdamW keeps its
    step count on the device, as CUDA graph capture requires (SGD needs nothing)."""
    if protocol.optimizer == "sgd":
        return torch.optim.SGD(params, lr=protocol.lr, momentum=protocol.momentum,
                               weight_decay=protocol.weight_decay)
    return torch.optim.AdamW(params, lr=protocol.lr, betas=(protocol.beta1, protocol.beta2),
                             weight_decay=protocol.weight_decay, capturable=capturable)


class Schedule:
    """Sets each parameter group's learning rate before every step, as the protocol's
    schedule says (groups keep their ratio to the protocol's lr). A constant rate is never
    touched, so that a captured CUDA graph may keep it."""

    def __init__(self, opt: torch.optim.Optimizer | None, protocol: Protocol, total_steps: int):
        self.opt, self.protocol, self.total, self.step = opt, protocol, total_steps, 0
        self.scales = [g["lr"] / protocol.lr for g in opt.param_groups] if opt else []

    def next(self) -> float:
        """The learning rate of the step about to be taken (and set it on the optimizer)."""
        lr = self.protocol.lr_at(self.step, self.total)
        self.step += 1
        if self.opt is not None and not self.protocol.constant_lr:
            for g, scale in zip(self.opt.param_groups, self.scales):
                g["lr"] = lr * scale
        return lr


@torch.no_grad()
def evaluate(model: nn.Module, X: torch.Tensor, y: torch.Tensor,
             chunk: int = 4096) -> tuple[float, float]:
    """(accuracy in [0, 1], mean cross-entropy per sample) of ``model`` on (X, y)."""
    was_training = model.training
    model.eval()
    correct = torch.zeros((), device=X.device)
    loss = torch.zeros((), dtype=X.dtype, device=X.device)
    for i in range(0, len(X), chunk):
        logits = model(X[i:i + chunk])                     # (chunk, classes)
        loss += F.cross_entropy(logits, y[i:i + chunk], reduction="sum")
        correct += (logits.argmax(1) == y[i:i + chunk]).sum()
    model.train(was_training)
    return correct.item() / len(X), loss.item() / len(X)


@dataclass
class TrainResult:
    history: list[dict] = field(default_factory=list)  # one dict per epoch
    init_test_accuracy: float = float("nan")
    init_test_loss: float = float("nan")
    diverged_epoch: int | None = None                  # first epoch with a NaN/inf loss
    wall_time: float = 0.0
    device: str = "cpu"
    peak_memory: dict = field(default_factory=dict)    # see devices.peak_memory()
    stack_size: int = 1                                # models trained in lockstep with it
    engine: str = "plain"                              # "plain" loop or "stacked" engine
    step_mode: str = "eager"                           # "eager", "fused sgd", or "cuda graph"
    analysis: dict = field(default_factory=dict)       # of the trained model, if asked for
    init: dict = field(default_factory=dict)           # the task's metrics before training
    final: dict = field(default_factory=dict)          # ... after it (every sample read)
    diverged: int | None = None                        # the step whose evaluation diverged
    optimizer_state_bytes: int | None = None           # measured from the state tensors
    model: object = None                               # the trained model (the trainer's)


def epoch_batches(X: torch.Tensor, y: torch.Tensor, batch_size: int, shuffle: bool,
                  generator: torch.Generator):
    """One epoch's batches (x, y): the data in order, or in a permutation drawn from
    ``generator`` (on the CPU, so that every device sees the same order). The plain loop and
    the stacked engine both draw their batches here, so that they see the same ones."""
    if shuffle:
        perm = torch.randperm(len(X), generator=generator).to(X.device)
        X, y = X[perm], y[perm]
    for i in range(0, len(X), batch_size):
        yield X[i:i + batch_size], y[i:i + batch_size]


def epoch_record(epoch: int, test, train_loss: float, seconds: float, val=None) -> dict:
    """One epoch's entry of a run's history: test (and validation) accuracy and loss."""
    entry = {"epoch": epoch, "test_accuracy": test[0], "test_loss": test[1],
             "train_loss": train_loss, "seconds": seconds}
    if val is not None:
        entry.update(val_accuracy=val[0], val_loss=val[1])
    return entry


def train(model: nn.Module, data: Data, protocol: Protocol | None = None, *, seed: int = 0,
          device="auto", progress: bool = True, desc: str | None = None, param_groups=None,
          analyze: Callable[[nn.Module], dict] | None = None) -> TrainResult:
    """Train ``model`` (an MLP of any method) on ``data`` with minibatch gradient descent;
    evaluate after every epoch on the test split (and on the validation split, if the data
    have one): the one training loop (:func:`lowrank_helpers.training.trainer.fit`) for a model of
    one's own.

    Defaults are the original study's protocol (see :class:`Protocol`). ``seed`` drives the
    shuffling order when ``protocol.shuffle``; the model's init is the caller's (see
    :func:`lowrank_helpers.build_model`). ``param_groups``: the optimizer's groups (default:
    all parameters at the protocol's lr). ``analyze(model)``: a dict of the trained model kept
    in the result. A NaN or inf loss ends the run, marked diverged at that epoch.
    """
    from ..core.protocol import RunConfig
    from .trainer import fit
    protocol = protocol or Protocol()
    widths = getattr(model, "widths", None)
    run = RunConfig(data.name, "full", widths=widths, seed=seed, protocol=protocol)
    result = fit(run, data, device=resolve(device), progress=progress, model=model,
                 groups=param_groups, analyze=analyze, desc=desc)
    result.init_test_accuracy = result.init["test_accuracy"]
    result.init_test_loss = result.init["test_loss"]
    result.diverged_epoch = result.history[-1]["epoch"] if result.diverged else None
    return result
