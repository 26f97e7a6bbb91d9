"""A method's layers in a model of one's own: :func:`lowrank`."""
from __future__ import annotations

import fnmatch

import torch
from torch import nn

from ..models.layers import LowRankLinear, check_rank
from .base import LayerSpec, check_init_for, check_method


def _matches(name: str, targets) -> bool:
    """``name`` (a module's dotted name) matches a target: the whole name or its last part,
    as a glob pattern (``"q"``, ``"blocks.*.fc"``, ``"*proj"``)."""
    if targets is None:
        return True
    last = name.rsplit(".", 1)[-1]
    return any(fnmatch.fnmatchcase(name, t) or fnmatch.fnmatchcase(last, t) for t in targets)


@torch.no_grad()
def _from_svd(layer: LowRankLinear, dense: nn.Linear) -> None:
    """B = U_r S_r^½, A = S_r^½ V_rᵀ: the best rank-r approximation of the dense weight
    (Eckart & Young, 1936), split evenly between the factors; the bias copied."""
    u, s, vh = torch.linalg.svd(dense.weight.double(), full_matrices=False)
    r = layer.rank
    root = s[:r].sqrt()
    layer.B.copy_(u[:, :r] * root)          # (d_out, r)
    layer.A.copy_(root[:, None] * vh[:r])   # (r, d_in)
    if layer.bias is not None and dense.bias is not None:
        layer.bias.copy_(dense.bias)


def lowrank(model: nn.Module, rank: int, init: str | None = None, targets=None,
            method: str = "lora", svd: bool = False) -> nn.Module:
    """Replace the ``nn.Linear`` layers of ``model`` whose names match ``targets`` (glob
    patterns on the dotted name or its last part; None: every one) by ``method``'s layers of
    ``rank`` (:class:`~lowrank_helpers.models.layers.LowRankLinear` for a factorized method) with
    ``init``, drawn from scratch, or, with ``svd=True``, the truncated SVD of each dense
    weight. Returns ``model`` (changed in place). A rank above a layer's min(d_in, d_out)
    leaves that layer dense, saying so.

    >>> net = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    >>> net = lowrank(net, rank=4, init="he", targets=["0"])
    >>> type(net[0]).__name__, type(net[2]).__name__
    ('LowRankLinear', 'Linear')
    """
    m = check_method(method)
    init = check_init_for(method, init)
    rank = check_rank(rank) if m.factorized else None
    found = [(name, mod) for name, mod in model.named_modules()
             if isinstance(mod, nn.Linear) and _matches(name, targets)]
    if not found:
        raise ValueError(f"no nn.Linear of the model matches targets {targets!r}; its "
                         "linear layers: " + ", ".join(n for n, x in model.named_modules()
                                                       if isinstance(x, nn.Linear)))
    for name, dense in found:
        if m.factorized and rank > min(dense.in_features, dense.out_features):
            import warnings
            warnings.warn(f"{name}: rank {rank} exceeds min(d_in, d_out) = "
                          f"{min(dense.in_features, dense.out_features)}; left dense",
                          stacklevel=2)
            continue
        spec = LayerSpec(name, dense.in_features, dense.out_features, dense.bias is not None)
        new = m.layer(spec, rank, init).to(device=dense.weight.device,
                                             dtype=dense.weight.dtype)
        if svd and isinstance(new, LowRankLinear):
            _from_svd(new, dense)
        parent, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, leaf, new)
    return model
