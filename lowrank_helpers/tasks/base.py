"""What a task is: its data, its model for a shape, its loss and metrics, its costs.

A task is a :class:`Task` subclass in a module of its own and one :func:`register_task` call
(:mod:`.images`: the MLP on Fashion-MNIST and MNIST; :mod:`.chars`: the character
transformer on tiny-shakespeare). The run, the trainer, the records, the command line and the
reports ask the registry; none of them names a task.

What a task tells the rest of the package:

- **data**: :meth:`Task.prepare` (found, copied or downloaded before parallel jobs start),
  :meth:`Task.load` (the splits a protocol asks for: train, the validation or tuning slice
  cut from it, the held-out split);
- **model**: :meth:`Task.check_shape` and :meth:`Task.build` (a run's model, with the run's
  method in its target layers; ``targets`` names them);
- **training**: :meth:`Task.batches` (the training batches, step by step), :meth:`Task.loss`,
  :meth:`Task.evaluate` (the metrics, named and explained in ``metrics``), and what a history
  entry is keyed by (``epoch`` or ``iter``);
- **costs**: :meth:`Task.parameters`, :meth:`Task.training_flops`;
- **ids**: :meth:`Task.canonical`, the fields a run's id hashes (one rule for every task:
  the fields of the task's first record schema always, every later one only where it differs
  from its default, so that no shipped id ever changes).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from ..core.protocol import Protocol, RunConfig


@dataclass(frozen=True)
class Task:
    """Base of the tasks (see the module doc)."""
    name: str
    title: str                                   # "Fashion-MNIST": in figure titles and prose
    metrics: dict = field(default_factory=dict)  # per-evaluation metric -> what it means
    #: named sets of target layers (a run's ``targets``) and the default one
    targets: dict = field(default_factory=dict)
    default_targets: str | None = None
    #: the headline metric of the reports, and whether more is better
    score: str = "test_accuracy"
    higher_is_better: bool = True
    #: what a history entry is keyed by: "epoch" or "iter"
    entry: str = "epoch"
    #: what a learning-rate search ranks a run by, on the validation (or tuning) split: final
    #: metrics, each with +1 (more is better) or -1, compared in order
    selection: tuple = (("val_accuracy", 1), ("val_loss", -1))
    #: classes of a classification task (a run that ends below twice chance has failed)
    classes: int | None = None

    # -- the protocol and the model ---------------------------------------------------------
    @property
    def default_protocol(self) -> "Protocol":
        from ..core.protocol import Protocol
        return Protocol()

    def at_rate(self, run: "RunConfig", lr: float) -> "RunConfig":
        """``run`` at peak learning rate ``lr``, with whatever the task's protocol ties to it
        (default: nothing else)."""
        return run.replace(lr=lr)

    def check_shape(self, shape):
        raise NotImplementedError

    def shape_label(self, shape) -> str:
        """The shape as one short, hashable cell of a table."""
        return str(shape)

    def check_targets(self, targets: str | None) -> str | None:
        """``targets`` (None: the default), or ValueError naming the task's sets."""
        if targets is None:
            return self.default_targets
        if targets not in self.targets:
            raise ValueError(f"unknown targets {targets!r} for task {self.name!r}; valid: "
                             f"{', '.join(self.targets)}")
        return targets

    def check_rank(self, rank: int, shape, targets, method) -> None:
        """Refuse a rank that restricts none of the target layers (default: nothing)."""

    def max_rank(self, shape) -> int | None:
        """The largest rank that restricts a target layer of ``shape`` (None: no bound)."""
        return None

    def build(self, run: "RunConfig") -> torch.nn.Module:
        raise NotImplementedError

    def smoke(self, shape, protocol: "Protocol") -> tuple[str, object, "Protocol"]:
        """(task, shape, protocol) of a smoke run of this task: tiny sizes for tests and CI,
        on data every machine has."""
        raise NotImplementedError

    # -- data -------------------------------------------------------------------------------
    def prepare(self, root=None) -> None:
        """Make sure the task's data are on disk (found, copied or downloaded), before
        parallel jobs start; raises DataNotFoundError saying how to get them."""
        raise NotImplementedError

    def load(self, protocol: "Protocol", root=None, device="cpu"):
        raise NotImplementedError

    # -- training ---------------------------------------------------------------------------
    def to_device(self, data, device):
        """The splits where training reads them (default: moved to ``device``)."""
        return data.to(device) if hasattr(data, "to") else data

    def param_groups(self, model: torch.nn.Module, protocol: "Protocol") -> list[dict]:
        """The optimizer's groups when the method has none: one group, every parameter at
        the protocol's weight decay."""
        return [{"params": [p for p in model.parameters() if p.requires_grad],
                 "weight_decay": protocol.weight_decay}]

    def steps_per_epoch(self, protocol: "Protocol", data) -> int | None:
        """Optimizer steps of one pass over the training split (None: no epochs)."""
        return None

    def batches(self, run: "RunConfig", data):
        """The training batches (x, y) of ``run``, one per step, as many as its protocol's
        budget."""
        raise NotImplementedError

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy over every prediction (classes last)."""
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))

    def evaluate(self, model: torch.nn.Module, data, protocol: "Protocol",
                 final: bool = False) -> dict[str, float]:
        raise NotImplementedError

    def evaluate_many(self, forward, run: "RunConfig", data, final: bool = False) -> list[dict]:
        """:meth:`evaluate` of many stacked models of ``run``'s shape at once, one dict per
        model: ``forward(x)`` gives every model's output (M, ...) on the same input."""
        raise NotImplementedError

    def record_columns(self, record: dict, run: "RunConfig") -> dict:
        """Columns of the task's own beside :func:`~lowrank_helpers.core.results.load_records`'
        common ones (default: none)."""
        return {}

    # -- costs ------------------------------------------------------------------------------
    def parameters(self, run: "RunConfig") -> dict[str, int]:
        raise NotImplementedError

    def training_flops(self, run: "RunConfig") -> int:
        raise NotImplementedError

    # -- ids --------------------------------------------------------------------------------
    def canonical(self, run: "RunConfig", seed: bool = True, model: bool = True) -> dict:
        raise NotImplementedError

    def to_config(self, run: "RunConfig") -> dict:
        """The run as a record stores it (``config``)."""
        raise NotImplementedError

    def from_config(self, d: dict) -> dict:
        """A stored ``config`` as :class:`~lowrank_helpers.core.protocol.RunConfig`'s arguments."""
        raise NotImplementedError

    def name_of(self, run: "RunConfig") -> str:
        """A record's file-name stem (the run id follows it)."""
        raise NotImplementedError

    def label_of(self, run: "RunConfig") -> str:
        """The model's name in tables, legends and prose."""
        raise NotImplementedError


