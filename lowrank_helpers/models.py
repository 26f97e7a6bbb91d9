"""The MLP of the study (784 → 512 → 512 → 10, ReLU) with dense or factorized layers."""
from __future__ import annotations

from typing import Sequence

from torch import nn

from .layers import LowRankLinear, check_init, check_rank

#: Methods compared in the study: dense layers, factorized layers with a chosen (by default the
#: original's rank-dependent) init, and factorized layers with PyTorch's default init.
METHODS = ("full", "lora", "ae")
METHOD_LABELS = {"full": "full-rank", "lora": "LoRA layers", "ae": "autoencoder layers"}
DEFAULT_WIDTHS = (784, 512, 512, 10)


def check_method(method: str) -> str:
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; valid methods: {', '.join(METHODS)}")
    return method


def method_init(method: str, init: str | None = None) -> str:
    """The init a method uses: "full" and "ae" use PyTorch's default; "lora" uses ``init``."""
    check_method(method)
    if method == "lora":
        return check_init(init or "lora")
    return "default"


class MLP(nn.Module):
    """Flatten, then ``len(widths) - 1`` linear layers with ReLU between them.

    ``method="full"`` uses ``nn.Linear``; ``"lora"`` and ``"ae"`` use :class:`LowRankLinear` of
    the given rank in every layer (the output layer included, as in the original study).
    """

    def __init__(self, method: str = "full", rank: int | None = None, init: str | None = None,
                 widths: Sequence[int] = DEFAULT_WIDTHS) -> None:
        super().__init__()
        self.method = check_method(method)
        self.init = method_init(method, init)
        widths = tuple(widths)
        if len(widths) < 2 or any(isinstance(w, bool) or not isinstance(w, int) or w < 1
                                  for w in widths):
            raise ValueError(f"widths must be at least two positive integers, got {widths!r}")
        if method == "full":
            if rank is not None:
                raise ValueError("method 'full' takes no rank (got rank="
                                 f"{rank!r}); use 'lora' or 'ae' for factorized layers")
            self.rank = None
        else:
            self.rank = check_rank(rank)
        self.widths = widths
        layers: list[nn.Module] = [nn.Flatten()]
        for i, (d_in, d_out) in enumerate(zip(widths[:-1], widths[1:])):
            if i > 0:
                layers.append(nn.ReLU())
            if method == "full":
                layers.append(nn.Linear(d_in, d_out))
            else:
                layers.append(LowRankLinear(d_in, d_out, self.rank, init=self.init))
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)  # (N, ...) -> (N, widths[-1]) logits

    def linear_layers(self) -> list[nn.Module]:
        return [m for m in self.net if isinstance(m, (nn.Linear, LowRankLinear))]


def _layer_key(index: int, d_in: int, d_out: int) -> str:
    return f"fc{index + 1} {d_in}→{d_out}"


def parameter_counts(model: nn.Module) -> dict[str, int]:
    """Trainable parameters per linear layer ("fc1 784→512", …) and in total ("total")."""
    layers = [m for m in model.modules() if isinstance(m, (nn.Linear, LowRankLinear))]
    counts = {_layer_key(i, layer.in_features, layer.out_features):
              sum(p.numel() for p in layer.parameters() if p.requires_grad)
              for i, layer in enumerate(layers)}
    counts["total"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return counts


def count_parameters(method: str, rank: int | None = None,
                     widths: Sequence[int] = DEFAULT_WIDTHS) -> dict[str, int]:
    """:func:`parameter_counts` from the formula, without building the model.

    Dense layer: d_in·d_out + d_out. Factorized: r·(d_in + d_out) + d_out.
    """
    check_method(method)
    if method != "full":
        rank = check_rank(rank)
    counts = {}
    for i, (d_in, d_out) in enumerate(zip(widths[:-1], widths[1:])):
        weights = d_in * d_out if method == "full" else rank * (d_in + d_out)
        counts[_layer_key(i, d_in, d_out)] = weights + d_out
    counts["total"] = sum(counts.values())
    return counts


def parameter_table(ranks: Sequence[int] = (1, 2, 4, 8, 16, 32, 64, 128),
                    widths: Sequence[int] = DEFAULT_WIDTHS):
    """Parameters per layer and in total for the full-rank MLP and each rank (pandas)."""
    import pandas as pd
    full = count_parameters("full", widths=widths)
    rows = [{"model": "full-rank", **full}]
    rows += [{"model": f"rank {r}", **count_parameters("lora", r, widths)} for r in ranks]
    table = pd.DataFrame(rows).set_index("model")
    table["% of full"] = (100 * table["total"] / full["total"]).round(2)
    return table


def _products(method: str, rank: int | None, widths: Sequence[int]) -> list[int]:
    """Multiply-adds per sample of each matrix product of the model, in forward order."""
    check_method(method)
    products = []
    for d_in, d_out in zip(widths[:-1], widths[1:]):
        products += [d_in * d_out] if method == "full" else [d_in * check_rank(rank),
                                                             rank * d_out]
    return products


def forward_flops_per_sample(method: str, rank: int | None = None,
                             widths: Sequence[int] = DEFAULT_WIDTHS) -> int:
    """Matrix-product FLOPs of one forward pass (2 per multiply-add; biases and activations
    not counted)."""
    return 2 * sum(_products(method, rank, widths))


def training_flops_per_sample(method: str, rank: int | None = None,
                              widths: Sequence[int] = DEFAULT_WIDTHS) -> int:
    """Matrix-product FLOPs to train on one sample (forward and backward), from the formula.

    Each product with m multiply-adds costs 2m FLOPs forward, 2m for the weight gradient and 2m
    for the input gradient, except the network's first product, whose input (the image) needs
    no gradient. Biases, activations, the loss and the optimizer are not counted.
    """
    products = _products(method, rank, widths)
    return 6 * sum(products) - 2 * products[0]


def optimizer_state_bytes(optimizer: str, momentum: float, parameters: int,
                          bytes_per_value: int = 4) -> int:
    """Bytes of optimizer state per model: none for plain SGD, one buffer per parameter for SGD
    with momentum, two (first and second moments) for AdamW."""
    buffers = {"sgd": 1 if momentum else 0, "adamw": 2}[optimizer]
    return buffers * parameters * bytes_per_value
