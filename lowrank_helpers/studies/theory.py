"""What the init does to the signal at init, predicted from first principles and measured.

For a layer z = W·x + b with independent zero-mean weights, E[z_i² | x] = Σ_k Var(W_ik)·x_k²
+ Var(b): the pre-activation's second moment is d_in · Var(W) · q + Var(b), where q is the mean
of x_k² over the input's coordinates. For a factorized layer z = B(Ax) + b the entries of B·A are
sums of r independent products, so Var((BA)_ij) = r · Var(A) · Var(B) takes the place of Var(W).
Through a ReLU a symmetric pre-activation keeps half its second moment: q_next = E[z²] / 2.
Chaining these gives each layer's pre-activation RMS at init, for every init and rank
(:func:`predict_forward_std`); :func:`measure_forward_std` measures it on a model and data.
The backward pass runs the same way from the cross-entropy's gradient at the logits, with d_out
in place of d_in (:func:`predict_backward_std`, :func:`measure_backward_std`), and
:func:`effective_lr` gives the learning rate one SGD step on A and B gives the product.
"""
from __future__ import annotations

import functools
import math
from typing import Sequence

import numpy as np
import torch
from torch import nn

from ..models.layers import LowRankLinear, check_init, check_rank
from ..methods import METHODS, check_init_for, method_for_init
from ..models.mlp import DEFAULT_WIDTHS, MLP


def _factorized(method: str) -> bool:
    return METHODS[method].factorized


def break_even_rank(d_in: int, d_out: int) -> float:
    """The rank r* = d_in·d_out / (d_in + d_out) at which B·A has as many parameters (and
    multiply-adds per sample) as the dense W; below it the factorized layer is cheaper."""
    return d_in * d_out / (d_in + d_out)


def _marchenko_pastur(d_in: int, d_out: int, grid: int):
    """m = min and n = max of the sides, and the Marchenko–Pastur law of ratio m/n on a grid of
    midpoints (no 1/x at x = 0): points x and their probabilities (summing to 1)."""
    m, n = min(d_in, d_out), max(d_in, d_out)
    lam = m / n
    lo, hi = (1 - math.sqrt(lam)) ** 2, (1 + math.sqrt(lam)) ** 2
    x = lo + (hi - lo) * (np.arange(grid) + 0.5) / grid
    density = np.sqrt(np.clip((hi - x) * (x - lo), 0, None)) / (2 * math.pi * lam * x)
    return m, n, x, density / density.sum()


def _top(prob: np.ndarray, rank: int, m: int) -> int:
    """Index of the grid point above which the top ``rank`` of m eigenvalues lie."""
    return int(np.searchsorted(np.cumsum(prob), 1 - rank / m))


def marchenko_pastur_energy(rank: int, d_in: int, d_out: int, grid: int = 200_001) -> float:
    """Expected fraction of ‖W‖_F² in the top ``rank`` singular values of a d_out×d_in matrix
    with iid entries, from the Marchenko–Pastur law (exact as both sides grow, ratio fixed).
    This is what the "spectral" init keeps of its dense source."""
    m, n, x, prob = _marchenko_pastur(d_in, d_out, grid)
    if rank >= m:
        return 1.0
    cut = _top(prob, rank, m)
    return float((x[cut:] * prob[cut:]).sum() / (x * prob).sum())


def marchenko_pastur_singular_sum(rank: int, d_in: int, d_out: int, var: float,
                                  grid: int = 200_001) -> float:
    """Expected sum of the top ``rank`` singular values of a d_out×d_in matrix with iid entries
    of variance ``var``, from the Marchenko–Pastur law: with m = min, n = max of the sides, the
    singular values are √(var·n·x) for x Marchenko–Pastur distributed with ratio m/n. This is
    ‖A‖_F² = ‖B‖_F² of the "spectral" init (A = √S_r·V_rᵀ, B = U_r·√S_r)."""
    m, n, x, prob = _marchenko_pastur(d_in, d_out, grid)
    cut = _top(prob, min(rank, m), m)
    return m * math.sqrt(var * n) * float((np.sqrt(x[cut:]) * prob[cut:]).sum())


