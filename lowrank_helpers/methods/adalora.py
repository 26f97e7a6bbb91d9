"""AdaLoRA (Zhang et al., "Adaptive Budget Allocation for Parameter-Efficient Fine-Tuning",
ICLR 2023), trained from scratch: each target layer is P·Λ·Q in the form of an SVD, and a
global budget of singular values is pruned during training to the layers that need them.

Here W = B·diag(E)·A with B (d_out × r₀) for P, E (r₀) for Λ and A (r₀ × d_in) for Q, as PEFT
names them (``lora_B``, ``lora_E``, ``lora_A``), at an initial rank r₀ = ⌈1.5·r⌉
(PEFT's defaults are 12 → 8), pruned to a total of r per layer on
average (the run's rank is the target); a layer with fewer singular values than that (the
MLP's 10-way output layer) gets min(d_in, d_out) of both.

- **Importance** of each entry w of A, E, B: s = |w·∂L/∂w|, smoothed I = EMA_β₁(s) and its
  uncertainty U = EMA_β₂(|s − I|) (β₁ = β₂ = 0.85); score I·U. A triplet i (E_i, row i of A,
  column i of B) scores S_i = score(E_i) + mean of row i's scores + mean of column i's.
- **Budget**: b₀ = Σ r₀ over the layers, b_T = Σ min(r, d_in, d_out). Up to t_init, b₀ and no masking;
  from step T − t_final on (0-based), b_T with the mask fixed (PEFT forces this mask at
  exactly T − t_final); between, the cubic
  b(t) = b_T + (b₀ − b_T)(1 − (t − t_init)/(T − t_final − t_init))³, and every ΔT steps the
  E_i of the b₀ − b(t) lowest S_i (over all layers) are set to 0. A masked E_i still receives
  its gradient and may come back until the final phase; from then on the scores are frozen
  and the same entries are zeroed after every step.
- **Orthogonality**: R = (Σ_A ‖A Aᵀ − I‖_F + Σ_B ‖BᵀB − I‖_F) / (number of A and B), weight
  ``adalora_orth``, added to the training loss through :meth:`Method.penalty`: really added,
  unlike PEFT, whose ``AdaLoraModel.forward`` adds it only to an output carrying ``.loss``
  (a model returning plain logits silently trains without it). The records' training loss
  is the task's loss alone.
- **Final rank per layer** (nonzero E) is kept in each record's ``analysis``; the records'
  optimizer state counts the importance EMAs beside AdamW's (:meth:`AdaLoRA.state_bytes`).

Defaults from the official code (``loralib/adalora.py``; its README's example schedule:
t_init 500, t_final 1500, ΔT 10 of 3,000 steps) and PEFT (``tuners/adalora``): β₁ = β₂ =
0.85; the schedule as fractions of the run: t_init the first sixth, t_final the last half,
ΔT = 10; the penalty's weight 0.1 (the official README and GLUE scripts; PEFT's default is
0.5). Departures, because this is training from scratch, not an adapter over a pretrained W:
there is no frozen W and no α/r scale (PEFT's default scale α/r₀ is a constant the rate
search absorbs), and the layer starts as the rank-r₀ SVD of the task's own dense init
(P, Q orthonormal, Λ its top singular values) instead of PEFT's ΔW = 0 start (E = 0, A and
B ~ N(0, 0.02²)), which from scratch would make every projection start at zero.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .base import LayerSpec, Method, Option, number_check, register_method, register_option

BETA1 = BETA2 = 0.85
INIT_RATIO, ORTH = 1.5, 0.1
TINIT_FRACTION, TFINAL_FRACTION, DELTA_T = 1 / 6, 1 / 2, 10


def initial_rank(rank: int, d_in: int, d_out: int) -> int:
    """r₀ = ⌈1.5·r⌉, at most min(d_in, d_out)."""
    return min(math.ceil(INIT_RATIO * rank), d_in, d_out)


class AdaLoRALinear(nn.Module):
    """``x ↦ B·diag(E)·A x + bias`` (module doc), started as the SVD of a dense init."""

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True,
                 dense_init=None):
        super().__init__()
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        base = nn.Linear(in_features, out_features, bias=bias)
        if dense_init is not None:
            dense_init(base)                         # the task's own dense init
        with torch.no_grad():
            U, S, Vh = torch.linalg.svd(base.weight.double(), full_matrices=False)
        k = min(rank, len(S))
        self.A = nn.Parameter(torch.zeros(rank, in_features))     # Q (r₀, d_in)
        self.E = nn.Parameter(torch.zeros(rank))                  # Λ (r₀)
        self.B = nn.Parameter(torch.zeros(out_features, rank))    # P (d_out, r₀)
        with torch.no_grad():
            self.A[:k] = Vh[:k].float()
            self.E[:k] = S[:k].float()
            self.B[:, :k] = U[:, :k].float()
        self.bias = nn.Parameter(base.bias.detach().clone()) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(F.linear(x, self.A) * self.E, self.B, self.bias)

    def kept(self) -> int:
        """Singular values not masked (nonzero E)."""
        return int((self.E != 0).sum())

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"rank={self.rank}")


def budget(step: int, total: int, b0: int, bT: int, tinit: int, tfinal: int,
           delta_t: int = DELTA_T) -> tuple[int, bool]:
    """The cubic schedule at ``step`` (0-based) of ``total``: (budget, whether to mask now)."""
    if step <= tinit:
        return b0, False
    if step >= total - tfinal:                 # the final phase (from where c reaches 0)
        return bT, True
    c = 1 - (step - tinit) / (total - tfinal - tinit)
    return int(bT + (b0 - bT) * c ** 3), step % delta_t == 0


class RankAllocator:
    """The importance EMAs of one model's AdaLoRA layers and the budget's masking."""

    def __init__(self, layers: list[AdaLoRALinear], target: int, total: int):
        self.layers, self.total = layers, total
        self.b0 = sum(m.rank for m in layers)
        self.bT = sum(min(target, m.in_features, m.out_features) for m in layers)
        self.tinit = int(total * TINIT_FRACTION)
        self.tfinal = int(total * TFINAL_FRACTION)
        if not self.b0 > self.bT or not self.tinit < total - self.tfinal:
            raise ValueError(f"AdaLoRA needs an initial rank above the target and a schedule "
                             f"inside the run (b0 {self.b0}, target {self.bT}, {total} steps)")
        self.ipt: dict[int, torch.Tensor] = {}
        self.unc: dict[int, torch.Tensor] = {}
        self.fixed: torch.Tensor | None = None

    @torch.no_grad()
    def _update(self) -> None:
        for m in self.layers:
            for p in (m.A, m.E, m.B):
                if p.grad is None:
                    continue
                s = (p * p.grad).abs()
                key = id(p)
                if key not in self.ipt:
                    self.ipt[key], self.unc[key] = torch.zeros_like(p), torch.zeros_like(p)
                self.ipt[key].mul_(BETA1).add_(s, alpha=1 - BETA1)
                self.unc[key].mul_(BETA2).add_((s - self.ipt[key]).abs(), alpha=1 - BETA2)

    def scores(self) -> torch.Tensor:
        """S_i of every triplet, the layers' in order (module doc)."""
        out = []
        for m in self.layers:
            def score(p):
                key = id(p)
                return self.ipt[key] * self.unc[key] if key in self.ipt else torch.zeros_like(p)
            out.append(score(m.E) + score(m.A).mean(1) + score(m.B).mean(0))
        return torch.cat(out)

    @torch.no_grad()
    def step(self, step: int) -> int | None:
        """After optimizer step ``step`` (0-based): update the importance, mask to the
        budget; returns the budget masked to, or None."""
        if step < self.total - self.tfinal:
            self._update()
        b, mask = budget(step, self.total, self.b0, self.bT, self.tinit, self.tfinal)
        if not mask:
            return None
        if self.fixed is None or step < self.total - self.tfinal:
            s = self.scores()
            k = self.b0 - b
            if k <= 0:
                return b
            threshold = torch.kthvalue(s, k).values
            masked = s <= threshold
            if step >= self.total - self.tfinal:
                self.fixed = masked            # the final phase's mask, kept
        else:
            masked = self.fixed
        start = 0
        for m in self.layers:
            m.E.masked_fill_(masked[start:start + m.rank], 0.0)
            start += m.rank
        return b


