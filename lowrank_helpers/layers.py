"""Low-rank linear layers: y = B(Ax) + b, trained from scratch instead of a dense W.

Names follow the LoRA paper (Hu et al., 2022) and PEFT: W = B·A with
A ∈ R^{r×d_in} (applied first) and B ∈ R^{d_out×r}.
"""
from __future__ import annotations

import math
from numbers import Integral
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

InitFn = Callable[["LowRankLinear"], None]

#: Init schemes by name. Each takes a LowRankLinear and fills ``A``, ``B`` and ``bias`` in place
#: from torch's global random generator (as torch's own layers do).
INITS: dict[str, InitFn] = {}


def register_init(name: str) -> Callable[[InitFn], InitFn]:
    """Decorator that adds an init scheme to :data:`INITS` under ``name``."""
    def add(fn: InitFn) -> InitFn:
        if name in INITS:
            raise ValueError(f"init {name!r} is already registered")
        INITS[name] = fn
        return fn
    return add


def check_init(name: str) -> str:
    if name not in INITS:
        raise ValueError(f"unknown init {name!r}; valid inits: {', '.join(sorted(INITS))}")
    return name


def check_rank(rank) -> int:
    """Return ``rank`` as an int, or raise ValueError if it is not an integer >= 1."""
    if isinstance(rank, bool) or not isinstance(rank, Integral):
        raise ValueError(f"rank must be an integer >= 1, got {rank!r} ({type(rank).__name__})")
    if rank < 1:
        raise ValueError(f"rank must be an integer >= 1, got {rank}")
    return int(rank)


@register_init("lora")
def init_lora(layer: "LowRankLinear") -> None:
    """The original study's rank-dependent init.

    A, B ~ U(-1/√r, 1/√r) and bias ~ U(-1/√d_in, 1/√d_in). Each entry of B·A then has
    variance r · (1/(3r))² = 1/(9r), so the layer's output variance grows like d_in/r.
    """
    bound = 1.0 / math.sqrt(layer.rank)
    nn.init.uniform_(layer.A, -bound, bound)
    nn.init.uniform_(layer.B, -bound, bound)
    if layer.bias is not None:
        bias_bound = 1.0 / math.sqrt(layer.in_features)
        nn.init.uniform_(layer.bias, -bias_bound, bias_bound)


@register_init("default")
def init_default(layer: "LowRankLinear") -> None:
    """PyTorch's default init of ``nn.Linear(d_in, r, bias=False)`` then ``nn.Linear(r, d_out)``.

    This is the "autoencoder" layer of the original study. ``nn.Linear.reset_parameters`` uses
    kaiming_uniform_(a=√5), i.e. U(-1/√fan_in, 1/√fan_in): A ~ U(±1/√d_in), B ~ U(±1/√r), and
    bias ~ U(±1/√r). The draws happen in the same order as for the two stacked layers, so the
    same generator state gives the same tensors.
    """
    nn.init.kaiming_uniform_(layer.A, a=math.sqrt(5))
    nn.init.kaiming_uniform_(layer.B, a=math.sqrt(5))
    if layer.bias is not None:
        bound = 1.0 / math.sqrt(layer.rank)
        nn.init.uniform_(layer.bias, -bound, bound)


class LowRankLinear(nn.Module):
    """Drop-in for ``nn.Linear`` whose weight is the product of two trainable factors.

    ``y = B(Ax) + b`` with ``A`` of shape (rank, in_features) and ``B`` of shape
    (out_features, rank). The dense product B·A is never formed in the forward pass; use
    :meth:`dense_weight` to get it for analysis. A rank above min(in, out) is allowed (the product
    then still has rank at most min(in, out), but the parametrisation differs).
    """

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True,
                 init: str = "lora", device=None, dtype=None) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.rank = check_rank(rank)
        self.init = check_init(init)
        factory = {"device": device, "dtype": dtype}
        self.A = nn.Parameter(torch.empty(self.rank, in_features, **factory))   # (r, d_in)
        self.B = nn.Parameter(torch.empty(out_features, self.rank, **factory))  # (d_out, r)
        self.bias = nn.Parameter(torch.empty(out_features, **factory)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        INITS[self.init](self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (N, d_in) -> (N, r) -> (N, d_out): d_in·r + r·d_out multiply-adds per sample
        return F.linear(F.linear(x, self.A), self.B, self.bias)

    @torch.no_grad()
    def dense_weight(self) -> torch.Tensor:
        """The dense product B·A, shape (out_features, in_features), detached."""
        return self.B @ self.A

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"rank={self.rank}, bias={self.bias is not None}, init={self.init!r}")
