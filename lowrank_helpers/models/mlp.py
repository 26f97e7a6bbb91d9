"""The MLP of the study (784 → 512 → 512 → 10, ReLU) with dense or factorized layers, and what
a model costs: parameters and matrix-product FLOPs, from the formulas."""
from __future__ import annotations

from typing import Sequence

from torch import nn

from .layers import LowRankLinear, check_rank
from ..methods import METHODS, LayerSpec, check_init_for, check_method

#: The PyTorch quickstart's MLP: 784 inputs, two hidden layers of 512, 10 classes.
DEFAULT_WIDTHS = (784, 512, 512, 10)
#: The ranks of the study (the original's 4…128, and 1 and 2).
RANKS = (1, 2, 4, 8, 16, 32, 64, 128)


def layer_specs(widths: Sequence[int]) -> list[LayerSpec]:
    """The MLP's linear layers as a method sees them: ``fc1`` … ``fcN`` (the last is the
    output layer), each with a bias and PyTorch's default init as a dense layer."""
    last = len(widths) - 2
    return [LayerSpec(f"fc{i + 1}", d_in, d_out, bias=True, output=i == last)
            for i, (d_in, d_out) in enumerate(zip(widths[:-1], widths[1:]))]


class MLP(nn.Module):
    """Flatten, then ``len(widths) - 1`` linear layers with ReLU between them, each built by
    the method (:mod:`lowrank_helpers.methods`): ``"full"`` uses ``nn.Linear``; ``"lora"`` and
    ``"ae"`` use :class:`LowRankLinear` of the given rank in every layer (the output layer
    included, as in the original study)."""

    def __init__(self, method: str = "full", rank: int | None = None, init: str | None = None,
                 widths: Sequence[int] = DEFAULT_WIDTHS) -> None:
        super().__init__()
        m = check_method(method)
        self.method = method
        self.init = check_init_for(method, init)
        widths = tuple(widths)
        if len(widths) < 2 or any(isinstance(w, bool) or not isinstance(w, int) or w < 1
                                  for w in widths):
            raise ValueError(f"widths must be at least two positive integers, got {widths!r}")
        if not m.takes_rank and rank is not None:
            factorized = [n for n, x in METHODS.items() if x.takes_rank]
            raise ValueError(f"method {method!r} takes no rank (got rank={rank!r}); methods "
                             f"with a rank: {', '.join(factorized)}")
        self.rank = check_rank(rank) if m.takes_rank else None
        self.widths = widths
        layers: list[nn.Module] = [nn.Flatten()]
        for spec in layer_specs(widths):
            if spec.name != "fc1":
                layers.append(nn.ReLU())
            layers.append(m.layer(spec, self.rank if m.factorized else None, self.init))
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)  # (N, ...) -> (N, widths[-1]) logits

    def linear_layers(self) -> list[nn.Module]:
        return [m for m in self.net if isinstance(m, (nn.Linear, LowRankLinear))]

    def rescale_factors(self, c: float) -> None:
        """A → c·A and B → B/c in every factorized layer (:mod:`~lowrank_helpers.methods.rescale`)."""
        from ..methods.rescale import rescale_factors
        rescale_factors(self, c)


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


def _factorized(method: str, rank) -> int | None:
    """The rank of a factorized method's layers (checked), None for a dense one."""
    return check_rank(rank) if check_method(method).factorized else None


def layer_ranks(method: str, rank, widths: Sequence[int]) -> list[int | None]:
    """Each linear layer's rank: None for a dense layer (all of a dense method's, and the
    output layer of a method with ``dense_output``)."""
    r = _factorized(method, rank)
    ranks = [r] * (len(widths) - 1)
    if check_method(method).dense_output:
        ranks[-1] = None
    return ranks


def count_parameters(method: str, rank: int | None = None,
                     widths: Sequence[int] = DEFAULT_WIDTHS) -> dict[str, int]:
    """:func:`parameter_counts` from the formula, without building the model.

    Dense layer: d_in·d_out + d_out. Factorized: r·(d_in + d_out) + d_out.
    """
    counts = {}
    for i, (d_in, d_out, r) in enumerate(zip(widths[:-1], widths[1:],
                                             layer_ranks(method, rank, widths))):
        weights = d_in * d_out if r is None else r * (d_in + d_out)
        counts[_layer_key(i, d_in, d_out)] = weights + d_out
    counts["total"] = sum(counts.values())
    return counts


def narrow_widths(target: int, widths: Sequence[int] = DEFAULT_WIDTHS) -> tuple[int, ...]:
    """``widths`` with every hidden layer narrowed to the one width whose dense MLP's
    parameter count (:func:`count_parameters`) is closest to ``target``: the narrower dense
    model of equal parameters."""
    def shape(h):
        return (widths[0], *[h] * (len(widths) - 2), widths[-1])
    h = min(range(1, max(widths[1:-1]) + 1),
            key=lambda h: abs(count_parameters("full", None, shape(h))["total"] - target))
    return shape(h)


def parameter_table(ranks: Sequence[int] = RANKS, widths=DEFAULT_WIDTHS,
                    task: str = "fashion_mnist"):
    """Parameters per layer and in total for the full-rank model and each rank (pandas): the
    MLP's per layer (``widths``), another task's (``widths``: its shape) in total only."""
    import pandas as pd
    from ..tasks import TASKS
    if not hasattr(TASKS[task], "widths_with"):
        from ..core.protocol import RunConfig

        def total(method, rank=None):
            run = RunConfig(task, method, rank, shape=widths)
            return run.task_spec.parameters(run)["total"]
        full = total("full")
        shape = RunConfig(task, "full", shape=widths).shape
        d_max = min(TASKS[task].max_rank(shape) or max(ranks), max(ranks))
        rows = [{"model": "full-rank", "total": full}]
        rows += [{"model": f"rank {r}", "total": total("lora", r)} for r in ranks if r <= d_max]
        table = pd.DataFrame(rows).set_index("model")
        table["% of full"] = (100 * table["total"] / full).round(2)
        return table
    full = count_parameters("full", widths=widths)
    rows = [{"model": "full-rank", **full}]
    rows += [{"model": f"rank {r}", **count_parameters("lora", r, widths)} for r in ranks]
    table = pd.DataFrame(rows).set_index("model")
    table["% of full"] = (100 * table["total"] / full["total"]).round(2)
    return table


def _products(method: str, rank: int | None, widths: Sequence[int]) -> list[int]:
    """Multiply-adds per sample of each matrix product of the model, in forward order."""
    products = []
    for d_in, d_out, r in zip(widths[:-1], widths[1:], layer_ranks(method, rank, widths)):
        products += [d_in * d_out] if r is None else [d_in * r, r * d_out]
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
