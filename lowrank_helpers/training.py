"""Training: one plain loop over in-memory tensors, and the runs of a study with resume."""
from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .config import RunConfig, TrainConfig
from .data import Data
from .models import MLP

DEVICES = ("auto", "cpu", "cuda", "cuda:<index>", "mps")


def resolve_device(name: str = "auto", check_only: bool = False) -> torch.device | None:
    """"auto": CUDA if available, else MPS, else CPU. Also "cpu", "cuda", "cuda:N", "mps"."""
    base = name.split(":", 1)[0] if isinstance(name, str) else None
    index_ok = name.count(":") == 0 or (base == "cuda" and name.split(":", 1)[1].isdigit())
    if base not in ("auto", "cpu", "cuda", "mps") or not index_ok:
        raise ValueError(f"unknown device {name!r}; valid devices: {', '.join(DEVICES)}")
    if check_only:
        return None
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        return torch.device("mps" if mps is not None and mps.is_available() else "cpu")
    if base == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} was asked for but CUDA is not available here; "
                           "use device='auto' or 'cpu'")
    if base == "mps" and not torch.backends.mps.is_available():
        raise RuntimeError("device 'mps' was asked for but MPS is not available here; "
                           "use device='auto' or 'cpu'")
    return torch.device(name)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return device.type


def make_optimizer(params, config: TrainConfig, capturable: bool = False) -> torch.optim.Optimizer:
    """The run's optimizer; ``capturable``: AdamW keeps its step count on the device, as CUDA
    graph capture requires (SGD needs nothing)."""
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum,
                               weight_decay=config.weight_decay)
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay,
                             capturable=capturable)


@torch.no_grad()
def evaluate(model: nn.Module, X: torch.Tensor, y: torch.Tensor,
             chunk: int = 4096) -> tuple[float, float]:
    """(accuracy in [0, 1], mean cross-entropy per sample) of ``model`` on (X, y)."""
    was_training = model.training
    model.eval()
    correct = torch.zeros((), device=X.device)
    loss = torch.zeros((), device=X.device)
    for i in range(0, len(X), chunk):
        logits = model(X[i:i + chunk])                     # (chunk, classes)
        loss += F.cross_entropy(logits, y[i:i + chunk], reduction="sum")
        correct += (logits.argmax(1) == y[i:i + chunk]).sum()
    model.train(was_training)
    return correct.item() / len(X), loss.item() / len(X)


@dataclass
class TrainResult:
    history: list[dict] = field(default_factory=list)  # one dict per epoch
    init_test_accuracy: float = float("nan")
    init_test_loss: float = float("nan")
    diverged_epoch: int | None = None                  # first epoch with a NaN/inf loss
    wall_time: float = 0.0
    device: str = "cpu"
    peak_memory: dict = field(default_factory=dict)    # see peak_memory()
    stack_size: int = 1                                # models trained in lockstep with it
    engine: str = "plain"                              # "plain" loop or "stacked" engine
    step_mode: str = "eager"                           # "eager", or "cuda graph" (+ streams)


def epoch_batches(X: torch.Tensor, y: torch.Tensor, batch_size: int, shuffle: bool,
                  generator: torch.Generator):
    """One epoch's batches (x, y): the data in order, or in a permutation drawn from
    ``generator`` (on the CPU, so that every device sees the same order). The plain loop and
    the stacked engine both draw their batches here, so that they see the same ones."""
    if shuffle:
        perm = torch.randperm(len(X), generator=generator).to(X.device)
        X, y = X[perm], y[perm]
    for i in range(0, len(X), batch_size):
        yield X[i:i + batch_size], y[i:i + batch_size]


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: torch.device) -> dict:
    """Peak memory while training: on CUDA the allocator's peak for this device; elsewhere the
    process's peak resident set size (data, Python and all models in the process included)."""
    if device.type == "cuda":
        return {"bytes": torch.cuda.max_memory_allocated(device),
                "kind": "torch.cuda.max_memory_allocated"}
    try:
        import resource
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
        return {"bytes": rss if sys.platform == "darwin" else rss * 1024,
                "kind": "process peak RSS (CPU)"}
    except ImportError:  # Windows
        return {}


def train(model: nn.Module, data: Data, config: TrainConfig | None = None, *, seed: int = 0,
          device="auto", progress: bool = True, desc: str | None = None) -> TrainResult:
    """Train ``model`` on ``data`` with minibatch gradient descent; evaluate after every epoch.

    Defaults are the original study's protocol (see :class:`TrainConfig`). ``seed`` drives the
    shuffling order when ``config.shuffle``; the model's init is the caller's (see
    :func:`build_model`). A NaN or inf loss ends the run, marked diverged at that epoch.
    """
    config = config or TrainConfig()
    dev = resolve_device(device) if isinstance(device, str) else torch.device(device)
    model.to(dev)
    if data.device != dev:
        data = data.to(dev)
    X, y = data.X_train, data.y_train
    n = len(X)
    opt = make_optimizer(model.parameters(), config)
    shuffle_gen = torch.Generator().manual_seed(seed)
    result = TrainResult(device=device_name(dev))
    reset_peak_memory(dev)
    result.init_test_accuracy, result.init_test_loss = evaluate(model, data.X_test, data.y_test)
    start = time.perf_counter()
    model.train()
    bar = tqdm(range(1, config.epochs + 1), desc=desc, disable=not progress, unit="epoch",
               leave=False)
    for epoch in bar:
        t0 = time.perf_counter()
        loss_sum = torch.zeros((), device=dev)  # summed on device: no host sync per step
        for xb, yb in epoch_batches(X, y, config.batch_size, config.shuffle, shuffle_gen):
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += loss.detach()
        train_loss = loss_sum.item() / math.ceil(n / config.batch_size)
        test_acc, test_loss = evaluate(model, data.X_test, data.y_test)
        result.history.append({"epoch": epoch, "test_accuracy": test_acc, "test_loss": test_loss,
                               "train_loss": train_loss, "seconds": time.perf_counter() - t0})
        bar.set_postfix(test_acc=f"{test_acc:.2%}", loss=f"{train_loss:.3f}")
        if not (math.isfinite(train_loss) and math.isfinite(test_loss)):
            result.diverged_epoch = epoch
            break
    bar.close()
    result.wall_time = time.perf_counter() - start
    result.peak_memory = peak_memory(dev)
    return result


def build_model(run: RunConfig) -> MLP:
    """The run's model, initialised from ``run.seed`` without touching the global RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(run.seed)
        return MLP(run.method, run.rank, run.init, run.widths)
