"""LORO (Mo et al., "Parameter and Memory Efficient Pretraining via Low-rank Riemannian
Optimization", ICLR 2025): W = B·A trained by Adam on the factors, plus, every K steps, one
exact Riemannian step on the manifold of rank-r matrices.

Between exact steps (the "lazy" steps) the factors take Adam's step at the rate times
s = r / min(d_in, d_out) (the official ``lr_scaler = -1``: r over the hidden size, which is
min(d_in, d_out) for every projection of this study's transformer); every other tensor takes
AdamW's step at the rate.

Every K steps (``loro_every``) the factors take the exact step instead. With N_B, N_A Adam's
preconditioned directions m/(√v + ε) of B and A (the official code's: Adam's moments, not the
raw gradients), B = U R_B and Aᵀ = V R_A (thin QRs, W = U R_B R_Aᵀ Vᵀ), the full gradient's
two sides follow from the factors' without forming it:

    G V = N_B R_A⁻¹,        Uᵀ G = R_B⁻ᵀ N_A

and its projection on the tangent space at W, P(G) = U UᵀG + G V Vᵀ − U UᵀG V Vᵀ, is
[U Q₂] Σ [V Q₁]ᵀ with K₀ = UᵀG V, (UᵀG (I − V Vᵀ))ᵀ = Q₁ K₁, (I − U Uᵀ) G V = Q₂ K₂ (QRs) and
Σ = [[K₀, K₁ᵀ], [K₂, 0]]. The step W − η P(G) is then [U Q₂] (S − η Σ) [V Q₁]ᵀ with
S = [[R_B R_Aᵀ, 0], [0, 0]]; one SVD of that 2r × 2r matrix, cut to rank r, gives the new
factors, balanced: B = [U Q₂] U_r Σ_r^½, Aᵀ = [V Q₁] V_r Σ_r^½. η is Adam's bias-corrected
rate, without the lazy steps' s, and no weight decay is applied, as in the official code.
After the exact step every tensor's Adam state is reset (``loro_refresh all``: moments zeroed,
step count 0), and the rate re-warms linearly over ``loro_rewarm`` steps (their
cosine-with-restarts schedule's ramp). A layer whose rank is min(d_in, d_out) or more (the
MLP's 10-way output layer at r = 32) is on no proper low-rank manifold: its factors take the
lazy step at the exact steps too. Weight decay, where the protocol's groups have it, is
applied to the factors after their lazy step at the plain rate (decoupled, as AdamW's).

Defaults from the official code (``loro_torch/loro_optim.py``, ``scripts/loro_c4/
llama_60m.sh``): the lazy steps' scaler r/d; K = 500 with the state reset at the same steps,
in a 10,000-step run, i.e. every twentieth of the run: K = 100 of this study's 2,000 steps;
the 5-step re-warm-up; each factor Xavier-normal (``loro_init xavier``). Departures: the
protocol's AdamW (ε = 1e-8, its weight-decay split and decay 0.1 for every method; the 60M
script uses ε = 1e-6 and no decay), in float32 (they train in bfloat16); their warm-up of
1,000 steps and the schedule's shifted cosine are the protocol's own warm-up and cosine here.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .base import LayerSpec, Periodic, register_method, register_period
from ..models.layers import LowRankLinear

EVERY, REWARM = 100, 5


@torch.no_grad()
def exact_step(B: torch.Tensor, A: torch.Tensor, dB: torch.Tensor, dA: torch.Tensor,
               lr: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The exact Riemannian step (module doc) from W = B·A along the directions ``dB``
    (= G Aᵀ) and ``dA`` (= Bᵀ G) of the factors: the new (B, A), balanced (BᵀB = A Aᵀ),
    whose product is the rank-r truncation of W − lr·P(G). In float32, returned in B's dtype."""
    dtype, r = B.dtype, B.shape[1]
    B, A, dB, dA = (t.float() for t in (B, A, dB, dA))
    U, RB = torch.linalg.qr(B)                              # (m, r), (r, r)
    V, RA = torch.linalg.qr(A.T)                            # (n, r), (r, r)
    GV = torch.linalg.solve_triangular(RA, dB, upper=True, left=False)      # N_B R_A⁻¹ (m, r)
    UtG = torch.linalg.solve_triangular(RB.T, dA, upper=False)              # R_B⁻ᵀ N_A (r, n)
    K0 = UtG @ V                                            # (r, r)
    Q1, K1 = torch.linalg.qr((UtG - K0 @ V.T).T)            # (n, r), (r, r)
    Q2, K2 = torch.linalg.qr(GV - U @ (U.T @ GV))           # (m, r), (r, r)
    sigma = torch.cat([torch.cat([K0, K1.T], 1), torch.cat([K2, torch.zeros_like(K0)], 1)])
    S = torch.zeros_like(sigma)
    S[:r, :r] = RB @ RA.T
    Us, s, Vsh = torch.linalg.svd(S - lr * sigma)
    half = s[:r].clamp_min(0).sqrt()
    B_new = torch.cat([U, Q2], 1) @ Us[:, :r] * half
    A_new = (torch.cat([V, Q1], 1) @ Vsh[:r].T * half).T
    return B_new.to(dtype), A_new.to(dtype)