class AdaLoRA(Method):
    def layer(self, spec: LayerSpec, rank, init) -> nn.Module:
        """P·Λ·Q at the initial rank r₀ = ⌈1.5·r⌉ (r: the run's, the target), at most the
        layer's min(d_in, d_out) (no triplet without a singular value to hold)."""
        return AdaLoRALinear(spec.d_in, spec.d_out, initial_rank(rank, spec.d_in, spec.d_out),
                             bias=spec.bias, dense_init=spec.dense_init)

    def every_for(self, run) -> int:
        return 1

    def training_macs(self, d_in: int, d_out: int, rank: int | None) -> int:
        """At the initial rank r₀ (masked entries are still computed), with Λ's products."""
        r0 = initial_rank(rank, d_in, d_out)
        return 3 * (r0 * (d_in + d_out) + r0)

    def input_macs(self, d_in: int, d_out: int, rank: int | None) -> int:
        """Q's product (r₀ × d_in) takes the input."""
        return initial_rank(rank, d_in, d_out) * d_in

    def state_bytes(self, model: nn.Module, optimizer) -> int:
        """The optimizer's state and the importance and uncertainty EMAs (2 × A, E, B)."""
        allocator = getattr(model, "_adalora", None)
        extra = 0 if allocator is None else sum(
            t.numel() * t.element_size() for d in (allocator.ipt, allocator.unc)
            for t in d.values())
        return super().state_bytes(model, optimizer) + extra

    def begin(self, model: nn.Module, optimizer, total: int, run) -> None:
        """The model's rank allocator, for the run's ``total`` steps."""
        layers = [m for m in model.modules() if isinstance(m, AdaLoRALinear)]
        object.__setattr__(model, "_adalora", RankAllocator(layers, run.rank, total))

    def after_step(self, model: nn.Module, optimizer, step: int, run) -> None:
        model._adalora.step(step - 1)

    def penalty(self, model: nn.Module, run) -> torch.Tensor | None:
        weight = run.options.get("adalora_orth", ORTH)
        if not weight:
            return None
        terms = []
        for m in model.modules():
            if isinstance(m, AdaLoRALinear):
                eye = torch.eye(m.rank, device=m.A.device, dtype=m.A.dtype)
                terms.append(torch.linalg.matrix_norm(m.A @ m.A.T - eye))
                terms.append(torch.linalg.matrix_norm(m.B.T @ m.B - eye))
        return weight * torch.stack(terms).mean() if terms else None

    def summary(self, model: nn.Module) -> dict:
        """Each layer's final rank (nonzero E), by the module's name, and their total."""
        ranks = {n: m.kept() for n, m in model.named_modules() if isinstance(m, AdaLoRALinear)}
        return {"adalora_ranks": ranks, "adalora_total_rank": sum(ranks.values())}


_weight = number_check("a non-negative number", strict=False)


register_option(Option("adalora_orth", ORTH, "AdaLoRA's orthogonality penalty weight",
                       check=_weight, applies=lambda m: m.name == "adalora"))
register_method(AdaLoRA("adalora", "AdaLoRA", factorized=True, init="default",
                        linestyle="--"))
