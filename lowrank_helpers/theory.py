"""What the init does to the signal at init, predicted from first principles and measured.

For a layer z = W·x + b with independent zero-mean weights, E[z_i² | x] = Σ_k Var(W_ik)·x_k²
+ Var(b): the pre-activation's second moment is d_in · Var(W) · q + Var(b), where q is the mean
of x_k² over the input's coordinates. For a factorized layer z = B(Ax) + b the entries of B·A are
sums of r independent products, so Var((BA)_ij) = r · Var(A) · Var(B) takes the place of Var(W).
Through a ReLU a symmetric pre-activation keeps half its second moment: q_next = E[z²] / 2.
Chaining these gives each layer's pre-activation RMS at init, for every init and rank
(:func:`predict_forward_std`); :func:`measure_forward_std` measures it on a model and data.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from torch import nn

from .layers import LowRankLinear, check_init, check_rank
from .models import DEFAULT_WIDTHS, MLP, method_init


def break_even_rank(d_in: int, d_out: int) -> float:
    """The rank r* = d_in·d_out / (d_in + d_out) at which B·A has as many parameters (and
    multiply-adds per sample) as the dense W; below it the factorized layer is cheaper."""
    return d_in * d_out / (d_in + d_out)


def marchenko_pastur_energy(rank: int, d_in: int, d_out: int, grid: int = 200_001) -> float:
    """Expected fraction of ‖W‖_F² in the top ``rank`` singular values of a d_out×d_in matrix
    with iid entries, from the Marchenko–Pastur law (exact as both sides grow, ratio fixed).
    This is what the "spectral" init keeps of its dense source."""
    m, n = min(d_in, d_out), max(d_in, d_out)
    if rank >= m:
        return 1.0
    lam = m / n
    lo, hi = (1 - math.sqrt(lam)) ** 2, (1 + math.sqrt(lam)) ** 2
    x = lo + (hi - lo) * (np.arange(grid) + 0.5) / grid  # midpoints: no 1/x at x = 0
    density = np.sqrt(np.clip((hi - x) * (x - lo), 0, None)) / (2 * math.pi * lam * x)
    mass = np.cumsum(density) * (x[1] - x[0])          # P(eigenvalue <= x), ends at ~1
    mass /= mass[-1]
    cut = np.searchsorted(mass, 1 - rank / m)          # top `rank` of m eigenvalues lie above
    energy = np.cumsum(x * density)
    return float((energy[-1] - energy[cut]) / energy[-1])


def init_variances(init: str | None, d_in: int, d_out: int, rank: int | None) -> dict:
    """Entry variances an init gives a layer: ``{"product": Var of W (or of B·A), "bias": ...}``,
    plus ``"A"`` and ``"B"`` for factorized layers. ``init=None``/``rank=None``: nn.Linear."""
    dense = 1 / (3 * d_in)  # nn.Linear: W, b ~ U(±1/√d_in)
    if rank is None:
        return {"product": dense, "bias": dense}
    r = check_rank(rank)
    init = check_init(init)
    if init == "lora":
        var_a = var_b = 1 / (3 * r)
        bias = dense
    elif init == "default":
        var_a, var_b, bias = 1 / (3 * d_in), 1 / (3 * r), 1 / (3 * r)
    elif init == "matched":
        var_a = var_b = 1 / math.sqrt(3 * d_in * r)
        bias = dense
    elif init == "he":
        var_a = var_b = math.sqrt(2 / (d_in * r))
        bias = 0.0
    elif init == "spectral":
        k = min(r, d_in, d_out)
        return {"product": dense * marchenko_pastur_energy(k, d_in, d_out), "bias": dense,
                "A": None, "B": None}
    else:
        raise ValueError(f"no variance formula for init {init!r}; known: default, he, lora, "
                         "matched, spectral")
    return {"product": r * var_a * var_b, "bias": bias, "A": var_a, "B": var_b}


def predict_forward_std(method: str = "full", rank: int | None = None, init: str | None = None,
                        widths: Sequence[int] = DEFAULT_WIDTHS,
                        input_second_moment: float = 1.0) -> list[float]:
    """Predicted RMS of each linear layer's output (pre-activation) at init, for an
    :class:`~lowrank_helpers.MLP` fed inputs whose mean x_k² is ``input_second_moment``."""
    init = method_init(method, init)
    q, out = input_second_moment, []
    for l, (d_in, d_out) in enumerate(zip(widths[:-1], widths[1:])):
        v = init_variances(None if method == "full" else init, d_in, d_out,
                           None if method == "full" else rank)
        second = d_in * v["product"] * q + v["bias"]
        out.append(math.sqrt(second))
        q = second / 2  # ReLU keeps half the second moment of a symmetric pre-activation
    return out


def layer_gains(method: str = "full", rank: int | None = None, init: str | None = None,
                widths: Sequence[int] = DEFAULT_WIDTHS) -> list[float]:
    """d_in · Var(W or B·A) per layer: the factor by which a layer scales the second moment of
    its input (before the bias; 1/3 for nn.Linear's default)."""
    init = method_init(method, init)
    return [d_in * init_variances(None if method == "full" else init, d_in, d_out,
                                  None if method == "full" else rank)["product"]
            for d_in, d_out in zip(widths[:-1], widths[1:])]


@torch.no_grad()
def measure_forward_std(model: MLP, x: torch.Tensor) -> list[float]:
    """Measured RMS of each linear layer's output on the batch ``x``."""
    outs: list[float] = []
    hooks = [m.register_forward_hook(lambda mod, inp, out: outs.append(
        out.double().pow(2).mean().sqrt().item()))
        for m in model.modules() if isinstance(m, (nn.Linear, LowRankLinear))]
    try:
        model(x)
    finally:
        for h in hooks:
            h.remove()
    return outs
