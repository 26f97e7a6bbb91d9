"""Fashion-MNIST and MNIST as in-memory tensors, so that a batch is a slice.

Looks for the data before downloading it: first under ``root`` (torchvision's layout,
``<root>/FashionMNIST/raw/``, extracted or ``.gz``), then in a system copy (Debian's package
``dataset-fashion-mnist`` puts the four ``.gz`` files in ``/usr/share/datasets/fashion-mnist``),
then torchvision's download.
"""
from __future__ import annotations

import gzip
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

#: name -> (torchvision class name, system directories that may hold the IDX files)
DATASETS = {
    "fashion_mnist": ("FashionMNIST", ("/usr/share/datasets/fashion-mnist",)),
    "mnist": ("MNIST", ("/usr/share/datasets/mnist",)),
}
RAW_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
NUM_CLASSES = 10


class DataNotFoundError(FileNotFoundError):
    """The data set is neither on disk nor downloadable."""


def default_root() -> Path:
    """``$LOWRANK_DATA`` if set, else ``~/.cache/lowrank_helpers/data``."""
    env = os.environ.get("LOWRANK_DATA")
    return Path(env) if env else Path.home() / ".cache" / "lowrank_helpers" / "data"


def check_dataset(name: str) -> str:
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; valid data sets: {', '.join(DATASETS)}")
    return name


@dataclass
class Data:
    """One data set's splits as tensors: images flattened to (N, 784) float32 in [0, 1]."""
    name: str
    X_train: torch.Tensor  # (N_train, 784) float32
    y_train: torch.Tensor  # (N_train,) int64
    X_test: torch.Tensor   # (N_test, 784) float32
    y_test: torch.Tensor   # (N_test,) int64

    @property
    def device(self) -> torch.device:
        return self.X_train.device

    def to(self, device) -> "Data":
        return Data(self.name, *(t.to(device) for t in
                                 (self.X_train, self.y_train, self.X_test, self.y_test)))

    def __repr__(self) -> str:
        return (f"Data({self.name!r}, train={len(self.y_train)}, test={len(self.y_test)}, "
                f"device={self.device})")


def _copy_raw(src_dir: Path, raw: Path) -> None:
    """Copy the IDX files that ``raw`` lacks from ``src_dir`` (extracted or .gz), extracting."""
    for fname in RAW_FILES:
        dest = raw / fname
        if dest.exists():
            continue
        for src, opener in ((src_dir / fname, open), (src_dir / (fname + ".gz"), gzip.open)):
            if src.is_file():
                raw.mkdir(parents=True, exist_ok=True)
                tmp = dest.with_suffix(".part")
                with opener(src, "rb") as fin, open(tmp, "wb") as fout:
                    shutil.copyfileobj(fin, fout)
                tmp.replace(dest)
                break


def _missing(raw: Path) -> list[str]:
    return [f for f in RAW_FILES if not (raw / f).is_file()]


def _ensure_raw(name: str, root: Path, download: bool) -> None:
    cls_name, system_dirs = DATASETS[name]
    raw = root / cls_name / "raw"
    try:
        _copy_raw(raw, raw)  # .gz files already under root
        for sysdir in system_dirs:
            if _missing(raw) and Path(sysdir).is_dir():
                _copy_raw(Path(sysdir), raw)
    except OSError as exc:
        raise DataNotFoundError(f"could not write the {name} files into {raw}: {exc}. Pass a "
                                "writable root (or set LOWRANK_DATA).") from exc
    if not _missing(raw):
        return
    reason = "download=False"
    if download:
        import torchvision.datasets as tvd
        try:
            for train in (True, False):
                getattr(tvd, cls_name)(str(root), train=train, download=True)
            return
        except Exception as exc:  # no network, mirror down, ...: explained below
            reason = f"download failed: {type(exc).__name__}: {exc}"
    hint = ("`apt-get install dataset-fashion-mnist` (Debian/Ubuntu) puts them in "
            "/usr/share/datasets/fashion-mnist, where they are found"
            if name == "fashion_mnist" else "")
    raise DataNotFoundError(
        f"{name} not found under root {root} (looked for {raw}/<file> or <file>.gz"
        f"{', and in ' + ', '.join(system_dirs) if system_dirs else ''}) and {reason}. "
        f"Missing: {', '.join(_missing(raw))}. Ways to get it: run once with network access "
        f"(torchvision downloads it); or copy the four IDX files into {raw}"
        f"{'; or ' + hint if hint else ''}.")


def load_data(name: str = "fashion_mnist", root=None, device="cpu", train_subset: int | None = None,
              test_subset: int | None = None, download: bool = True) -> Data:
    """Load a data set's train and test splits into tensors on ``device``.

    Pixels become float32 in [0, 1] exactly as ``transforms.ToTensor`` makes them (uint8 / 255).
    ``train_subset``/``test_subset`` keep the first n samples (for smoke runs).
    """
    check_dataset(name)
    for label, n in (("train_subset", train_subset), ("test_subset", test_subset)):
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
            raise ValueError(f"{label} must be a positive integer or None, got {n!r}")
    root = Path(root) if root is not None else default_root()
    _ensure_raw(name, root, download)
    import torchvision.datasets as tvd
    cls = getattr(tvd, DATASETS[name][0])
    splits = []
    for train, n in ((True, train_subset), (False, test_subset)):
        ds = cls(str(root), train=train, download=False)
        images, labels = ds.data[:n], ds.targets[:n]
        X = images.reshape(len(images), -1).to(torch.float32).div_(255)  # ToTensor's scaling
        splits += [X.to(device), labels.to(torch.int64).to(device)]
    return Data(name, *splits)