def init_variances(init: str | None, d_in: int, d_out: int, rank: int | None) -> dict:
    """Entry variances an init gives a layer: ``{"product": Var of W (or of B·A), "bias": ...}``,
    plus ``"A"`` and ``"B"`` for factorized layers. ``init=None``/``rank=None``: nn.Linear."""
    dense = 1 / (3 * d_in)  # nn.Linear: W, b ~ U(±1/√d_in)
    if rank is None:
        if init == "he":  # the He-init dense layer: W ~ N(0, 2/d_in), bias 0
            return {"product": 2 / d_in, "bias": 0.0}
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
    elif init in ("spectral", "spectral_he"):
        # The factors are not iid; "A" and "B" are their mean squared entries, ‖A‖_F²/(r·d_in)
        # and ‖B‖_F²/(d_out·r), which is what the backward formulas need when the data's
        # directions are independent of the random singular vectors (they are, at init).
        source, bias = (dense, dense) if init == "spectral" else (2 / d_in, 0.0)
        k = min(r, d_in, d_out)
        top = marchenko_pastur_singular_sum(k, d_in, d_out, source)
        extra = (r - k) * d_in / math.sqrt(3 * d_in * r)  # rows of A beyond min(d_in, d_out)
        return {"product": source * marchenko_pastur_energy(k, d_in, d_out), "bias": bias,
                "A": (top + extra) / (r * d_in), "B": top / (d_out * r), "top_mean": top / k}
    else:
        raise ValueError(f"no variance formula for init {init!r}; known: default, he, lora, "
                         "matched, spectral, spectral_he")
    return {"product": r * var_a * var_b, "bias": bias, "A": var_a, "B": var_b}


def predict_forward_std(method: str = "full", rank: int | None = None, init: str | None = None,
                        widths: Sequence[int] = DEFAULT_WIDTHS,
                        input_second_moment: float = 1.0) -> list[float]:
    """Predicted RMS of each linear layer's output (pre-activation) at init, for an
    :class:`~lowrank_helpers.MLP` fed inputs whose mean x_k² is ``input_second_moment``."""
    init = check_init_for(method, init)
    q, out = input_second_moment, []
    for l, (d_in, d_out) in enumerate(zip(widths[:-1], widths[1:])):
        v = init_variances(init if _factorized(method) else None, d_in, d_out,
                           rank if _factorized(method) else None)
        second = d_in * v["product"] * q + v["bias"]
        out.append(math.sqrt(second))
        q = second / 2  # ReLU keeps half the second moment of a symmetric pre-activation
    return out


