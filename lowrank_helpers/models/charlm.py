"""A decoder-only character transformer, nanoGPT's model, whose projections may be B·A.

The architecture is nanoGPT's ``model.py`` (Karpathy, 2022) without dropout or biases:
token and position embeddings, ``n_layer`` pre-LayerNorm blocks (causal self-attention, then a
4× MLP with GELU, each added to the residual stream), a final LayerNorm and a linear head tied
to the token embedding. Dense weights start as nanoGPT's do, N(0, 0.02²), the two residual
projections per block at 0.02/√(2·n_layer) (GPT-2's scaled init).

``factorize`` picks which projections are a method's layers (:mod:`lowrank_helpers.methods`;
by default ``"lora"``: :class:`~lowrank_helpers.models.layers.LowRankLinear` of ``rank`` with a
registered init): the attention's Q, K, V and O (``"attn"``), the MLP's two (``"mlp"``), all
six (``"both"``) or none (``"none"``, the dense model). The embeddings and the head stay dense,
as in GaLore's low-rank baseline.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .layers import LowRankLinear, check_rank

#: Which projections each ``factorize`` choice makes low-rank.
FACTORIZE = {"none": (), "attn": ("q", "k", "v", "o"), "mlp": ("fc", "proj"),
             "both": ("q", "k", "v", "o", "fc", "proj")}
#: The projections that write into the residual stream (GPT-2's scaled init).
RESIDUAL = ("o", "proj")
STD = 0.02  # nanoGPT's (and GPT-2's) init std of every dense weight


def check_factorize(name: str) -> str:
    if name not in FACTORIZE:
        raise ValueError(f"unknown factorize {name!r}; valid: {', '.join(FACTORIZE)}")
    return name


@dataclass(frozen=True)
class LMShape:
    """The model's shape (nanoGPT's names, ``n_embd`` is ``d_model`` here)."""
    n_layer: int = 4
    n_head: int = 4
    d_model: int = 128
    block_size: int = 64      # context length in characters
    vocab_size: int = 65      # tiny-shakespeare's 65 characters

    def __post_init__(self):
        for name in ("n_layer", "n_head", "d_model", "block_size", "vocab_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
        if self.d_model % self.n_head:
            raise ValueError(f"d_model ({self.d_model}) must be a multiple of n_head "
                             f"({self.n_head})")

    def projections(self) -> dict[str, tuple[int, int]]:
        """Each block's projections: name -> (d_in, d_out)."""
        d = self.d_model
        return {"q": (d, d), "k": (d, d), "v": (d, d), "o": (d, d), "fc": (d, 4 * d),
                "proj": (4 * d, d)}


def layer_spec(name: str, d_in: int, d_out: int, shape: LMShape):
    """A projection as a method sees it: no bias, nanoGPT's N(0, std²) as its dense init."""
    from ..methods import LayerSpec
    std = STD / math.sqrt(2 * shape.n_layer) if name in RESIDUAL else STD
    return LayerSpec(name, d_in, d_out, bias=False,
                     dense_init=lambda layer: nn.init.normal_(layer.weight, 0.0, std))


def _linear(name: str, d_in: int, d_out: int, shape: LMShape, factorize: str, rank, init,
            method: str):
    from ..methods import METHODS
    spec = layer_spec(name, d_in, d_out, shape)
    if name in FACTORIZE[factorize]:
        return METHODS[method].layer(spec, rank, init)
    return METHODS["full"].layer(spec, None, "default")  # the task's dense layer


class Block(nn.Module):
    """x + attn(ln(x)), then x + mlp(ln(x))."""

    #: PyTorch's fused kernel; off where vmap trains many models (it has no batching rule)
    fused_attention = True

    def __init__(self, shape: LMShape, factorize: str, rank, init, method: str = "lora"):
        super().__init__()
        self.n_head = shape.n_head
        self.ln_1 = nn.LayerNorm(shape.d_model, bias=False)
        self.ln_2 = nn.LayerNorm(shape.d_model, bias=False)
        self.shape_names = tuple(shape.projections())
        for name, (d_in, d_out) in shape.projections().items():
            setattr(self, name, _linear(name, d_in, d_out, shape, factorize, rank, init, method))
        self.dense_qkv = all(type(getattr(self, n)) is nn.Linear for n in ("q", "k", "v"))

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        n, t, d = x.shape                                  # (N, T, D)
        heads = lambda y: y.view(n, t, self.n_head, d // self.n_head).transpose(1, 2)
        if self.dense_qkv:  # one (N·T, D) x (D, 3D) product instead of three: faster on CPU
            w = torch.cat([self.q.weight, self.k.weight, self.v.weight])      # (3D, D)
            q, k, v = (heads(y) for y in F.linear(x, w).split(d, dim=-1))   # (N, H, T, D/H)
        else:
            q, k, v = heads(self.q(x)), heads(self.k(x)), heads(self.v(x))
        if self.fused_attention:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:  # the same softmax(QKᵀ/√d + causal mask)·V in plain ops, which vmap batches
            att = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])       # (N, H, T, T)
            mask = torch.ones(t, t, dtype=torch.bool, device=x.device).triu(1)
            y = att.masked_fill(mask, float("-inf")).softmax(-1) @ v     # (N, H, T, D/H)
        return self.o(y.transpose(1, 2).reshape(n, t, d))  # (N, T, D)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.ln_1(x))
        return x + self.proj(F.gelu(self.fc(self.ln_2(x))))


