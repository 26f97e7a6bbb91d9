"""GaLore (Zhao et al., "GaLore: Memory-Efficient LLM Training by Gradient Low-Rank
Projection", ICML 2024): W stays dense and full-rank; its gradient is projected to rank r, the
optimizer's moments live in the r-dimensional space, and the update is projected back.

For a target weight W (m × n) with gradient G, every ``galore_every`` steps (T, from the first
step on) a projector is taken from G's SVD, G = U S Vᵀ: P = V_r (n × r) where m ≥ n, else
P = U_r (m × r). Then at every step

    R = G P        (m × r)   or   R = Pᵀ G   (r × n)
    Adam's moments on R, N = m̂ / (√v̂ + ε)
    W ← W − lr · α · N Pᵀ  (or α · P N),  then decoupled weight decay W ← W − lr·λ·W

with α = ``galore_scale``. The moments are kept across a projector change, as the official
code keeps them. With the protocol's SGD instead of AdamW the projected gradient is the
update itself (no moments): at full rank with α = 1 that is SGD exactly.

Defaults from the official ``galore_torch`` (``adamw.py``, ``galore_projector.py``, the
README's LLaMA settings): T = 200, α = 0.25, the "std" projection above; only the task's
target layers (the transformer's six projections, the MLP's layers) are projected, as the
official scripts project only the attention and MLP matrices; every other tensor takes the
same optimizer's unprojected step (GaLore's AdamW: ε added before the bias correction, decay
after the update, within O(lr²) of ``torch.optim.AdamW``; under SGD the decay is decoupled,
unlike ``torch.optim.SGD``'s). The rank is the run's rank. The projector's SVD every T steps is not counted in
the FLOPs the records give.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .base import Method, Option, number_check, register_method, register_option

EVERY, SCALE = 200, 0.25




def projector(grad: torch.Tensor, rank: int) -> torch.Tensor:
    """P from the gradient's SVD: V_r (n × r) where m ≥ n, else U_r (m × r)."""
    U, _, Vh = torch.linalg.svd(grad.float(), full_matrices=False)
    P = Vh[:rank].T if grad.shape[0] >= grad.shape[1] else U[:, :rank]
    return P.to(grad.dtype)


def project(grad: torch.Tensor, P: torch.Tensor) -> torch.Tensor:
    return grad @ P if grad.shape[0] >= grad.shape[1] else P.T @ grad     # (m, r) or (r, n)


def project_back(low: torch.Tensor, P: torch.Tensor, shape) -> torch.Tensor:
    return low @ P.T if shape[0] >= shape[1] else P @ low                 # (m, n)


class GaLoreOptimizer(torch.optim.Optimizer):
    """AdamW (or SGD, ``sgd=True``) in which each group carrying a ``rank`` key is updated
    through GaLore's projection (module doc); every other group is plain. A group may also
    carry ``every`` (T) and ``scale`` (α)."""

    def __init__(self, params, lr: float, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, sgd: bool = False):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))
        self.sgd = sgd

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            lr, wd = group["lr"], group["weight_decay"]
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad, state = p.grad, self.state[p]
                state.setdefault("step", 0)
                ranked = "rank" in group and p.dim() == 2
                if ranked:
                    if state["step"] % group.get("every", EVERY) == 0:
                        state["projector"] = projector(grad, group["rank"])
                    grad = project(grad, state["projector"])
                state["step"] += 1
                if self.sgd:
                    update, step_size = grad, lr
                else:
                    if "exp_avg" not in state:
                        state["exp_avg"] = torch.zeros_like(grad)
                        state["exp_avg_sq"] = torch.zeros_like(grad)
                    m, v = state["exp_avg"], state["exp_avg_sq"]
                    m.mul_(beta1).add_(grad, alpha=1 - beta1)
                    v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                    t = state["step"]
                    step_size = lr * math.sqrt(1 - beta2 ** t) / (1 - beta1 ** t)
                    update = m / (v.sqrt() + group["eps"])
                if ranked:
                    update = project_back(update, state["projector"], p.shape) * \
                        group.get("scale", SCALE)
                p.add_(update, alpha=-step_size)
                if wd:
                    p.add_(p, alpha=-lr * wd)
        return loss


class GaLore(Method):
    def groups(self, model: nn.Module, run, base):
        """The task's groups, each split: the target layers' weights carry GaLore's rank, T and
        α; every other tensor stays plain."""
        targets = _target_weights(model, run)
        every = int(run.options.get("galore_every", EVERY))
        scale = run.options.get("galore_scale", SCALE)
        out = []
        for g in base:
            extra = {k: v for k, v in g.items() if k != "params"}
            ranked = [p for p in g["params"] if id(p) in targets]
            plain = [p for p in g["params"] if id(p) not in targets]
            if plain:
                out.append({**extra, "params": plain})
            if ranked:
                out.append({**extra, "params": ranked, "rank": run.rank, "every": every,
                            "scale": scale})
        return out

    def make_optimizer(self, params, run):
        p = run.protocol
        if p.optimizer == "sgd" and p.momentum:
            raise ValueError("GaLore here projects AdamW's moments or plain SGD's gradient; "
                             "SGD with momentum is not implemented")
        return GaLoreOptimizer(params, lr=p.lr, betas=(p.beta1, p.beta2),
                               weight_decay=p.weight_decay, sgd=p.optimizer == "sgd")


def _target_weights(model: nn.Module, run) -> set[int]:
    """ids of the weights of the run's target layers (the layers a factorized method would
    factorize: the transformer's named projections, every layer of the MLP)."""
    names = set(run.task_spec.targets.get(run.targets) or ())
    out = set()
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and (not names or name.rsplit(".", 1)[-1] in names):
            out.add(id(module.weight))
    return out


register_option(Option("galore_every", EVERY, "GaLore's T: steps between projector updates",
                       check=number_check("a positive int", integer=True),
                       applies=lambda m: m.name == "galore"))
register_option(Option("galore_scale", SCALE, "GaLore's α: the scale of the projected-back "
                       "update", check=number_check("a positive float"),
                       applies=lambda m: m.name == "galore"))
register_method(GaLore("galore", "GaLore", factorized=False, init="default", ranked=True,
                       linestyle=":"))