def extra_fields(run: "RunConfig", defaults: "Protocol", skip=()) -> tuple[dict, dict]:
    """(run-level, protocol-level) fields of ``run`` a legacy id layout lacks: the method's
    options, and each protocol field not in ``skip`` that differs from ``defaults`` (the
    task's default protocol)."""
    from ..core.settings import settings_of
    proto = {f.name: getattr(run.protocol, f.name) for f in settings_of(type(run.protocol))
             if f.name not in skip and getattr(run.protocol, f.name) != getattr(defaults, f.name)}
    return ({"options": dict(sorted(run.options.items()))} if run.options else {}), proto


#: Tasks by name.
TASKS: dict[str, Task] = {}


def register_task(task: Task) -> Task:
    if task.name in TASKS:
        raise ValueError(f"task {task.name!r} is already registered")
    TASKS[task.name] = task
    return task


def check_task(name: str) -> Task:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; valid tasks: {', '.join(TASKS)}")
    return TASKS[name]


def task_of_config(d: dict) -> Task:
    """The task whose layout a stored ``config`` is in: a language-model record names its
    corpus (and its task where the corpus has several), an MLP record its task (``dataset``
    in schema 1)."""
    if d.get("task") in TASKS:
        return TASKS[d["task"]]
    if "corpus" in d:
        found = [t for t in TASKS.values() if getattr(t, "corpus", None) == d["corpus"]]
        if not found:
            raise ValueError(f"no task models corpus {d['corpus']!r}")
        return found[0]
    return check_task(d.get("task", d.get("dataset", "fashion_mnist")))


def build_model(run: "RunConfig") -> torch.nn.Module:
    """The run's model as its task builds it (seeded by ``run.seed``, global RNG untouched)."""
    return TASKS[run.task].build(run)