def layer_gains(method: str = "full", rank: int | None = None, init: str | None = None,
                widths: Sequence[int] = DEFAULT_WIDTHS) -> list[float]:
    """d_in · Var(W or B·A) per layer: the factor by which a layer scales the second moment of
    its input (before the bias; 1/3 for nn.Linear's default)."""
    init = check_init_for(method, init)
    return [d_in * init_variances(init if _factorized(method) else None, d_in, d_out,
                                  rank if _factorized(method) else None)["product"]
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
    would with learning rate η·r·(Var(A) + Var(B)). Dense layers: 1. For the spectral init
    (AᵀA = V_r·S_r·V_rᵀ, BBᵀ = U_r·S_r·U_rᵀ, directions independent of G at init) the same
    holds in expectation with the factors' mean squared entries, from the Marchenko–Pastur law.
    """
    if rank is None:
        return 1.0
    v = init_variances(init, d_in, d_out, rank)
    return rank * (v["A"] + v["B"])


def directional_lr(init: str | None, d_in: int, d_out: int, rank: int | None) -> float:
    """The learning rate, relative to η, along the directions that move at all: the step
    −η·(G·AᵀA + BBᵀ·G) is zero outside the r input directions of A's rows and the r output
    directions of B's columns, and along them AᵀA and BBᵀ have eigenvalues of about
    d_in·Var(A) and d_out·Var(B) (for r well below d; exactly the kept singular values for the
    spectral inits). :func:`effective_lr` is this averaged over all directions, diluted by
    r/d; the larger of the two is returned here. For ``lora`` it grows like d_in/(3r) as the
    rank shrinks, while the average stays 2/3. Dense layers: 1."""
    if rank is None:
        return 1.0
    v = init_variances(init, d_in, d_out, rank)
    if "top_mean" in v:
        return v["top_mean"]
    return max(d_in * v["A"], d_out * v["B"])


def lr_multiplier(init: str | None, rank: int | None, kind: str = "average",
                  widths: Sequence[int] = DEFAULT_WIDTHS) -> float:
    """A model's learning-rate multiplier at init: :func:`effective_lr` (``kind="average"``,
    over all directions) or :func:`directional_lr` (``"directional"``, along the directions
    that move) of its largest layer, the layer that limits a stable step."""
    fn = {"average": effective_lr, "directional": directional_lr}[kind]
    return max(fn(init, d_in, d_out, rank) for d_in, d_out in zip(widths[:-1], widths[1:]))


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


def trained_singular_values(model: MLP) -> dict:
    """A trained model's analysis for its record: each layer's singular values (largest first,
    6 significant digits)."""
    return {"singular_values": [[float(f"{v:.6g}") for v in sv.tolist()]
                                for sv in singular_values(model)]}


def _layer_io(model: MLP, x: torch.Tensor, y: torch.Tensor):
    """Every linear layer of ``model`` with its input and the per-sample gradient of the summed
    cross-entropy at its output (∂ℓ_n/∂z_n: row n depends on sample n alone) on (x, y)."""
    layers = model.linear_layers()
    inputs, grads = {}, {}
    hooks = [m.register_forward_hook(lambda mod, inp, out: inputs.__setitem__(mod, inp[0].detach()))
             for m in layers]
    hooks += [m.register_full_backward_hook(
        lambda mod, gin, gout: grads.__setitem__(mod, gout[0].detach())) for m in layers]
    try:
        model.zero_grad(set_to_none=True)
        x = x.detach().clone().requires_grad_(True)  # so that the first layer's hook fires too
        nn.functional.cross_entropy(model(x), y, reduction="sum").backward()
    finally:
        for h in hooks:
            h.remove()
        model.zero_grad(set_to_none=True)
    return [(m, inputs[m].flatten(1).double(), grads[m].double()) for m in layers]


def model_effective_lr(model: MLP, x: torch.Tensor, y: torch.Tensor, *, io=None) -> list[float]:
    """:func:`measure_effective_lr` of every factorized layer of ``model`` on the batch (x, y),
    with the cross-entropy gradient that reaches each layer's output (``io``: that of
    ``_layer_io(model, x, y)``, when already at hand)."""
    return [measure_effective_lr(m, inp, g) for m, inp, g in io or _layer_io(model, x, y)
            if isinstance(m, LowRankLinear)]


@functools.lru_cache(maxsize=1024)  # the same logit RMS recurs for every seed of a model
def softmax_delta_second_moment(logit_rms: float, n_classes: int, samples: int = 200_000,
                                seed: int = 0) -> float:
    """E[(p_j − 1{j = y})²], averaged over the classes j, for softmax probabilities p of iid
    N(0, logit_rms²) logits and a label y independent of them: the second moment of the
    cross-entropy's gradient at the logits, ∂ℓ/∂z = p − onehot(y), at init. It is
    (E[Σ_j p_j²] − 2/C + 1)/C: (1 − 1/C)/C for tiny logits (every class at 1/C), and 2(1 − 1/C)/C
    once the softmax saturates on one random class. E[Σ p_j²] by Monte Carlo (fixed seed)."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(samples, n_classes, generator=g, dtype=torch.float64) * logit_rms
    sum_p2 = torch.softmax(z, dim=1).pow(2).sum(1).mean().item()
    return (sum_p2 - 2 / n_classes + 1) / n_classes


def predict_backward_std(method: str = "full", rank: int | None = None, init: str | None = None,
                         widths: Sequence[int] = DEFAULT_WIDTHS,
                         input_second_moment: float = 1.0) -> list[dict]:
    """Predicted per-sample gradient RMS at init, per linear layer of an
    :class:`~lowrank_helpers.MLP` under cross-entropy, as dicts with

    - ``"delta"``: RMS of ∂ℓ/∂z at the layer's output z (pre-activation);
    - ``"W"``: RMS of the gradient a dense weight in its place would get, ∂ℓ/∂W = δ·xᵀ;
    - ``"A"``, ``"B"`` (factorized layers; None for dense ones): RMS of ∂ℓ/∂A = (Bᵀδ)·xᵀ and
      ∂ℓ/∂B = δ·(Ax)ᵀ.

    The chain runs backwards from the logits: E[δ²] there is :func:`softmax_delta_second_moment`
    of the predicted logit RMS; through a layer, E[δ_in²] = d_out·Var(W)·E[δ_out²] (the rows of
    W, or of B, are independent with mean 0, so the cross terms vanish, as in the forward pass
    with d_out in place of d_in), and the ReLU before it keeps half (its derivative is 1 on half
    the inputs). With q the mean x_k² of a layer's input, E[‖Bᵀδ‖²]/r = d_out·Var(B)·E[δ²] and
    E[‖Ax‖²]/r = d_in·Var(A)·q, so E[(∂ℓ/∂A)²] = d_out·Var(B)·E[δ²]·q,
    E[(∂ℓ/∂B)²] = E[δ²]·d_in·Var(A)·q and E[(∂ℓ/∂W)²] = E[δ²]·q, treating δ and x as
    uncorrelated across samples. These are per-sample values; the mean over a batch of N
    averages N of them.
    """
    init = check_init_for(method, init)
    dense = not _factorized(method)
    pairs = list(zip(widths[:-1], widths[1:]))
    var = [init_variances(None if dense else init, d_in, d_out, None if dense else rank)
           for d_in, d_out in pairs]
    q, qs = input_second_moment, []
    for (d_in, _), v in zip(pairs, var):                 # forward: each layer's input q
        qs.append(q)
        q = (d_in * v["product"] * q + v["bias"]) / 2
    logit_rms = math.sqrt(2 * q)                         # undo the last halving: no ReLU there
    delta2 = softmax_delta_second_moment(logit_rms, widths[-1])
    out = []
    for l in reversed(range(len(pairs))):
        d_in, d_out = pairs[l]
        v = var[l]
        row = {"delta": math.sqrt(delta2), "W": math.sqrt(delta2 * qs[l]), "A": None, "B": None}
        if not dense:
            row["A"] = math.sqrt(d_out * v["B"] * delta2 * qs[l])
            row["B"] = math.sqrt(delta2 * d_in * v["A"] * qs[l])
        out.append(row)
        delta2 = d_out * v["product"] * delta2 / 2       # through W (or B·A), then the ReLU
    return out[::-1]


