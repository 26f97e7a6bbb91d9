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
