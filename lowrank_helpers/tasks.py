"""The tasks a study can run: data, model family, and what its metrics mean (one registry).

A task loads its data splits for a protocol, builds a run's model, counts its parameters and
FLOPs, and names its metrics. Adding one is a :class:`Task` subclass in a module of its own and
a call to :func:`register_task`; the command line, the configs and the records read this
registry.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from . import data as data_mod
from .models import (DEFAULT_WIDTHS, MLP, count_parameters, forward_flops_per_sample,
                     training_flops_per_sample)

if TYPE_CHECKING:
    from .protocol import Protocol, RunConfig

#: per-epoch metrics of a classification task and what they mean
CLASSIFICATION_METRICS = {
    "test_accuracy": "top-1 accuracy on the test split, after the epoch",
    "test_loss": "mean cross-entropy per test sample (nats)",
    "train_loss": "mean over the epoch's steps of the batch's mean cross-entropy (nats), "
                  "during training",
    "val_accuracy": "top-1 accuracy on the validation split (with val_size > 0)",
    "val_loss": "mean cross-entropy per validation sample (nats), with val_size > 0",
}


@dataclass(frozen=True)
class Task:
    """Base of the tasks: what every task tells the rest of the package."""
    name: str
    title: str                               # "Fashion-MNIST": in figure titles and prose
    metrics: dict = field(default_factory=dict)  # per-epoch metric -> what it means

    def check_widths(self, widths):
        raise NotImplementedError

    def build(self, run: "RunConfig") -> torch.nn.Module:
        raise NotImplementedError

    def load(self, protocol: "Protocol", root=None, device="cpu") -> data_mod.Data:
        raise NotImplementedError

    def prepare(self, root=None) -> None:
        """Make sure the task's data are on disk (found, copied or downloaded), before
        parallel jobs start; raises DataNotFoundError saying how to get them."""
        raise NotImplementedError


@dataclass(frozen=True)
class ImageClassification(Task):
    """Images flattened to vectors, classified by an MLP with dense or factorized layers."""
    dataset: str = "fashion_mnist"           # in lowrank_helpers.data.DATASETS
    input_size: int = 784
    classes: int = 10
    hidden_sizes: tuple = DEFAULT_WIDTHS[1:-1]  # the PyTorch quickstart's MLP

    @property
    def default_widths(self) -> tuple:
        return self.widths_with(self.hidden_sizes)

    def widths_with(self, hidden_sizes) -> tuple:
        """The model's widths with these hidden sizes: input, hidden..., classes."""
        return (self.input_size, *hidden_sizes, self.classes)

    def check_widths(self, widths) -> tuple:
        """``widths`` as a tuple (None: the default), or ValueError saying what is accepted."""
        if widths is None:
            return self.default_widths
        widths = tuple(widths) if isinstance(widths, (list, tuple)) else widths
        ok = (isinstance(widths, tuple) and len(widths) >= 2
              and all(isinstance(w, int) and not isinstance(w, bool) and w >= 1 for w in widths))
        if not ok or widths[0] != self.input_size or widths[-1] != self.classes:
            raise ValueError(f"widths of task {self.name!r} must be positive integers from "
                             f"{self.input_size} (the input) to {self.classes} (the classes), "
                             f"got {widths!r}")
        return widths

    def build(self, run: "RunConfig") -> MLP:
        """The run's model, initialised from ``run.seed`` without touching the global RNG."""
        from .methods import METHODS
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(run.seed)
            model = MLP(run.method, run.rank, run.init, run.widths)
        METHODS[run.method].prepare(model, {"rescale": run.rescale} if run.rescale != 1 else {})
        return model

    def load(self, protocol: "Protocol", root=None, device="cpu") -> data_mod.Data:
        return data_mod.load_data(self.dataset, root, device, protocol.train_subset,
                                  protocol.test_subset, val_size=protocol.val_size)

    def prepare(self, root=None) -> None:
        data_mod.prepare_data(self.dataset, root)

    def parameters(self, run: "RunConfig") -> dict[str, int]:
        return count_parameters(run.method, run.rank, run.widths)

    def training_flops(self, run: "RunConfig") -> int:
        return training_flops_per_sample(run.method, run.rank, run.widths)

    def forward_flops(self, run: "RunConfig") -> int:
        return forward_flops_per_sample(run.method, run.rank, run.widths)


#: Tasks by name.
TASKS: dict[str, Task] = {}


def register_task(task: Task) -> Task:
    if task.name in TASKS:
        raise ValueError(f"task {task.name!r} is already registered")
    TASKS[task.name] = task
    return task


register_task(ImageClassification("fashion_mnist", "Fashion-MNIST", CLASSIFICATION_METRICS,
                                  dataset="fashion_mnist"))
register_task(ImageClassification("mnist", "MNIST", CLASSIFICATION_METRICS, dataset="mnist"))


def build_model(run: "RunConfig") -> torch.nn.Module:
    """The run's model as its task builds it (seeded by ``run.seed``, global RNG untouched)."""
    return TASKS[run.task].build(run)
