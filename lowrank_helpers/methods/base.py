"""What a method is: how a model's target layers are built, and what it adds to training.

A method is one :class:`Method` (or a subclass of it) in a module of its own and one call to
:func:`register_method`, in the manner of PEFT's tuners. A method may

- build each target layer of a task's model (:meth:`Method.layer`; the task names its
  targets: the MLP's layers, the transformer's q, k, v, o, fc, proj);
- set the built model's starting point from elsewhere than its seed (:meth:`Method.start`:
  a trained dense model's SVD);
- change the model once it is built (:meth:`Method.prepare`: rescale, freeze, ...);
- set the optimizer's parameter groups (:meth:`Method.groups`, from the task's) or bring its
  own optimizer (:meth:`Method.make_optimizer`);
- run a hook after the optimizer step, every step or every ``every`` steps
  (:meth:`Method.after_step`, :meth:`Method.every_for`: merges, masks, projections, state
  resets), scale the schedule's rate (:meth:`Method.lr_factor`: a re-warm-up), and add a
  term to the loss (:meth:`Method.penalty`: an orthogonality penalty);
- say what the trained model shows of it (:meth:`Method.summary`: final ranks);
- count its trainable parameters and optimizer state (:meth:`Method.trainable`,
  :func:`optimizer_state_bytes`, measured from the state tensors);
- say whether the stacked trainers may train it (:attr:`Method.stackable`: only methods
  that change nothing of the step).

The command line's choices, the configs, the tables, the figures and the explorer read the
registry; nothing outside the method's module names it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from ..models.layers import DENSE_INITS, LowRankLinear, check_dense_init, check_init


@dataclass(frozen=True)
class LayerSpec:
    """One target layer of a task's model, as the task describes it to a method: its name
    (``"fc1"``, ``"q"``), sizes, whether it has a bias, whether it is the model's output
    layer, and the task's own init for it as a dense layer (``dense_init(layer)``)."""
    name: str
    d_in: int
    d_out: int
    bias: bool = True
    output: bool = False
    dense_init: Callable[[nn.Linear], None] | None = None


@dataclass(frozen=True)
class Option:
    """A method option (LoRA+'s λ, the factors' rescaling c): its default, a check, and which
    methods take it. An option enters a run's id only when it differs from its default."""
    name: str
    default: Any
    help: str
    check: Callable[[str, Any], None] | None = None
    applies: Callable[["Method"], bool] = lambda m: True
    apply: Callable[[nn.Module, Any], None] | None = None  # after the model is built


#: Options by name (:func:`register_option`).
OPTIONS: dict[str, Option] = {}


def register_option(option: Option) -> Option:
    if option.name in OPTIONS:
        raise ValueError(f"option {option.name!r} is already registered")
    OPTIONS[option.name] = option
    return option


