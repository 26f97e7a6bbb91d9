"""Devices: which one to train on, its name in records, and peak memory while training."""
from __future__ import annotations

import sys

import torch

DEVICES = ("auto", "cpu", "cuda", "cuda:<index>", "mps")


def check_device(name: str) -> str:
    """``name`` if it is a device name this package accepts (no device is touched)."""
    base = name.split(":", 1)[0] if isinstance(name, str) else None
    index_ok = base is not None and (name.count(":") == 0 or (
        base == "cuda" and name.split(":", 1)[1].isdigit()))
    if base not in ("auto", "cpu", "cuda", "mps") or not index_ok:
        raise ValueError(f"unknown device {name!r}; valid devices: {', '.join(DEVICES)}")
    return name


def resolve_device(name: str = "auto") -> torch.device:
    """"auto": CUDA if available, else MPS, else CPU. Also "cpu", "cuda", "cuda:N", "mps"."""
    check_device(name)
    base = name.split(":", 1)[0]
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


def as_device(device) -> torch.device:
    """A torch.device from a name (resolved) or a device."""
    return resolve_device(device) if isinstance(device, str) else torch.device(device)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return device.type


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


class TensorMemory:
    """Live tensor memory, measured on any device, the CPU included (where
    :func:`peak_memory` can only give the process's resident set): inside ``with
    TensorMemory(*tensors) as m:`` every storage an operation returns is counted until it is
    freed; ``m.peak`` is the most bytes alive at once between operations (the ``tensors``
    given, e.g. a model's parameters, and those passed to :meth:`track` count from then on;
    storages shared by views count once). It sees the tensors that go through PyTorch's
    dispatcher (a ``TorchDispatchMode``, which autograd's backward pass honours too):
    activations, gradients, optimizer state and the temporaries between operations, not
    the workspace a single kernel allocates and frees inside itself (a LAPACK SVD's, say).
    Each operation checks every live storage, so keep the window short (a few training
    steps)."""

    def __init__(self, *tensors):
        self._refs: dict[int, tuple] = {}
        self.peak = 0
        self.track(*tensors)

    def track(self, *tensors) -> None:
        """Count ``tensors`` (made outside the dispatcher, e.g. a batch) from now on."""
        for t in tensors:
            self._add(t)
        self.peak = max(self.peak, self.current)

    def _add(self, t) -> None:
        from torch.multiprocessing.reductions import StorageWeakRef
        if not isinstance(t, torch.Tensor) or t.is_meta:
            return
        storage = t.untyped_storage()
        key = storage._cdata
        known = self._refs.get(key)
        if known is None or known[0].expired():      # new, or an address freed and reused
            self._refs[key] = (StorageWeakRef(storage), storage.nbytes())

    @property
    def current(self) -> int:
        """Bytes of the storages alive now."""
        for key in [k for k, (ref, _) in self._refs.items() if ref.expired()]:
            del self._refs[key]
        return sum(n for _, n in self._refs.values())

    def __enter__(self):
        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils._pytree import tree_flatten
        outer = self

        class _Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                for t in tree_flatten(out)[0]:
                    outer._add(t)
                outer.peak = max(outer.peak, outer.current)
                return out
        self._mode = _Mode()
        self._mode.__enter__()
        return self

    def __exit__(self, *exc):
        self._mode.__exit__(*exc)
        return False
