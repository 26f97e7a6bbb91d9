"""Which runs train together: lockstep groups, stacks within them, and their shares of CPU
workers.

Runs of a group see the same batches and share one optimizer step; within a group, a stack
holds models of one family (dense, or factorized padded to one rank).
"""
from __future__ import annotations

from ..methods import METHODS
from ..models.mlp import layer_ranks, training_flops_per_sample
from ..core.protocol import RunConfig

#: Factorized models up to this rank share one stack: they are bound by per-step overhead and by
#: the passes over their 512-wide activations more than by the padded arithmetic, so padding
#: costs little. Above it, ranks share a stack up to the next power of 2. A stack pads its
#: models to the largest rank among them.
SMALL_RANK = 16


def stack_rank(rank: int | None, small_rank: int = SMALL_RANK) -> int | None:
    """The stack bucket of a rank: the largest rank it may be padded to (None: dense)."""
    if rank is None:
        return None
    return small_rank if rank <= small_rank else 1 << (rank - 1).bit_length()


def group_key(run: RunConfig) -> tuple:
    """Runs with equal keys can train in lockstep: same task, data and protocol (so the same
    batches and optimizer settings). With shuffling the batch order depends on the seed, so
    then the seed is part of the key."""
    return (run.task, run.protocol, run.seed if run.shuffle else None)


def stackable(run: RunConfig) -> bool:
    """The hand-written MLP engine trains it: an image task's run of a method whose layers,
    model and step are the plain ones (a registered :class:`~lowrank_helpers.methods.Method`,
    not a subclass that changes any of them). Other stackable runs train through the generic
    stacked path (:func:`~lowrank_helpers.training.stacking.train_stacked`)."""
    from ..methods import Method
    from ..tasks import ImageClassification
    m = METHODS[run.method]
    return isinstance(run.task_spec, ImageClassification) and type(m) is Method and m.stackable


def plan_stacks(runs: list[RunConfig], small_rank: int = SMALL_RANK) -> list[list[list[int]]]:
    """Indices of ``runs`` grouped for lockstep training: a list of groups (same batches, one
    optimizer), each a list of stacks (same family, widths and padded rank)."""
    groups: dict[tuple, dict[tuple, list[int]]] = {}
    for i, run in enumerate(runs):
        dense = tuple(r is None for r in layer_ranks(run.method, run.rank, run.widths))
        family = (dense, run.widths, stack_rank(run.rank, small_rank))
        groups.setdefault(group_key(run), {}).setdefault(family, []).append(i)
    return [list(stacks.values()) for stacks in groups.values()]


def stack_cost(runs: list[RunConfig]) -> float:
    """A rough relative cost of training ``runs`` as one stack on a CPU core (to start the
    largest first and to split stacks evenly), in matrix FLOPs per training sample: the padded
    products, plus per model the passes over its activations (bias, ReLU, their gradients, the
    products that read them), plus the stack's per-step overhead. The last two are calibrated
    by timing stacks of the reference sweep on one core of a 2-core x86 CPU: about 400 and 800
    FLOP-equivalents per activation, respectively."""
    rank = max(r.rank or 0 for r in runs) or None  # the stack pads to its largest rank
    flops = training_flops_per_sample(runs[0].method, rank, runs[0].widths)
    activations = sum(runs[0].widths[1:])
    return (len(runs) * (flops + 400 * activations) + 800 * activations) * runs[0].epochs


def worker_stacks(runs: list[RunConfig], workers: int) -> list[list[int]]:
    """The stacks shared out to ``workers`` CPU processes: those of :func:`plan_stacks`, the
    costliest halved while it would keep one worker busy longer than an even share of the whole
    (or there are fewer stacks than workers)."""
    stacks = [members for group in plan_stacks(runs) for members in group]
    cost = lambda members: stack_cost([runs[i] for i in members])  # noqa: E731
    while True:
        big = max(stacks, key=cost)
        share = sum(map(cost, stacks)) / workers  # each split adds a stack's overhead
        if len(big) < 2 or (cost(big) <= share and len(stacks) >= workers):
            return stacks
        stacks.remove(big)
        stacks += [big[:len(big) // 2], big[len(big) // 2:]]