class CharTransformer(nn.Module):
    """nanoGPT's GPT (no dropout, no biases) with projections dense or B·A (module doc)."""

    def __init__(self, shape: LMShape = LMShape(), factorize: str = "none", rank=None,
                 init: str = "lora", method: str = "lora"):
        super().__init__()
        from ..methods import METHODS, check_init_for
        self.shape, self.factorize = shape, check_factorize(factorize)
        if factorize != "none":
            rank = check_rank(rank) if METHODS[method].factorized else None
            init = check_init_for(method, init)
        self.rank, self.init = (rank, init) if factorize != "none" else (None, None)
        self.wte = nn.Embedding(shape.vocab_size, shape.d_model)
        self.wpe = nn.Embedding(shape.block_size, shape.d_model)
        nn.init.normal_(self.wte.weight, 0.0, STD)
        nn.init.normal_(self.wpe.weight, 0.0, STD)
        self.blocks = nn.ModuleList(Block(shape, factorize, rank, init, method)
                                    for _ in range(shape.n_layer))
        self.ln_f = nn.LayerNorm(shape.d_model, bias=False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """Logits (N, T, vocab) of the next character after each position of ``idx`` (N, T)."""
        t = idx.shape[-1]
        if t > self.shape.block_size:
            raise ValueError(f"sequence of {t} characters is longer than the context "
                             f"block_size={self.shape.block_size}")
        x = self.wte(idx) + self.wpe.weight[:t]            # (N, T, D)
        for block in self.blocks:
            x = block(x)
        return F.linear(self.ln_f(x), self.wte.weight)     # head tied to the embedding

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, n: int, temperature: float = 1.0,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """``idx`` (1, T) extended by ``n`` characters sampled at ``temperature``."""
        for _ in range(n):
            logits = self(idx[:, -self.shape.block_size:])[:, -1] / temperature
            nxt = torch.multinomial(F.softmax(logits, dim=-1), 1, generator=generator)
            idx = torch.cat([idx, nxt], dim=1)
        return idx


def check_lm_rank(rank: int, d_model: int, name: str = "rank") -> None:
    """Every factorized projection of the transformer has min(d_in, d_out) = d_model (Q, K, V,
    O: d × d; the MLP's d → 4d and 4d → d): a larger rank restricts none of them."""
    if rank > d_model:
        raise ValueError(f"{name}: rank {rank} exceeds d_model {d_model}, the smallest side of "
                         "every factorized projection: B·A would restrict none; choose a rank "
                         f"<= {d_model}")


def lm_parameters(shape: LMShape, factorize: str = "none", rank=None) -> dict[str, int]:
    """Parameter counts: ``total``, ``matrices`` (the blocks' projections), and ``nanogpt``
    (total without the position embedding, what nanoGPT prints as "number of parameters")."""
    proj = 0
    for name, (d_in, d_out) in shape.projections().items():
        proj += (d_in + d_out) * rank if name in FACTORIZE[check_factorize(factorize)] \
            else d_in * d_out
    proj *= shape.n_layer
    norms = (2 * shape.n_layer + 1) * shape.d_model
    wte, wpe = shape.vocab_size * shape.d_model, shape.block_size * shape.d_model
    total = proj + norms + wte + wpe
    return {"total": total, "matrices": proj, "nanogpt": total - wpe}


def lm_training_flops(shape: LMShape, factorize: str = "none", rank=None,
                      macs=None) -> int:
    """Training FLOPs per token, 6·(matmul parameters) + attention, as in Kaplan et al.
    (2020, Table 1) and nanoGPT's ``estimate_mfu`` (6N + 12·L·T·D with the mean context T/2
    under the causal mask counted as T, as there). ``macs(d_in, d_out)``: a method's
    multiply-adds per token of one factorized projection in a training step
    (:meth:`~lowrank_helpers.methods.Method.training_macs`; default 3 × its parameters)."""
    if macs is None:
        matrices = lm_parameters(shape, factorize, rank)["matrices"]
        train = 6 * matrices
    else:
        names = FACTORIZE[check_factorize(factorize)]
        train = 2 * shape.n_layer * sum(macs(d_in, d_out) if name in names else
                                        3 * d_in * d_out
                                        for name, (d_in, d_out) in shape.projections().items())
    head = shape.vocab_size * shape.d_model                       # the tied head
    return train + 6 * head + 12 * shape.n_layer * shape.block_size * shape.d_model


@torch.no_grad()
def spectra(model: CharTransformer, init: CharTransformer | None = None,
            init_decay: float = 1.0) -> dict[str, list[float]]:
    """Singular values of every block projection's weight (dense W, or the product B·A),
    largest first: how much of its rank a trained matrix uses. With ``init`` (the same run's
    model before training, :meth:`LMRun.build`), those of the learned part W − γ·W₀ instead,
    γ = ``init_decay`` (:meth:`Protocol.init_decay`): decoupled weight decay shrinks the
    init by exactly γ, so what is left is the sum of the (decayed) updates training made,
    without the random init's energy, which is spread over every direction."""
    def weight(layer):
        return layer.dense_weight() if isinstance(layer, LowRankLinear) else layer.weight
    out = {}
    for i, block in enumerate(model.blocks):
        for name in block.shape_names:
            w = weight(getattr(block, name)).detach().double()
            if init is not None:
                w = w - init_decay * weight(getattr(init.blocks[i], name)).detach().double()
            out[f"{i}.{name}"] = [round(float(s), 6) for s in torch.linalg.svdvals(w)]
    return out
