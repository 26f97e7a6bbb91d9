"""ReLoRA (Lialin et al., "ReLoRA: High-Rank Training Through Low-Rank Updates", ICLR 2024):
a dense W that changes only through merges of a low-rank update.

Each target layer computes x Wᵀ + s·(x Aᵀ) Bᵀ + bias with s = α/r; W is frozen between merges,
A and B train. Every T steps (``relora_every``): W += s·B·A, A is redrawn (Kaiming-uniform,
from a generator of the run's seed and the step), B is zeroed (so the network's function is
unchanged by the merge), and the factors' optimizer state is reset. The schedule is jagged:
after each merge the rate re-warms linearly over ``relora_rewarm`` steps, under the
protocol's own warm-up and cosine. Over k merges W collects a sum of rank-r updates, so its
rank can grow to k·r.

Defaults, from the official code (``relora.py``, the 60M-1B scripts) scaled to this study's
2,000 steps: α = 32 as there; T = 500 (their cycle is a quarter of the run, 5,000 of 20,000
steps); the re-warm-up 10 steps (their 100 of a 5,000-step cycle). Their factors' optimizer
state is magnitude-pruned at a merge; this implementation resets it (the paper's ablation
finds both work, and a reset is the simpler). Their optional full-rank warm start is not
implemented. The guard the reference code lacks: a redrawn A that is all zero (with B zero
no gradient would reach either factor again) is an error, not a silent dead layer.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .base import LayerSpec, Periodic, register_method, register_period

ALPHA, EVERY, REWARM = 32.0, 500, 10


class ReLoRALinear(nn.Module):
    """``x Wᵀ + s·(x Aᵀ) Bᵀ + bias``: W frozen, A and B trained, merged by :meth:`merge`."""

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True,
                 alpha: float = ALPHA, dense_init=None):
        super().__init__()
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.scale = alpha / rank
        base = nn.Linear(in_features, out_features, bias=bias)
        if dense_init is not None:
            dense_init(base)                     # the task's own dense init of W (and bias)
        self.weight = nn.Parameter(base.weight.detach().clone(), requires_grad=False)
        self.bias = nn.Parameter(base.bias.detach().clone()) if bias else None
        self.A = nn.Parameter(torch.empty(rank, in_features))       # (r, d_in)
        self.B = nn.Parameter(torch.zeros(out_features, rank))      # (d_out, r)
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias) + self.scale * F.linear(F.linear(x, self.A),
                                                                           self.B)

    @torch.no_grad()
    def merge(self, generator: torch.Generator | None = None) -> None:
        """W += s·B·A; A redrawn (Kaiming-uniform), B zeroed: the same function."""
        self.weight.add_(self.scale * self.B @ self.A)
        bound = 1 / math.sqrt(self.in_features)       # kaiming_uniform_(a=√5)'s bound
        self.A.copy_(torch.rand(self.A.shape, generator=generator) * 2 * bound - bound)
        self.B.zero_()
        if not self.A.abs().sum() > 0:
            raise RuntimeError("ReLoRA: the redrawn A is all zero; with B zero no gradient "
                               "would reach either factor again")

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"rank={self.rank}, scale={self.scale:g}")


class ReLoRA(Periodic):
    def layer(self, spec: LayerSpec, rank, init) -> nn.Module:
        return ReLoRALinear(spec.d_in, spec.d_out, rank, bias=spec.bias,
                            dense_init=spec.dense_init)

    def training_macs(self, d_in: int, d_out: int, rank: int | None) -> int:
        """The frozen W's forward and input gradient (no weight gradient), and B·A's three."""
        return 2 * d_in * d_out + 3 * rank * (d_in + d_out)

    def input_macs(self, d_in: int, d_out: int, rank: int | None) -> int:
        """The frozen W's product and A's both take the input."""
        return d_in * d_out + rank * d_in

    def after_step(self, model: nn.Module, optimizer, step: int, run) -> None:
        """The merge (:meth:`ReLoRALinear.merge`) and the factors' state reset."""
        gen = torch.Generator().manual_seed(run.seed * 1_000_003 + step)
        for layer in model.modules():
            if isinstance(layer, ReLoRALinear):
                layer.merge(gen)
                for p in (layer.A, layer.B):      # reset: as a fresh state, size kept
                    for key, value in optimizer.state.get(p, {}).items():
                        if torch.is_tensor(value):
                            value.zero_()



register_period("relora", EVERY, REWARM, "ReLoRA's T: steps between merges", "a merge")
register_method(ReLoRA("relora", "ReLoRA", factorized=True, init="default", every=EVERY,
                       linestyle="-."))
