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


def parameter_ratio(d_in: int, d_out: int, rank: int) -> float:
    """Parameters (and multiply-adds per sample) of B·A over those of W: r·(d_in + d_out) /
    (d_in·d_out), which is 1 at the break-even rank."""
    return rank * (d_in + d_out) / (d_in * d_out)


def effective_lr(init: str | None, d_in: int, d_out: int, rank: int | None) -> float:
    """The learning rate that one SGD step on A and B gives the product B·A, relative to the
    step's own rate η, at init.

    With G = ∂L/∂W the gradient a dense W = B·A would get, ∂L/∂B = G·Aᵀ and ∂L/∂A = Bᵀ·G, so a
    step of size η changes the product by −η·(G·AᵀA + BBᵀ·G) (to first order in η). At init
    E[AᵀA] = r·Var(A)·I and E[BBᵀ] = r·Var(B)·I, so along G the product moves as a dense weight
    would with learning rate η·r·(Var(A) + Var(B)). Dense layers: 1. The spectral init has no
    iid factors: its singular values (√S_r in both factors) give r·(Var(A) + Var(B)) →
    2·mean(S_r) / d, measured, not predicted here (None).
    """
    if rank is None:
        return 1.0
    v = init_variances(init, d_in, d_out, rank)
    if v.get("A") is None:
        return float("nan")
    return rank * (v["A"] + v["B"])


def measure_effective_lr(layer: LowRankLinear, x: torch.Tensor, grad_out: torch.Tensor) -> float:
    """Measured: the product's first-order change along −G for one SGD step on A and B, over
    the dense step's, ⟨−ΔW, G⟩ / (η‖G‖²), for upstream gradient ``grad_out`` at input ``x``."""
    A, B = layer.A.detach().double(), layer.B.detach().double()
    x, g = x.double(), grad_out.double()
    G = g.T @ x                                         # (d_out, d_in): ∂L/∂W of a dense layer
    dW = G @ A.T @ A + B @ B.T @ G                       # −ΔW/η to first order
    return float((dW * G).sum() / (G * G).sum())


def singular_values(model: MLP) -> list[torch.Tensor]:
    """Singular values of each layer's (dense or B·A) weight, largest first."""
    out = []
    for layer in model.linear_layers():
        w = layer.dense_weight() if isinstance(layer, LowRankLinear) else layer.weight.detach()
        out.append(torch.linalg.svdvals(w.double()).float())
    return out


def model_effective_lr(model: MLP, x: torch.Tensor, y: torch.Tensor) -> list[float]:
    """:func:`measure_effective_lr` of every factorized layer of ``model`` on the batch (x, y),
    with the cross-entropy gradient that reaches each layer's output."""
    layers = [m for m in model.linear_layers() if isinstance(m, LowRankLinear)]
    inputs, grads = {}, {}
    hooks = [m.register_forward_hook(lambda mod, inp, out: inputs.__setitem__(mod, inp[0].detach()))
             for m in layers]
    hooks += [m.register_full_backward_hook(
        lambda mod, gin, gout: grads.__setitem__(mod, gout[0].detach())) for m in layers]
    try:
        model.zero_grad(set_to_none=True)
        x = x.detach().clone().requires_grad_(True)  # so that the first layer's hook fires too
        torch.nn.functional.cross_entropy(model(x), y).backward()
    finally:
        for h in hooks:
            h.remove()
    model.zero_grad(set_to_none=True)
    return [measure_effective_lr(m, inputs[m].flatten(1), grads[m]) for m in layers]


def method_for_init(init: str) -> tuple[str, str | None]:
    """The study's (method, init) for an init name: "default" is the autoencoder method."""
    return ("ae", None) if init == "default" else ("lora", init)


def signal_table(ranks, inits, seeds, x: torch.Tensor, y: torch.Tensor | None = None,
                 widths: Sequence[int] = DEFAULT_WIDTHS, progress: bool = False):
    """Measured and predicted per-layer forward RMS (and, with labels ``y``, effective learning
    rate) at init for every init, rank and seed: a pandas DataFrame, one row per layer."""
    import pandas as pd
    from tqdm.auto import tqdm
    q = x.flatten(1).pow(2).mean().item()
    rows = []
    combos = [(i, r, s) for i in inits for r in ranks for s in seeds]
    for init, rank, seed in tqdm(combos, desc="models at init", disable=not progress):
        method, name = method_for_init(init)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = MLP(method, rank, name, widths)
        measured = measure_forward_std(model, x)
        lrs = model_effective_lr(model, x, y) if y is not None else [float("nan")] * len(measured)
        predicted = predict_forward_std(method, rank, name, widths, q)
        for l, (d_in, d_out) in enumerate(zip(widths[:-1], widths[1:])):
            rows.append({"init": init, "rank": rank, "seed": seed, "layer": l + 1,
                         "measured_std": measured[l], "predicted_std": predicted[l],
                         "measured_lr": lrs[l], "predicted_lr": effective_lr(init, d_in, d_out, rank)})
    return pd.DataFrame(rows)
