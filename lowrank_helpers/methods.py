"""The methods compared, and how models are named, ordered and coloured (the one place).

A method is how every linear layer of a model is built: dense, or a factorized B·A with an init
that is either chosen per run or fixed. Adding one is a :class:`Method` and a call to
:func:`register_method`; the command line's choices, the tables, the figures and the explorer
read this registry.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn

from .layers import DENSE_INITS, INITS, LowRankLinear, check_dense_init, check_init


@dataclass(frozen=True)
class Method:
    """A kind of layer, in every layer of a model.

    ``init``: the init its layers always use (``None``: chosen per run, ``default_init`` if not
    given); a dense method's is one of :data:`~lowrank_helpers.layers.DENSE_INITS`, a factorized
    one's one of :data:`~lowrank_helpers.layers.INITS`. ``dense_output``: the output layer
    stays dense (PyTorch's default init) while the hidden layers are factorized.
    ``param_groups(model, lr)``: optimizer parameter groups (default: one group at the
    protocol's lr); a method with its own groups trains with the plain loop, not stacked.
    """
    name: str
    label: str                      # "LoRA layers": in tables, legends, prose
    factorized: bool                # B·A of a rank, or a dense W
    init: str | None = None         # fixed init, or None: chosen per run
    default_init: str | None = None
    linestyle: str = "-"
    param_groups: Callable[[nn.Module, float], list[dict]] | None = None
    dense_output: bool = False

    def takes_init(self) -> bool:
        return self.init is None

    @property
    def own_init(self) -> str:
        """The init its runs use unless told otherwise."""
        return self.init if self.init is not None else self.default_init

    def layer(self, d_in: int, d_out: int, rank: int | None, init: str,
              output: bool = False) -> nn.Module:
        """One of the method's layers (``output``: the model's last), drawn from torch's
        global generator."""
        if not self.factorized:
            layer = nn.Linear(d_in, d_out)
            DENSE_INITS[init](layer)
            return layer
        if output and self.dense_output:
            return nn.Linear(d_in, d_out)
        return LowRankLinear(d_in, d_out, rank, init=init)

    @property
    def stackable(self) -> bool:
        """Whether the stacked engine can train it (dense or B·A layers, the default step)."""
        return self.param_groups is None


#: Methods by name, in the order tables and legends list them.
METHODS: dict[str, Method] = {}


def register_method(method: Method) -> Method:
    if method.name in METHODS:
        raise ValueError(f"method {method.name!r} is already registered")
    METHODS[method.name] = method
    return method


register_method(Method("full", "full-rank", factorized=False, init="default"))
register_method(Method("lora", "LoRA layers", factorized=True, default_init="lora"))
register_method(Method("ae", "autoencoder layers", factorized=True, init="default",
                       linestyle="--"))
#: The original study's methods: what a study compares unless told otherwise.
ORIGINAL_METHODS = ("full", "lora", "ae")
# The fair comparison's baseline and control (notebooks/tuned.ipynb).
register_method(Method("full_he", "He-init full-rank", factorized=False, init="he",
                       linestyle=":"))
register_method(Method("densehead", "LoRA layers, dense head", factorized=True,
                       default_init="lora", linestyle="-.", dense_output=True))


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
    if not m.factorized:
        check_dense_init(m.init)
    if init is not None and init != m.init:
        raise ValueError(f"method {method!r} always uses init {m.init!r}, got init={init!r}; "
                         f"methods that take an init: {', '.join(init_methods()) or 'none'}")
    return m.init


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


def model_label(method: str, rank, init: str | None) -> str:
    """The model's name in tables, legends and prose: "full-rank MLP", "LoRA layers r=4",
    "autoencoder layers r=8", "LoRA layers r=4 (he init)"."""
    m = check_method(method)
    if not m.factorized:
        return f"{m.label} MLP" + ("" if init in (None, m.own_init) else f" ({init} init)")
    return f"{m.label} r={int(rank)}" + ("" if init in (None, m.own_init) else f" ({init} init)")


def family_label(method: str, init: str | None) -> str:
    """A method with its init, as a line of a plot against rank names it: "LoRA layers",
    "LoRA layers (he init)"."""
    m = check_method(method)
    return m.label + ("" if init in (None, m.own_init) else f" ({init} init)")


def model_order(method: str, rank, init: str | None) -> tuple:
    """Sort key: methods in registry order, then init (the method's own first), then rank."""
    m = check_method(method)
    return (list(METHODS).index(method), init not in (None, m.own_init), str(init), int(rank or 0))


# The original's colours for ranks 4…128, extended to ranks 1 and 2 (others cycle tab10).
RANK_COLORS = {1: "tab:cyan", 2: "tab:olive", 4: "blue", 8: "green", 16: "red", 32: "purple",
               64: "orange", 128: "brown"}
INIT_COLORS = {"lora": "tab:blue", "default": "tab:orange", "matched": "tab:green",
               "he": "tab:red", "spectral": "tab:purple", "spectral_he": "tab:pink"}
_CYCLE = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown",
          "tab:pink", "tab:gray", "tab:olive", "tab:cyan")


def rank_color(rank) -> str:
    """The colour of a rank's curves (the full-rank model, rank None or NaN: black)."""
    try:
        r = int(rank)
    except (TypeError, ValueError):
        return "black"
    return RANK_COLORS.get(r, _CYCLE[max(r, 1).bit_length() % len(_CYCLE)])


def init_color(init: str) -> str:
    return INIT_COLORS.get(init, _CYCLE[sorted(INITS).index(init) % len(_CYCLE)]
                           if init in INITS else "black")


def linestyle(method: str) -> str:
    return check_method(method).linestyle
