"""A run's settings, defined once: how to train (:class:`Protocol`) and what (:class:`RunConfig`).

Everything that can change a result is a field here, declared once with its kind, check and
help (:mod:`lowrank_helpers.core.settings`). The command line's flags, the notebooks' parameters, the
records, the run ids and the keys that group replicates are all derived from these fields:

- ``run_id`` hashes every field, numbers normalized first (``momentum: 0`` and ``0.0`` are the
  same run);
- ``group_id`` hashes every field but the seed: runs with equal ``group_id`` are replicates;
- ``protocol_id`` hashes the task, the model's widths and the protocol: runs with equal
  ``protocol_id`` were trained and evaluated alike and may be compared model against model.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field, fields, replace
from typing import Any

from ..models.layers import check_rank
from ..methods import METHODS, check_init_for
from .settings import (check_settings, fraction, non_negative, positive, setting, settings_of)
from ..tasks import TASKS

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("constant", "cosine", "cosine_nanogpt")
#: The record schema this code writes. Schema 1 (the reference run's records) stored the run
#: flat, with ``dataset`` for the task; :meth:`RunConfig.from_dict` reads both.
SCHEMA = 2


@dataclass(frozen=True)
class Protocol:
    """How a model is trained and evaluated, for every task: optimizer, schedule and budget
    (epochs or steps), data order and splits, evaluation. The defaults are the original
    study's protocol: plain SGD at lr 1e-3, batch 64, 100 epochs over the training set in a
    fixed order, test accuracy after every epoch; each task has its own default protocol
    (:attr:`~lowrank_helpers.tasks.Task.default_protocol`: nanoGPT's for the character
    transformer). Fields added for the language model (``since=3``) enter a run's id only when
    they differ from their default, so every shipped id keeps its meaning."""
    epochs: int | None = setting(100, "int|None", "passes over the training set (None: the "
                                 "budget is steps)", check=positive)
    batch_size: int = setting(64, "int", "samples per step", check=positive)
    optimizer: str = setting("sgd", "str", "optimizer", choices=OPTIMIZERS)
    lr: float = setting(1e-3, "float", "learning rate (peak of the schedule)", check=positive)
    momentum: float = setting(0.0, "float", "SGD momentum (sgd only)", check=fraction)
    weight_decay: float = setting(0.0, "float", "weight decay (decoupled for adamw)",
                                  check=non_negative)
    schedule: str = setting("constant", "str", "learning-rate schedule after the warm-up: "
                            "constant; cosine, decay to min_lr at the last step; "
                            "cosine_nanogpt, nanoGPT's get_lr (min_lr one step after the last)",
                            choices=SCHEDULES, since=2)
    warmup_steps: int = setting(0, "int", "steps of linear warm-up from 0 to lr",
                                check=non_negative, since=2)
    min_lr: float = setting(0.0, "float", "the cosine schedule's final learning rate",
                            check=non_negative, since=2)
    shuffle: bool = setting(False, "bool", "shuffle the training data each epoch (the "
                            "original does not)")
    val_size: int = setting(0, "int", "training samples held out as a validation split "
                            "(the last ones), evaluated after every epoch", check=non_negative,
                            since=2)
    train_subset: int | None = setting(None, "int|None", "train on the first n samples only",
                                       check=positive)
    test_subset: int | None = setting(None, "int|None", "evaluate on the first n test "
                                      "samples only", check=positive)
    steps: int | None = setting(None, "int|None", "optimizer steps (None: epochs × the steps "
                                "of an epoch)", check=positive, since=3)
    beta1: float = setting(0.9, "float", "AdamW's β1", check=fraction, since=3)
    beta2: float = setting(0.999, "float", "AdamW's β2", check=fraction, since=3)
    grad_clip: float = setting(0.0, "float", "clip the gradient's norm to this (0: off)",
                               check=non_negative, since=3)
    eval_every: int | None = setting(None, "int|None", "steps between evaluations (None: after "
                                     "every epoch)", check=positive, since=3)
    eval_samples: int | None = setting(None, "int|None", "samples of each split read by an "
                                       "evaluation during training (None: all; the last "
                                       "evaluation reads all)", check=positive, since=3)

    def __post_init__(self):
        check_settings(self)
        if self.optimizer != "sgd" and self.momentum:
            raise ValueError(f"momentum applies to optimizer 'sgd' only, not {self.optimizer!r}")
        if self.schedule == "constant" and self.min_lr:
            raise ValueError("min_lr applies to the cosine schedules only, not 'constant'")
        if self.min_lr > self.lr:
            raise ValueError(f"min_lr ({self.min_lr:g}) must not exceed lr ({self.lr:g})")
        if self.epochs is None and self.steps is None:
            raise ValueError("a protocol needs a budget: epochs or steps")
        if self.train_subset is not None and self.val_size >= self.train_subset:
            raise ValueError(f"val_size ({self.val_size}) must be smaller than train_subset "
                             f"({self.train_subset}): some samples must be left to train on")

    @property
    def plain_sgd(self) -> bool:
        """SGD without momentum (at any schedule): what the engine's written-out step does."""
        return self.optimizer == "sgd" and not self.momentum

    def lr_at(self, step: int, total_steps: int, lr: float | None = None) -> float:
        """The learning rate of step ``step`` (0-based) of ``total_steps`` (at peak ``lr``,
        default the protocol's): linear warm-up over ``warmup_steps`` (as nanoGPT:
        lr·(step+1)/(warmup+1)), then constant, or a cosine decay from lr to ``min_lr``
        (Loshchilov & Hutter, SGDR, 2017): ``cosine`` reaches min_lr at the last step,
        ``cosine_nanogpt`` (nanoGPT's ``get_lr``, over ``total_steps − warmup`` steps) one step
        after it."""
        lr = self.lr if lr is None else lr
        if step < self.warmup_steps:
            return lr * (step + 1) / (self.warmup_steps + 1)
        if self.schedule == "constant":
            return lr
        span = total_steps - self.warmup_steps - (self.schedule == "cosine")
        progress = min(1.0, (step - self.warmup_steps) / max(1, span))
        return self.min_lr + 0.5 * (lr - self.min_lr) * (1 + math.cos(math.pi * progress))

    def total_steps(self, steps_per_epoch: int | None = None) -> int:
        """The run's optimizer steps: ``steps``, else ``epochs`` × ``steps_per_epoch``."""
        if self.steps is not None:
            return self.steps
        if steps_per_epoch is None:
            raise ValueError("a budget in epochs needs the steps of an epoch")
        return self.epochs * steps_per_epoch

    def init_decay(self, total_steps: int | None = None) -> float:
        """γ = Π_t (1 − lr_t · weight_decay): the factor by which decoupled weight decay
        (Loshchilov & Hutter, 2019) shrinks a decayed tensor's initial value over the run
        (each step multiplies it by 1 − lr_t·λ before the update is added), so a trained
        W = γ·W₀ + the decayed sum of the updates."""
        total = self.total_steps() if total_steps is None else total_steps
        gamma = 1.0
        for it in range(total):
            gamma *= 1 - self.lr_at(it, total) * self.weight_decay
        return gamma

    @property
    def constant_lr(self) -> bool:
        return self.schedule == "constant" and not self.warmup_steps

    def smoke(self, epochs: int, train_subset: int, test_subset: int) -> "Protocol":
        """This protocol shrunk for a smoke run (a validation split shrinks with the data)."""
        val = min(self.val_size, train_subset // 4)
        return replace(self, epochs=min(self.epochs, epochs), train_subset=train_subset,
                       test_subset=test_subset, val_size=val,
                       warmup_steps=min(self.warmup_steps, 2))

    def to_dict(self) -> dict[str, Any]:
        """Every field, but those added for other tasks (``since`` 3) only where set."""
        return {f.name: getattr(self, f.name) for f in settings_of(Protocol)
                if f.metadata["since"] < 3 or getattr(self, f.name) != f.default}

    def describe(self) -> str:
        """A one-line label: optimizer, lr, batch and budget, then every other field that is
        not at its default (``momentum 0.9, shuffled``)."""
        budget = f"{self.epochs} epochs" if self.steps is None else f"{self.steps} steps"
        parts = [f"{self.optimizer} lr={self.lr:g}, batch {self.batch_size}, {budget}"]
        for name, value in self.non_default(exclude=("optimizer", "lr", "batch_size", "epochs",
                                                     "steps")):
            parts.append("shuffled" if name == "shuffle" else
                         f"{name.replace('_', ' ')} {value:g}" if isinstance(value, float) else
                         f"{name.replace('_', ' ')} {value}")
        return ", ".join(parts)

    def non_default(self, exclude=()) -> list[tuple[str, Any]]:
        """(field, value) of every field not at its default, in declaration order."""
        return [(f.name, getattr(self, f.name)) for f in settings_of(Protocol)
                if f.name not in exclude and getattr(self, f.name) != f.default]


PROTOCOL_FIELDS = tuple(f.name for f in settings_of(Protocol))


def check_rank_fits(rank: int, widths, dense_output: bool = False) -> None:
    """Refuse a rank above min(d_in, d_out) of every factorized layer: B·A would then restrict
    no layer, an over-parameterized "factorization" no study means. A rank above some layers'
    but not all (the reference study's 512 → 10 output layer at ranks above 10) is allowed:
    that layer's product has rank min(r, d_in, d_out) and r·(d_in + d_out) parameters."""
    layers = list(zip(widths[:-1], widths[1:]))[:-1 if dense_output else None]
    if layers and rank > max(min(a, b) for a, b in layers):
        shown = "-".join(map(str, widths))
        raise ValueError(f"rank {rank} exceeds min(d_in, d_out) of every factorized layer "
                         f"(at most {max(min(a, b) for a, b in layers)} for widths {shown}): "
                         "B·A would restrict no layer; choose a smaller rank")


def _hash(d: dict) -> str:
    return hashlib.sha1(json.dumps(d, sort_keys=True).encode()).hexdigest()[:10]


class Options(tuple):
    """A run's method options, as sorted (name, value) pairs (hashable, like the run); read
    like a dict: ``run.options.get("rescale", 1.0)``, ``dict(run.options)``."""

    def __new__(cls, options=None):
        return super().__new__(cls, sorted(dict(options or {}).items()))

    def items(self):
        return iter(self)

    def get(self, name, default=None):
        return dict(self).get(name, default)


@dataclass(frozen=True)
class RunConfig:
    """One training run, of any task: a task, a model (method and its options, rank, init,
    the task's shape, the target layers), a protocol and a seed.

    ``init=None`` takes the method's own (``"lora"`` for ``lora``, PyTorch's ``"default"`` for
    ``ae``); ``shape`` (``widths``, for the MLP) None the task's; ``targets`` None the task's
    default set (the MLP: every layer; the transformer: all six projections, ``"both"``);
    ``protocol`` None the task's default protocol. ``rescale`` c ≠ 1 (factorized methods
    only) is the option that multiplies every A by c and divides every B by c after the init:
    the same function, only the learning rate each factor sees changes (a control).
    ``RunConfig(method="lora", rank=4, epochs=5)``: the protocol's fields may also be given by
    name.
    """
    task: str = "fashion_mnist"
    method: str = "full"
    rank: int | None = None
    init: str | None = None
    shape: Any = None
    seed: int = 0
    protocol: Protocol = field(default_factory=Protocol)
    targets: str | None = None
    options: Options = field(default_factory=Options)

    def __init__(self, task="fashion_mnist", method="full", rank=None, init=None, widths=None,
                 seed=0, protocol: Protocol | None = None, rescale=None, shape=None,
                 targets=None, options=None, **protocol_fields):
        from ..methods import check_options
        unknown = sorted(set(protocol_fields) - set(PROTOCOL_FIELDS))
        if unknown:
            own = ", ".join(f.name for f in fields(RunConfig))
            raise TypeError(f"RunConfig got unknown field(s) {', '.join(unknown)}; fields: {own}, "
                            f"and the protocol's: {', '.join(PROTOCOL_FIELDS)}")
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}; valid tasks: {', '.join(TASKS)}")
        t = TASKS[task]
        protocol = Protocol(**protocol) if isinstance(protocol, dict) else \
            t.default_protocol if protocol is None else protocol
        if not isinstance(protocol, Protocol):
            raise TypeError(f"protocol must be a Protocol (or a dict of its fields), got "
                            f"{protocol!r}")
        if protocol_fields:
            protocol = replace(protocol, **protocol_fields)
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; valid methods: {', '.join(METHODS)}")
        m = METHODS[method]
        if m.takes_rank:
            rank = check_rank(rank)
        elif rank is not None:
            raise ValueError(f"method {method!r} takes no rank, got rank={rank!r}")
        if widths is not None and shape is not None:
            raise TypeError("give the shape once: widths (the MLP's name for it) or shape")
        shape = t.check_shape(shape if shape is not None else widths)
        targets = None if method == "full" else t.check_targets(targets)
        if m.takes_rank:
            t.check_rank(rank, shape, targets, m)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed must be int, got {seed!r} ({type(seed).__name__})")
        options = dict(options or {})
        if rescale is not None:
            if (isinstance(rescale, bool) or not isinstance(rescale, (int, float))
                    or not math.isfinite(rescale) or rescale <= 0):
                raise ValueError(f"rescale must be a positive number, got {rescale!r}")
            if rescale != 1 and not m.factorized:
                raise ValueError(f"rescale scales the factors A and B; method {method!r} has "
                                 "none (use rescale=1)")
            options["rescale"] = float(rescale)
        options = Options(check_options(method, options))
        for name, value in (("task", task), ("method", method), ("rank", rank),
                            ("init", check_init_for(method, init)), ("shape", shape),
                            ("seed", int(seed)), ("protocol", protocol), ("targets", targets),
                            ("options", options)):
            object.__setattr__(self, name, value)

    def __getattr__(self, name):  # run.epochs, run.lr, ...: the protocol's fields
        if name in PROTOCOL_FIELDS:
            return getattr(self.protocol, name)
        raise AttributeError(f"{type(self).__name__!s} has no attribute {name!r}")

    @property
    def widths(self):
        """The MLP's name for its shape."""
        return self.shape

    @property
    def rescale(self) -> float:
        return self.options.get("rescale", 1.0)

    @property
    def task_spec(self):
        return TASKS[self.task]

    def replace(self, **changes) -> "RunConfig":
        """This run with ``changes`` (its own fields or the protocol's), checked anew."""
        own = {f.name: getattr(self, f.name) for f in fields(RunConfig)}
        if "widths" in changes:
            own.pop("shape")
        if "rescale" in changes:
            own["options"] = {k: v for k, v in own["options"].items() if k != "rescale"}
        return RunConfig(**{**own, **changes})

    def to_dict(self) -> dict[str, Any]:
        """As stored in a record (the task's layout: schema 2 for the MLP)."""
        return self.task_spec.to_config(self)

    @classmethod
    def from_dict(cls, d: dict) -> "RunConfig":
        """A record's config, in any task's layout (the MLP's schema 1 and 2, the language
        model's lm-1)."""
        from ..tasks import task_of_config
        return cls(**task_of_config(d).from_config(d))

    def _canonical(self, seed: bool = True, model: bool = True) -> dict:
        """What the ids hash (:meth:`~lowrank_helpers.tasks.Task.canonical`)."""
        return self.task_spec.canonical(self, seed, model)

    @property
    def run_id(self) -> str:
        """Short hash of every field: two runs with the same id are the same experiment."""
        return _hash(self._canonical())

    @property
    def group_id(self) -> str:
        """Hash of every field but the seed: runs with the same one are replicates."""
        return _hash(self._canonical(seed=False))

    @property
    def protocol_id(self) -> str:
        """Hash of the task, the shape and the protocol: runs trained and evaluated alike."""
        return _hash(self._canonical(seed=False, model=False))

    @property
    def model_key(self) -> str:
        """Every field but the seed, the learning rate and the final learning rate: the runs
        of one model's learning-rate search."""
        return _hash(self.replace(seed=0, lr=1.0, min_lr=0.0)._canonical(seed=False))

    @property
    def name(self) -> str:
        """File-name stem: task, model, seed (the run id follows it in a record's name)."""
        return self.task_spec.name_of(self)

    @property
    def label(self) -> str:
        return self.task_spec.label_of(self)

    def build(self):
        """The run's model, drawn from its seed (the global generator untouched)."""
        return self.task_spec.build(self)


#: The original study's protocol on its task: the only runs its published numbers may sit beside.
REFERENCE = RunConfig()