@dataclass(frozen=True)
class Method:
    """A kind of layer in a model's target layers, and what it changes in training.

    ``factorized``: B·A of a rank (:class:`~lowrank_helpers.models.layers.LowRankLinear`), or a
    dense W. ``init``: the init its layers always use (``None``: chosen per run,
    ``default_init`` if not given); a dense method's is one of
    :data:`~lowrank_helpers.models.layers.DENSE_INITS` (``"default"``: the task's own dense init), a
    factorized one's one of :data:`~lowrank_helpers.models.layers.INITS`. ``dense_output``: the
    model's output layer is not a target (it stays the task's dense layer).
    ``param_groups(model, lr)``: the optimizer's groups (the short way to override
    :meth:`groups`). ``every``: how often :meth:`after_step` runs (None: never). ``ranked``:
    a dense method whose runs still name a rank (GaLore's gradient projection). ``linear``: its
    layer computes x ↦ Wx + b for some W (False: CoLA's B·σ(A·x)).
    """
    name: str
    label: str                      # "LoRA layers": in tables, legends, prose
    factorized: bool                # B·A of a rank, or a dense W
    init: str | None = None         # fixed init, or None: chosen per run
    default_init: str | None = None
    linestyle: str = "-"
    param_groups: Callable[[nn.Module, float], list[dict]] | None = None
    dense_output: bool = False
    every: int | None = None
    ranked: bool = False            # dense layers, yet a rank (GaLore's projection rank)
    linear: bool = True             # the layer is a linear map of its input

    # -- what the method is ---------------------------------------------------------------
    @property
    def takes_rank(self) -> bool:
        """A run of it names a rank: its layers' (factorized), or its own (``ranked``)."""
        return self.factorized or self.ranked

    def takes_init(self) -> bool:
        return self.init is None

    @property
    def own_init(self) -> str:
        """The init its runs use unless told otherwise."""
        return self.init if self.init is not None else self.default_init

    def options(self) -> dict[str, Option]:
        """The registered options this method takes."""
        return {k: o for k, o in OPTIONS.items() if o.applies(self)}

    @property
    def stackable(self) -> bool:
        """Whether the stacked trainers may train it: its layers are dense or B·A, and it
        changes nothing of the step (no groups, optimizer or hook of its own)."""
        own = type(self)
        return (self.param_groups is None and own.groups is Method.groups
                and own.make_optimizer is Method.make_optimizer
                and own.after_step is Method.after_step and own.lr_factor is Method.lr_factor
                and own.penalty is Method.penalty and own.begin is Method.begin
                and own.summary is Method.summary and own.state_bytes is Method.state_bytes
                and own.layer in _STACKABLE_LAYERS)

    # -- building ---------------------------------------------------------------------------
    def layer(self, spec: LayerSpec, rank: int | None, init: str) -> nn.Module:
        """One target layer, drawn from torch's global generator (as torch's own layers are):
        a dense ``nn.Linear`` with ``init`` (``"task"``: the task's dense init), or a
        :class:`LowRankLinear` of ``rank`` with ``init``. The output layer of a method with
        ``dense_output`` is the task's dense layer."""
        if not self.factorized or (spec.output and self.dense_output):
            layer = nn.Linear(spec.d_in, spec.d_out, bias=spec.bias)
            name = init if not self.factorized else "default"
            if name == "default" and spec.dense_init is not None:
                spec.dense_init(layer)      # the task's own dense init (nanoGPT's N(0, 0.02))
            else:
                DENSE_INITS[name](layer)    # "default": as nn.Linear drew it; "he": redrawn
            return layer
        return LowRankLinear(spec.d_in, spec.d_out, rank, bias=spec.bias, init=init)

    def start(self, model: nn.Module, run) -> None:
        """Set the built model's starting point (default: the init drawn from the run's seed,
        left as it is); runs before :meth:`prepare`."""

    def prepare(self, model: nn.Module, options: dict) -> None:
        """Change the built model (default: apply each given option that has an effect)."""
        for name, value in options.items():
            option = OPTIONS[name]
            if option.apply is not None and value != option.default:
                option.apply(model, value)

    # -- training -------------------------------------------------------------------------
    def groups(self, model: nn.Module, run, base: list[dict]) -> list[dict] | None:
        """The optimizer's parameter groups for ``run`` (each may carry its own ``lr``, a
        multiple of the protocol's, and ``weight_decay``); ``base``: the task's groups
        (nanoGPT's decay split for the transformer). None: ``base``."""
        return self.param_groups(model, run.protocol.lr) if self.param_groups is not None \
            else None

    def make_optimizer(self, params, run) -> torch.optim.Optimizer | None:
        """The method's own optimizer over ``params`` (tensors or groups) for ``run``; None:
        the protocol's (:func:`~lowrank_helpers.training.loop.make_optimizer`)."""
        return None

    def begin(self, model: nn.Module, optimizer, total: int, run) -> None:
        """Runs once before the first step, knowing the run's ``total`` steps (AdaLoRA's
        budget schedule)."""

    def every_for(self, run) -> int | None:
        """How often :meth:`after_step` runs for ``run`` (default ``every``; an option may
        set it)."""
        return self.every

    def after_step(self, model: nn.Module, optimizer, step: int, run) -> None:
        """Runs after optimizer step ``step`` (1-based) when ``step % every_for(run) == 0``."""

    def lr_factor(self, step: int, run) -> float:
        """A factor on the schedule's rate at step ``step`` (0-based; default 1)."""
        return 1.0

    def penalty(self, model: nn.Module, run) -> torch.Tensor | None:
        """A term added to the training loss before the backward pass (AdaLoRA's
        orthogonality); None: nothing. The records' training loss is the task's alone."""
        return None

    def summary(self, model: nn.Module) -> dict:
        """What the trained model says about the method (AdaLoRA's final ranks), kept in
        the record's ``analysis``; default nothing."""
        return {}

    # -- counting -------------------------------------------------------------------------
    def training_macs(self, d_in: int, d_out: int, rank: int | None) -> int:
        """Multiply-adds per token (or sample) of one target layer in a training step, as
        this implementation computes them: forward, input gradient and weight gradient, 3×
        the forward's r·(d_in + d_out) for B·A or d_in·d_out for a dense W (what is done once
        per step, not per token, is not counted)."""
        return 3 * (rank * (d_in + d_out) if self.factorized else d_in * d_out)

    def input_macs(self, d_in: int, d_out: int, rank: int | None) -> int:
        """Multiply-adds per token (or sample) of the products that take the layer's input:
        what its input gradient costs, which a network's first layer does not need (x·Aᵀ's
        r·d_in for B·A, d_in·d_out for a dense W)."""
        return rank * d_in if self.factorized else d_in * d_out

    def state_bytes(self, model: nn.Module, optimizer) -> int:
        """Bytes of the training state beside the weights: the optimizer's, measured from its
        state tensors (:func:`optimizer_state_bytes`), and any the method keeps itself."""
        return optimizer_state_bytes(optimizer)

    def trainable(self, model: nn.Module) -> int:
        """Trainable parameters of the built model."""
        return sum(p.numel() for p in model.parameters() if p.requires_grad)