class LOROAdamW(torch.optim.Optimizer):
    """AdamW whose groups with ``pairs`` (their params ``[B₁, A₁, B₂, A₂, …]``, one
    ``scalers`` entry per pair) are LORO's factors: lazy steps at the rate times the pair's
    scaler, and every ``every`` steps the exact step (module doc), after which every state is
    reset."""

    def __init__(self, params, lr: float, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, every: int = EVERY):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))
        self.every, self.steps = every, 0

    def _direction(self, p, group):
        """Adam's moments updated with p's gradient; returns m/(√v+ε) and the bias-corrected
        step size's factor √(1−β₂ᵗ)/(1−β₁ᵗ)."""
        beta1, beta2 = group["betas"]
        state = self.state[p]
        if "exp_avg" not in state:
            state["step"] = 0
            state["exp_avg"], state["exp_avg_sq"] = torch.zeros_like(p), torch.zeros_like(p)
        state["step"] += 1
        m, v, t = state["exp_avg"], state["exp_avg_sq"], state["step"]
        m.mul_(beta1).add_(p.grad, alpha=1 - beta1)
        v.mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
        return m / (v.sqrt() + group["eps"]), math.sqrt(1 - beta2 ** t) / (1 - beta1 ** t)

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        self.steps += 1
        exact = bool(self.every) and self.steps % self.every == 0
        for group in self.param_groups:
            lr, wd, params = group["lr"], group["weight_decay"], group["params"]
            if not group.get("pairs"):
                for p in params:
                    if p.grad is None:
                        continue
                    direction, corr = self._direction(p, group)
                    if wd:
                        p.mul_(1 - lr * wd)
                    p.add_(direction, alpha=-lr * corr)
                continue
            for (B, A), scaler in zip(zip(params[::2], params[1::2]), group["scalers"]):
                if B.grad is None or A.grad is None:
                    continue
                dB, corr = self._direction(B, group)
                dA, _ = self._direction(A, group)
                if exact and B.shape[1] < min(B.shape[0], A.shape[1]):
                    # (at r ≥ min(d_in, d_out) the rank-r manifold is every matrix: the lazy
                    # step is the step there, and the QRs' factors would not be square)
                    B_new, A_new = exact_step(B, A, dB, dA, lr * corr)
                    B.copy_(B_new)
                    A.copy_(A_new)
                    continue
                for p, d in ((B, dB), (A, dA)):
                    p.add_(d, alpha=-lr * scaler * corr)
                    if wd:
                        p.add_(p, alpha=-lr * wd)
        if exact:
            self.reset_state()
        return loss

    @torch.no_grad()
    def reset_state(self) -> None:
        """Every tensor's moments zeroed and its step count set to 0 (the official
        ``refresh_states("all")``): the next step is Adam's first again, and the state's size
        is kept (and measured)."""
        for state in self.state.values():
            for key, value in state.items():
                if torch.is_tensor(value):
                    value.zero_()
            state["step"] = 0


class LORO(Periodic):
    def layer(self, spec: LayerSpec, rank, init) -> nn.Module:
        """B·A with each factor Xavier-normal (the official ``loro_init xavier``)."""
        layer = LowRankLinear(spec.d_in, spec.d_out, rank, bias=spec.bias, init="default")
        nn.init.xavier_normal_(layer.A)
        nn.init.xavier_normal_(layer.B)
        return layer

    def groups(self, model: nn.Module, run, base):
        """The task's groups, each split: the factors of every B·A layer in it, in pairs with
        their lazy steps' scaler r / min(d_in, d_out); every other tensor plain."""
        layers = {id(m.B): m for m in model.modules() if isinstance(m, LowRankLinear)}
        out = []
        for g in base:
            extra = {k: v for k, v in g.items() if k != "params"}
            ids = {id(p) for p in g["params"]}
            own = [m for key, m in layers.items() if key in ids]
            for m in own:
                if id(m.A) not in ids:
                    raise ValueError("LORO needs each layer's B and A in one optimizer group")
            pairs = {id(m.A) for m in own} | {id(m.B) for m in own}
            plain = [p for p in g["params"] if id(p) not in pairs]
            if plain:
                out.append({**extra, "params": plain})
            if own:
                out.append({**extra, "params": [p for m in own for p in (m.B, m.A)],
                            "pairs": True, "scalers": [m.rank / min(m.in_features,
                                                                    m.out_features)
                                                       for m in own]})
        return out

    def make_optimizer(self, params, run):
        p = run.protocol
        if p.optimizer != "adamw":
            raise ValueError(f"LORO is Adam on the factors; the protocol's optimizer is "
                             f"{p.optimizer!r} (LORO takes adamw)")
        return LOROAdamW(params, lr=p.lr, betas=(p.beta1, p.beta2),
                         weight_decay=p.weight_decay, every=self.every_for(run) or 0)




register_period("loro", EVERY, REWARM, "LORO's K: steps between exact steps (0: none)",
                "an exact step")
register_method(LORO("loro", "LORO", factorized=True, init="default", linestyle="--"))
