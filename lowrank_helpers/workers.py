"""Stacks of models trained side by side in worker processes, one CPU thread each."""
from __future__ import annotations

import torch
from tqdm.auto import tqdm

from .config import RunConfig
from .data import Data
from .engine import stack_rank
from .models import training_flops_per_sample
from .training import TrainResult


def stack_cost(runs: list[RunConfig]) -> float:
    """A rough relative cost of training ``runs`` as one stack on a CPU core (to start the
    largest first and to split stacks evenly), in matrix FLOPs per training sample: the padded
    products, plus per model the passes over its activations (bias, ReLU, their gradients, the
    products that read them), plus the stack's per-step overhead. The last two are calibrated
    by timing stacks of the reference sweep on one core of a 2-core x86 CPU: about 400 and 800
    FLOP-equivalents per activation, respectively."""
    rank = max(stack_rank(r.rank) or 0 for r in runs) or None
    flops = training_flops_per_sample(runs[0].method, rank, runs[0].widths)
    activations = sum(runs[0].widths[1:])
    return (len(runs) * (flops + 400 * activations) + 800 * activations) * runs[0].epochs


_WORKER: dict = {}


def _worker_init(name: str | None, arrays: tuple | None, threads: int) -> None:
    torch.set_num_threads(threads)
    if arrays is not None:  # spawned: the data come pickled; forked: inherited as they are
        _WORKER["data"] = Data(name, *(torch.from_numpy(a) for a in arrays))


def _worker_train(runs: list[RunConfig]) -> list[TrainResult]:
    from .engine import train_many
    return train_many(runs, _WORKER["data"], device="cpu", progress=False, lockstep=False)


def train_in_workers(runs, stacks, data, workers, done, progress) -> None:
    """Train each stack in one of ``workers`` processes (one thread each), largest first.
    Forked where the platform forks (Linux: the data are shared, the start is instant), else
    spawned (the data are sent to each worker)."""
    import multiprocessing
    import sys
    from concurrent.futures import ProcessPoolExecutor, as_completed
    stacks = sorted(stacks, key=lambda m: -stack_cost([runs[i] for i in m]))
    workers = min(workers, len(stacks))
    data = data.to("cpu")
    fork = sys.platform.startswith("linux")
    if fork:
        _WORKER["data"], initargs = data, (None, None, 1)
    else:
        initargs = (data.name, tuple(t.numpy() for t in (data.X_train, data.y_train,
                                                         data.X_test, data.y_test)), 1)
    bar = tqdm(total=len(runs), desc=f"models ({workers} workers)", unit="model",
               disable=not progress, leave=False)
    context = multiprocessing.get_context("fork" if fork else "spawn")
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_worker_init,
                             initargs=initargs) as pool:
        futures = {pool.submit(_worker_train, [runs[i] for i in members]): members
                   for members in stacks}
        try:
            for future in as_completed(futures):
                members = futures[future]
                done(members, future.result())
                bar.update(len(members))
        except BaseException:  # Ctrl-C or a failed stack: what finished is already saved
            for f in futures:
                f.cancel()
            raise
    bar.close()
