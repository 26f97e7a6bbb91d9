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


def _dense_default_bias(layer: "LowRankLinear") -> None:
    """The bias of ``nn.Linear(d_in, d_out)``: U(-1/√d_in, 1/√d_in)."""
    if layer.bias is not None:
        bound = 1.0 / math.sqrt(layer.in_features)
        nn.init.uniform_(layer.bias, -bound, bound)


@register_init("matched")
def init_matched(layer: "LowRankLinear") -> None:
    """Variance-matched: B·A gets the entry variance of PyTorch's default dense init.

    ``nn.Linear(d_in, d_out)`` draws W ~ U(±1/√d_in), Var(W) = 1/(3·d_in). An entry of B·A is
    a sum of r products, Var((BA)_ij) = r·Var(A)·Var(B); splitting evenly gives
    Var(A) = Var(B) = 1/√(3·d_in·r), drawn uniform: A, B ~ U(±√3·(3·d_in·r)^(-1/4)). The bias is
    the dense default's. The layer's forward gain is then 1/3 at every rank, as a dense layer's.
    """
    bound = math.sqrt(3.0) * (3.0 * layer.in_features * layer.rank) ** -0.25
    nn.init.uniform_(layer.A, -bound, bound)
    nn.init.uniform_(layer.B, -bound, bound)
    _dense_default_bias(layer)


@register_init("he")
def init_he(layer: "LowRankLinear") -> None:
    """He/Kaiming init for ReLU networks (He et al., ICCV 2015, "Delving Deep into Rectifiers")
    applied to the product: Var(B·A) = 2/d_in, which keeps the second moment of activations
    constant through ReLU layers. Split evenly: Var(A) = Var(B) = √(2/(d_in·r)), Gaussian as
    in ``kaiming_normal_``; the bias starts at 0, as in that paper.
    """
    std = (2.0 / (layer.in_features * layer.rank)) ** 0.25
    nn.init.normal_(layer.A, 0.0, std)
    nn.init.normal_(layer.B, 0.0, std)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)


def _spectral_from(layer: "LowRankLinear", w: torch.Tensor) -> None:
    """B·A = the best rank-r approximation of the dense matrix ``w`` (d_out, d_in, float64):
    with w = U·S·Vᵀ, B = U_r·√S_r and A = √S_r·V_rᵀ (Eckart–Young). If r exceeds
    min(d_in, d_out) the product is w itself; the extra rows of A are drawn as the "matched"
    init draws them and the extra columns of B start at 0 (so the product stays w and both
    still train, as LoRA's B = 0 start does)."""
    d_in, d_out, r = layer.in_features, layer.out_features, layer.rank
    with torch.no_grad():
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # at these sizes 1 thread is as fast, and immune to a busy CPU
        try:
            u, s, vh = torch.linalg.svd(w, full_matrices=False)
        finally:
            torch.set_num_threads(threads)
        k = min(r, len(s))
        root = s[:k].sqrt()
        b = torch.zeros(d_out, r, dtype=torch.float64)
        a = torch.empty(r, d_in, dtype=torch.float64)
        b[:, :k] = u[:, :k] * root
        a[:k] = root[:, None] * vh[:k]
        if r > k:
            extra = math.sqrt(3.0) * (3.0 * d_in * r) ** -0.25
            a[k:].uniform_(-extra, extra)
        layer.A.copy_(a)
        layer.B.copy_(b)


@register_init("spectral")
def init_spectral(layer: "LowRankLinear") -> None:
    """Spectral init (Khodak et al., ICLR 2021, "Initialization and Regularization of
    Factorized Neural Layers") of a default-init dense matrix: draw W as ``nn.Linear`` does
    (U(±1/√d_in)) and keep its top r singular components (:func:`_spectral_from`). The bias is
    the dense default's. A truncated default matrix keeps only a fraction of the dense layer's
    already small gain: what this init tests is the scale as much as the idea.
    """
    bound = 1.0 / math.sqrt(layer.in_features)
    w = torch.empty(layer.out_features, layer.in_features, dtype=torch.float64)
    _spectral_from(layer, w.uniform_(-bound, bound))
    _dense_default_bias(layer)


@register_init("spectral_he")
def init_spectral_he(layer: "LowRankLinear") -> None:
    """Spectral init of a He-scaled dense matrix: W ~ N(0, 2/d_in) (``kaiming_normal_``), its
    top r singular components kept (:func:`_spectral_from`), the bias at 0 as in ``he``. At full
    rank this is the He-init dense layer; at rank r it keeps the r largest directions."""
    std = math.sqrt(2.0 / layer.in_features)
    w = torch.empty(layer.out_features, layer.in_features, dtype=torch.float64)
    _spectral_from(layer, w.normal_(0.0, std))
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)


#: Inits of a dense ``nn.Linear`` by name (the factorized layers' are :data:`INITS`). Each
#: takes the layer as ``nn.Linear`` built it (PyTorch's default init) and may redraw it.
DENSE_INITS: dict[str, Callable[[nn.Linear], None]] = {}


def _dense_default(layer: nn.Linear) -> None:
    """PyTorch's default: W ~ U(±1/√d_in) (kaiming_uniform_ with a=√5), bias U(±1/√d_in),
    drawn as ``nn.Linear`` is built (nothing redrawn)."""


def _dense_he(layer: nn.Linear) -> None:
    """He init (He et al., 2015): W ~ N(0, 2/d_in) (``kaiming_normal_``, fan-in, ReLU gain),
    bias 0, in every layer (the output layer too, as the factorized ``he`` init)."""
    with torch.no_grad():
        nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
        if layer.bias is not None:
            nn.init.zeros_(layer.bias)


DENSE_INITS.update(default=_dense_default, he=_dense_he)


def check_dense_init(name: str) -> str:
    if name not in DENSE_INITS:
        raise ValueError(f"unknown dense init {name!r}; valid: {', '.join(sorted(DENSE_INITS))}")
    return name


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
