"""CoLA (Liu et al., "CoLA: Compute-Efficient Pre-Training of LLMs via Low-Rank Activation",
EMNLP 2025): every target layer W x becomes B σ(A x) with σ = SiLU, a nonlinearity inside the
rank-r bottleneck (A ∈ R^{r×d_in}, B ∈ R^{d_out×r}).

Init: the paper's balanced one (the official ``ColaLayer``): both factors drawn from
N(0, s²) with s = (d_in + d_out)^(−1/4) · r^(−1/4), so that the product of the two has
entries of standard deviation about (d_in + d_out)^(−1/2), the Xavier scale; a bias (where
the layer has one) uniform in ±1/√d_out, as there.

Departures from the official code: the task's own nonlinearities stay where they are (CoLA's
LLaMA models keep their SwiGLU too; its ViT variant can drop them); SiLU is the paper's
choice for the language models and is fixed here. The layer is not a
:class:`~lowrank_helpers.models.layers.LowRankLinear` (it computes no B·A), so it trains
alone, not stacked.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .base import LayerSpec, Method, register_method


class CoLALinear(nn.Module):
    """``B σ(A x) + bias`` with σ = SiLU (module doc)."""

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True):
        super().__init__()
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        s = (in_features + out_features) ** -0.25 / rank ** 0.25
        self.A = nn.Parameter(torch.randn(rank, in_features) * s)    # (r, d_in)
        self.B = nn.Parameter(torch.randn(out_features, rank) * s)   # (d_out, r)
        if bias:
            bound = 1 / math.sqrt(out_features)
            self.bias = nn.Parameter(torch.empty(out_features).uniform_(-bound, bound))
        else:
            self.register_parameter("bias", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(F.silu(F.linear(x, self.A)), self.B, self.bias)   # (..., d_out)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"rank={self.rank}, bias={self.bias is not None}")


class CoLA(Method):
    def layer(self, spec: LayerSpec, rank, init) -> nn.Module:
        return CoLALinear(spec.d_in, spec.d_out, rank, bias=spec.bias)


register_method(CoLA("cola", "CoLA layers", factorized=True, init="default", linestyle=":",
                     linear=False))
