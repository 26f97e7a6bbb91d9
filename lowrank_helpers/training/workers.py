"""Stacks of models trained side by side in worker processes, one CPU thread each."""
from __future__ import annotations

from typing import Callable

import torch
from tqdm.auto import tqdm

from ..tasks.images_data import Data
from .planning import stack_cost

_WORKER: dict = {}


def _worker_init(name: str | None, arrays: tuple | None, threads: int) -> None:
    torch.set_num_threads(threads)
    if arrays is not None:  # spawned: the data come pickled; forked: inherited as they are
        _WORKER["data"] = Data(name, *(torch.from_numpy(a) for a in arrays))


def _worker_train(train: Callable, runs: list, kwargs: dict) -> list:
    return train(runs, _WORKER["data"], **kwargs)


def train_in_workers(runs, stacks, data: Data, workers: int, done, progress: bool,
                     train: Callable, **kwargs) -> None:
    """Train each stack with ``train(runs, data, **kwargs)`` (a module-level function, so
    that it pickles) in one of ``workers`` processes (one thread each), largest first; call
    ``done(members, results)`` as each ends. Forked where the platform forks (Linux: the data
    are shared, the start is instant), else spawned (the data are sent to each worker)."""
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
        initargs = (data.name, tuple(getattr(data, s).numpy() for s in Data.SPLITS), 1)
    bar = tqdm(total=len(runs), desc=f"models ({workers} workers)", unit="model",
               disable=not progress, leave=False)
    context = multiprocessing.get_context("fork" if fork else "spawn")
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_worker_init,
                             initargs=initargs) as pool:
        futures = {pool.submit(_worker_train, train, [runs[i] for i in members], kwargs): members
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
