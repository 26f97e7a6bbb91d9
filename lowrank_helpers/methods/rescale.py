"""The rescaling control, an option of every factorized method: A → c·A and B → B/c after the
init. The model computes the same function; only the learning rate each factor sees changes
(under SGD ∂L/∂A scales by 1/c and ∂L/∂B by c). ``rescale`` enters a run's id only when it is
not 1."""

import torch
from torch import nn

from ..models.layers import LowRankLinear
from .base import Option, number_check, register_option


_check = number_check("a positive number")


@torch.no_grad()
def rescale_factors(model: nn.Module, c: float) -> None:
    """A → c·A and B → B/c in every factorized layer of ``model``."""
    for layer in model.modules():
        if isinstance(layer, LowRankLinear):
            layer.A.mul_(c)
            layer.B.div_(c)


register_option(Option("rescale", 1.0, "A → c·A, B → B/c after the init (a control)",
                       check=_check, applies=lambda m: m.factorized, apply=rescale_factors))
