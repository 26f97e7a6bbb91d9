"""How models are named, ordered and coloured in tables, legends and prose (the one place),
from the method registry."""
from __future__ import annotations

from ..models.layers import INITS
from .base import METHODS, check_method


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
COLOR_CYCLE = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown",
               "tab:pink", "tab:gray", "tab:olive", "tab:cyan")


def rank_color(rank) -> str:
    """The colour of a rank's curves (the full-rank model, rank None or NaN: black)."""
    try:
        r = int(rank)
    except (TypeError, ValueError):
        return "black"
    return RANK_COLORS.get(r, COLOR_CYCLE[max(r, 1).bit_length() % len(COLOR_CYCLE)])


def init_color(init: str) -> str:
    return INIT_COLORS.get(init, COLOR_CYCLE[sorted(INITS).index(init) % len(COLOR_CYCLE)]
                           if init in INITS else "black")


def linestyle(method: str) -> str:
    return check_method(method).linestyle