def number_check(what: str, low: float = 0.0, high: float | None = None, strict: bool = True,
                 integer: bool = False) -> Callable[[str, Any], None]:
    """An option's check: a finite number (no bool) above ``low`` (at or above it without
    ``strict``), below ``high``, integral with ``integer``; ``what`` says what is accepted
    ("a positive number") in the error."""
    def check(name: str, value) -> None:
        ok = (not isinstance(value, bool) and isinstance(value, (int, float))
              and math.isfinite(value) and (value > low if strict else value >= low)
              and (high is None or value < high)
              and (not integer or float(value).is_integer()))
        if not ok:
            raise ValueError(f"{name} must be {what}, got {value!r}")
    return check


def check_steps(name: str, value) -> None:
    """An option that counts steps (a period, a re-warm-up): a non-negative integer."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer (steps), got {value!r}")


class Periodic(Method):
    """A method with an event every ``{name}_every`` steps (a merge, an exact step) after
    which the rate re-warms over ``{name}_rewarm`` steps (options registered by
    :func:`register_period`): ReLoRA, LORO."""

    def _option(self, run, what: str) -> int:
        key = f"{self.name}_{what}"
        return int(run.options.get(key, OPTIONS[key].default))

    def every_for(self, run) -> int | None:
        return self._option(run, "every") or None          # 0: no event

    def lr_factor(self, step: int, run) -> float:
        """The jagged schedule (:func:`rewarm_factor`)."""
        return rewarm_factor(step, self.every_for(run), self._option(run, "rewarm"))


def register_period(method: str, every: int, rewarm: int, every_help: str, event: str
                    ) -> None:
    """Register a :class:`Periodic` method's two options: its period ``every`` (steps; 0:
    none) and the re-warm-up ``rewarm`` (steps) after each ``event``."""
    register_option(Option(f"{method}_every", every, every_help, check=check_steps,
                           applies=lambda m: m.name == method))
    register_option(Option(f"{method}_rewarm", rewarm, f"re-warm-up after {event}, steps",
                           check=check_steps, applies=lambda m: m.name == method))


def rewarm_factor(step: int, every: int | None, steps: int) -> float:
    """A jagged schedule's factor at ``step`` (0-based): after each event every ``every`` steps
    (a merge, an exact step, a state reset), the rate re-warms linearly over ``steps`` steps;
    1 before the first event (ReLoRA's and LORO's schedules)."""
    if not every or step < every or steps <= 0:
        return 1.0
    return min(1.0, (step % every + 1) / (steps + 1))


#: Layer builders the stacked trainers know (a method overriding :meth:`Method.layer` with
#: its own kind of layer is trained alone).
_STACKABLE_LAYERS = (Method.layer,)

#: Methods by name, in the order tables and legends list them.
METHODS: dict[str, Method] = {}


def register_method(method: Method) -> Method:
    """Add ``method`` to the registry (once per name): the command line, the configs, the
    tables and the figures find it there."""
    if method.name in METHODS:
        raise ValueError(f"method {method.name!r} is already registered")
    if method.factorized and method.init is not None:
        check_init(method.init)
    if not method.factorized and method.init is not None:
        check_dense_init(method.init)
    METHODS[method.name] = method
    return method


def check_method(name: str) -> Method:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; valid methods: {', '.join(METHODS)}")
    return METHODS[name]


def check_init_for(method: str, init: str | None) -> str:
    """The init a run of ``method`` uses: ``init`` if the method takes one (else its default);
    a method with a fixed init refuses any other."""
    m = check_method(method)
    if m.takes_init():
        return check_init(init or m.default_init)
    if init is not None and init != m.init:
        raise ValueError(f"method {method!r} always uses init {m.init!r}, got init={init!r}; "
                         f"methods that take an init: {', '.join(init_methods()) or 'none'}")
    return m.init


def check_options(method: str, options: dict | None) -> dict:
    """``options`` of a run of ``method``, checked (unknown or inapplicable names, bad
    values), with the ones at their default left out (so that they do not enter ids)."""
    m = check_method(method)
    options = dict(options or {})
    takes = m.options()
    unknown = [k for k in options if k not in takes]
    if unknown:
        raise ValueError(f"method {method!r} takes no option {', '.join(map(repr, unknown))}; "
                         f"its options: {', '.join(takes) or 'none'}")
    out = {}
    for k, v in options.items():
        if takes[k].check is not None:
            takes[k].check(k, v)
        if v != takes[k].default:
            out[k] = v
    return out


def init_methods() -> list[str]:
    return [m.name for m in METHODS.values() if m.takes_init()]


def method_for_init(init: str) -> tuple[str, str | None]:
    """The (method, init) that trains factorized layers with ``init``: a method whose init is
    fixed to it (``"default"`` is the autoencoder layers), else a method that takes an init."""
    check_init(init)
    for m in METHODS.values():
        if m.factorized and m.init == init:
            return m.name, None
    return next(m.name for m in METHODS.values() if m.factorized and m.takes_init()), init


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of the optimizer's state, measured from its state tensors (momentum buffers,
    Adam's moments, a projector: whatever the optimizer keeps)."""
    total = 0
    for state in optimizer.state.values():
        for v in state.values():
            if torch.is_tensor(v) and v.numel() > 1:  # not a step counter
                total += v.numel() * v.element_size()
    return total

