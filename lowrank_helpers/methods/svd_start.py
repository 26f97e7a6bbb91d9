"""The SVD-started control: B·A started from a trained dense model's best rank-r approximation.

Every target layer's trained dense weight W (d_out × d_in) is cut to rank r by its SVD,
W ≈ U_r S_r V_rᵀ (Eckart & Young, 1936: the closest rank-r matrix in Frobenius and spectral
norm), and split evenly between the factors, B = U_r S_r^½ (d_out × r) and A = S_r^½ V_rᵀ
(r × d_in), so that ‖B‖ = ‖A‖; every other tensor (embeddings, norms, biases) is the dense
model's. The dense model is the same run with the dense method at rate ``dense_lr`` and the
same seed; its trained weights come from its checkpoint (:mod:`lowrank_helpers.core.checkpoints`).

Evaluated before any step, the model shows what rank r can represent when it starts from the
dense solution; trained on as B·A (the same protocol as every other run, a fresh optimizer and
schedule), whether B·A can keep or improve a good rank-r solution that training from scratch
may not find. It has seen the dense run's steps too, so it is a control on the solution,
not on compute.
"""
from __future__ import annotations


import torch
from torch import nn

from ..models.layers import LowRankLinear
from .base import Method, Option, number_check, register_method, register_option


_check_lr = number_check("the dense model's positive learning rate")


def dense_source(run):
    """The dense run whose trained model ``run`` starts from: the same task, shape, protocol
    and seed, the dense method, at rate ``dense_lr`` (its task's rule for the rate)."""
    lr = run.options.get("dense_lr")
    if lr is None:
        raise ValueError("an svd_start run needs the option dense_lr: the learning rate of "
                         "the trained dense model it starts from")
    dense = run.replace(method="full", rank=None, init=None, targets=None, options={})
    return dense.task_spec.at_rate(dense, lr)


@torch.no_grad()
def svd_factors(W: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """B (d_out × r) and A (r × d_in) with B·A the best rank-r approximation of W, the
    singular values split evenly: B = U_r S_r^½, A = S_r^½ V_rᵀ."""
    U, S, Vh = torch.linalg.svd(W.double(), full_matrices=False)  # (d_out, k) (k,) (k, d_in)
    root = S[:rank].sqrt()
    return (U[:, :rank] * root).to(W.dtype), (root[:, None] * Vh[:rank]).to(W.dtype)


@torch.no_grad()
def truncate_into(model: nn.Module, dense_state: dict) -> None:
    """Copy ``dense_state`` into ``model``: each :class:`LowRankLinear` gets the SVD factors of
    the dense layer of its name (:func:`svd_factors`), every other tensor its own value."""
    own = model.state_dict()
    done = set()
    for name, layer in model.named_modules():
        if not isinstance(layer, LowRankLinear):
            continue
        key = f"{name}.weight"
        if key not in dense_state:
            raise KeyError(f"the dense model has no {key!r} to factorize into {name!r}")
        B, A = svd_factors(dense_state[key], layer.rank)
        layer.B.copy_(B)
        layer.A.copy_(A)
        done.update({f"{name}.A", f"{name}.B"})
        if layer.bias is not None:
            layer.bias.copy_(dense_state[f"{name}.bias"])
            done.add(f"{name}.bias")
    for key, value in own.items():
        if key in done:
            continue
        if key not in dense_state or dense_state[key].shape != value.shape:
            raise KeyError(f"the dense model has no tensor {key!r} of shape "
                           f"{tuple(value.shape)} for the factorized one")
        value.copy_(dense_state[key])


class SVDStart(Method):
    def start(self, model: nn.Module, run) -> None:
        from ..core.checkpoints import load_checkpoint
        truncate_into(model, load_checkpoint(dense_source(run))["state_dict"])


register_option(Option("dense_lr", None, "the learning rate of the trained dense model an "
                       "SVD-started run starts from", check=_check_lr,
                       applies=lambda m: m.name == "svd_start"))
register_method(SVDStart("svd_start", "SVD-started B·A", factorized=True, init="default",
                         linestyle="-."))
