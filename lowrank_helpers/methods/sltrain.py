"""SLTrain (Han et al., "SLTrain: a sparse plus low-rank approach for parameter and memory
efficient pretraining", NeurIPS 2024): every target layer's weight is
W = (α/r)·B·A + S, where S has a fixed random support (a fraction δ of W's entries, drawn once
from the run's seed) and only its values train.

Defaults from the official code and scripts (``splora/splora_linear.py``, the 60M LLaMA
script): δ = 0.03, α = 32; A Kaiming-uniform (a = √5, as ``nn.Linear`` draws a weight), B zero,
so the low-rank part starts at 0 (A's gradient is nonzero once B moves); S's values uniform in
±1/√d_in, the bias uniform in ±1/√d_out. δ and α are the run options ``sltrain_density`` and
``sltrain_alpha`` (defaults :data:`DENSITY`, :data:`ALPHA`; another δ redraws each layer's
support and values from the run's seed); the official scripts also use weight decay 0, which
the study's protocol sets per task, not per method.

The official layer avoids forming W with a custom kernel; this one forms it at every forward
(W = (α/r)·B·A, then S's values added at its support): the same function and gradients, but
its peak memory is not the official one's. The layer is no
:class:`~lowrank_helpers.models.layers.LowRankLinear`, so it trains alone, not stacked.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .base import LayerSpec, Method, Option, number_check, register_method, register_option

#: The fraction of each W's entries in S's support, and the low-rank part's α (scale α/r).
DENSITY = 0.03
ALPHA = 32.0


class SparsePlusLowRankLinear(nn.Module):
    """``x Wᵀ + bias`` with W = (α/r)·B·A + S, S on a fixed random support (module doc)."""

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True,
                 density: float = DENSITY, alpha: float = ALPHA):
        super().__init__()
        if not 0 < density < 1:
            raise ValueError(f"density must lie in (0, 1), got {density!r}")
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.scale = alpha / rank
        self.A = nn.Parameter(torch.empty(rank, in_features))        # (r, d_in)
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))
        self.B = nn.Parameter(torch.zeros(out_features, rank))       # (d_out, r)
        self.register_buffer("support", torch.empty(0, dtype=torch.long))  # flat indices
        self.values = nn.Parameter(torch.empty(0))
        self.resample(density)
        if bias:
            b = 1 / math.sqrt(out_features)
            self.bias = nn.Parameter(torch.empty(out_features).uniform_(-b, b))
        else:
            self.register_parameter("bias", None)

    @torch.no_grad()
    def resample(self, density: float, generator: torch.Generator | None = None) -> None:
        """S's support (a fraction ``density`` of W's entries) and values, drawn from
        ``generator`` (None: torch's global one)."""
        n = max(1, int(density * self.in_features * self.out_features))
        size = self.in_features * self.out_features
        self.support = torch.randperm(size, generator=generator)[:n].sort().values.to(
            self.support.device)
        bound = 1 / math.sqrt(self.in_features)
        values = torch.empty(n).uniform_(-bound, bound, generator=generator)
        self.values = nn.Parameter(values.to(self.values))

    def sparse(self) -> torch.Tensor:
        """S as a dense (d_out, d_in) matrix."""
        s = self.values.new_zeros(self.out_features * self.in_features)
        return s.index_put((self.support,), self.values).view(self.out_features,
                                                              self.in_features)

    def weight(self) -> torch.Tensor:
        """W = (α/r)·B·A + S, (d_out, d_in)."""
        flat = (self.scale * self.B @ self.A).flatten()
        return flat.index_add(0, self.support, self.values).view(self.out_features,
                                                                 self.in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight(), self.bias)

    def extra_repr(self) -> str:
        density = len(self.support) / (self.in_features * self.out_features)
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"rank={self.rank}, density={density:.3f}")


class SLTrain(Method):
    def layer(self, spec: LayerSpec, rank, init) -> nn.Module:
        return SparsePlusLowRankLinear(spec.d_in, spec.d_out, rank, bias=spec.bias)

    def start(self, model: nn.Module, run) -> None:
        """Another δ than :data:`DENSITY`: each layer's support and values drawn again, from
        the run's seed and the layer's place."""
        density = run.options.get("sltrain_density", DENSITY)
        if density == DENSITY:
            return
        layers = [m for m in model.modules() if isinstance(m, SparsePlusLowRankLinear)]
        for i, layer in enumerate(layers):
            layer.resample(density, torch.Generator().manual_seed(run.seed * 1009 + i))

    def training_macs(self, d_in: int, d_out: int, rank: int | None) -> int:
        """As this layer computes: the formed W's three dense products per token (forming W
        and passing its gradient to B, A and S happen once per step, not counted); the
        official kernel's count, r·(d_in + d_out) + δ·d_in·d_out per product, is lower."""
        return 3 * d_in * d_out

    def input_macs(self, d_in: int, d_out: int, rank: int | None) -> int:
        """The formed W's one product takes the input."""
        return d_in * d_out


def _set_alpha(model: nn.Module, alpha: float) -> None:
    for m in model.modules():
        if isinstance(m, SparsePlusLowRankLinear):
            m.scale = alpha / m.rank


register_option(Option("sltrain_density", DENSITY, "SLTrain's δ: the fraction of each W's "
                       "entries in S's support", check=number_check("a number in (0, 1)", high=1),
                       applies=lambda m: m.name == "sltrain"))
register_option(Option("sltrain_alpha", ALPHA, "SLTrain's α: the low-rank part's scale is α/r",
                       check=number_check("a positive number"),
                       applies=lambda m: m.name == "sltrain",
                       apply=_set_alpha))
register_method(SLTrain("sltrain", "SLTrain layers", factorized=True, init="default",
                        linestyle="--"))