def measure_backward_std(model: MLP, x: torch.Tensor, y: torch.Tensor, *, io=None) -> list[dict]:
    """Measured per-sample gradient RMS of every linear layer on (x, y), with the keys of
    :func:`predict_backward_std`; exact, from each layer's input and output gradient (the
    per-sample gradient δ_n·x_nᵀ has squared norm ‖δ_n‖²·‖x_n‖², so none is formed).
    ``io``: that of ``_layer_io(model, x, y)``, when already at hand."""
    out = []
    for layer, inp, delta in io or _layer_io(model, x, y):
        d_in, d_out = inp.shape[1], delta.shape[1]
        d2, x2 = delta.pow(2).sum(1), inp.pow(2).sum(1)      # per sample
        row = {"delta": delta.pow(2).mean().sqrt().item(),
               "W": ((d2 * x2).mean() / (d_in * d_out)).sqrt().item(), "A": None, "B": None}
        if isinstance(layer, LowRankLinear):
            A, B, r = layer.A.detach().double(), layer.B.detach().double(), layer.rank
            bt_d2 = (delta @ B).pow(2).sum(1)                # ‖Bᵀδ_n‖²
            ax2 = (inp @ A.T).pow(2).sum(1)                  # ‖A x_n‖²
            row["A"] = ((bt_d2 * x2).mean() / (r * d_in)).sqrt().item()
            row["B"] = ((d2 * ax2).mean() / (d_out * r)).sqrt().item()
        out.append(row)
    return out


def signal_table(ranks, inits, seeds, x: torch.Tensor, y: torch.Tensor | None = None,
                 widths: Sequence[int] = DEFAULT_WIDTHS, progress: bool = False):
    """Measured and predicted per-layer forward RMS (and, with labels ``y``, effective learning
    rate and per-sample gradient RMS at each layer's output, ``*_grad_delta``, and of its
    factors, ``*_grad_A``, ``*_grad_B``) at init for every init, rank and seed: a pandas
    DataFrame, one row per layer."""
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
        predicted = predict_forward_std(method, rank, name, widths, q)
        if y is not None:
            io = _layer_io(model, x, y)  # one forward and backward for both measurements
            lrs = model_effective_lr(model, x, y, io=io)
            grads = measure_backward_std(model, x, y, io=io)
        else:
            lrs = [float("nan")] * len(measured)
            grads = [dict.fromkeys(("delta", "A", "B"), float("nan"))] * len(measured)
        grads_pred = predict_backward_std(method, rank, name, widths, q)
        for l, (d_in, d_out) in enumerate(zip(widths[:-1], widths[1:])):
            rows.append({"init": init, "rank": rank, "seed": seed, "layer": l + 1,
                         "measured_std": measured[l], "predicted_std": predicted[l],
                         "measured_lr": lrs[l], "predicted_lr": effective_lr(init, d_in, d_out, rank),
                         **{f"{side}_grad_{k}": src[l][k] for k in ("delta", "A", "B")
                            for side, src in (("measured", grads), ("predicted", grads_pred))}})
    return pd.DataFrame(rows)
