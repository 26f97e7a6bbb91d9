"""Fashion-MNIST and MNIST as in-memory tensors, so that a batch is a slice.

Looks for the data before downloading it: first under ``root`` (torchvision's layout,
``<root>/FashionMNIST/raw/``, extracted or ``.gz``), then in a system copy (Debian's package
``dataset-fashion-mnist`` puts the four ``.gz`` files in ``/usr/share/datasets/fashion-mnist``),
then torchvision's download. Processes that prepare the same root at once (parallel jobs on a
fresh machine) take turns under a file lock and write through temporary files of their own.
"""
from __future__ import annotations

import contextlib
import gzip
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

#: name -> (torchvision class name, system directories that may hold the IDX files)
DATASETS = {
    "fashion_mnist": ("FashionMNIST", ("/usr/share/datasets/fashion-mnist",)),
    "mnist": ("MNIST", ("/usr/share/datasets/mnist",)),
}
RAW_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


class DataNotFoundError(FileNotFoundError):
    """The data set is neither on disk nor downloadable."""


class DataError(ValueError):
    """Data found but unusable (a wrong checksum, an empty or too small file): the message
    says which file and what to do."""


def default_root() -> Path:
    """``$LOWRANK_DATA`` if set, else ``~/.cache/lowrank_helpers/data``."""
    env = os.environ.get("LOWRANK_DATA")
    return Path(env) if env else Path.home() / ".cache" / "lowrank_helpers" / "data"


def check_dataset(name: str) -> str:
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; valid data sets: {', '.join(DATASETS)}")
    return name


def _empty() -> torch.Tensor:
    return torch.empty(0)


@dataclass
class Data:
    """One data set's splits as tensors: images flattened to (N, 784) float32 in [0, 1]. The
    validation split is empty unless ``val_size`` was asked for."""
    name: str
    X_train: torch.Tensor  # (N_train, 784) float32
    y_train: torch.Tensor  # (N_train,) int64
    X_test: torch.Tensor   # (N_test, 784) float32
    y_test: torch.Tensor   # (N_test,) int64
    X_val: torch.Tensor = field(default_factory=_empty)  # (N_val, 784) float32
    y_val: torch.Tensor = field(default_factory=_empty)  # (N_val,) int64

    SPLITS = ("X_train", "y_train", "X_test", "y_test", "X_val", "y_val")

    @property
    def device(self) -> torch.device:
        return self.X_train.device

    def to(self, device=None, dtype=None) -> "Data":
        """On ``device``; with ``dtype``, the images (not the labels) in that dtype."""
        moved = [getattr(self, s).to(device) for s in self.SPLITS]
        if dtype is not None:
            moved[0::2] = [t.to(dtype) for t in moved[0::2]]
        return Data(self.name, *moved)

    def __repr__(self) -> str:
        val = f", val={len(self.y_val)}" if len(self.y_val) else ""
        return (f"Data({self.name!r}, train={len(self.y_train)}{val}, test={len(self.y_test)}, "
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
                fd, tmp = tempfile.mkstemp(dir=raw, prefix=fname, suffix=".part")
                try:
                    with opener(src, "rb") as fin, os.fdopen(fd, "wb") as fout:
                        shutil.copyfileobj(fin, fout)
                    os.replace(tmp, dest)  # atomic: a reader sees no file or the whole file
                finally:
                    Path(tmp).unlink(missing_ok=True)
                break


def _missing(raw: Path) -> list[str]:
    return [f for f in RAW_FILES if not (raw / f).is_file()]


@contextlib.contextmanager
def _locked(root: Path):
    """An exclusive lock on ``root`` (a file beside the data; no-op where fcntl is missing):
    one process prepares the files while the others wait, then find them there."""
    try:
        import fcntl
    except ImportError:  # Windows: the temporary files alone keep writes whole
        yield
        return
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lowrank_helpers.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _ensure_raw(name: str, root: Path, download: bool) -> None:
    cls_name, _ = DATASETS[name]
    if not _missing(root / cls_name / "raw"):
        return  # prepared already: no lock needed
    try:
        with _locked(root):
            _prepare_raw(name, root, download)
    except OSError as exc:
        if isinstance(exc, DataNotFoundError):
            raise
        raise DataNotFoundError(f"could not write the {name} files into {root}: {exc}. Pass a "
                                "writable root (or set LOWRANK_DATA).") from exc


def _prepare_raw(name: str, root: Path, download: bool) -> None:
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


def prepare_data(name: str = "fashion_mnist", root=None, download: bool = True) -> Path:
    """Make sure the data set's files are under ``root`` (found, copied or downloaded, as
    :func:`load_data` does) without loading them; return the root. The command line calls this
    once before its jobs start."""
    check_dataset(name)
    root = Path(root) if root is not None else default_root()
    _ensure_raw(name, root, download)
    return root


def load_data(name: str = "fashion_mnist", root=None, device="cpu", train_subset: int | None = None,
              test_subset: int | None = None, download: bool = True, val_size: int = 0) -> Data:
    """Load a data set's train and test splits into tensors on ``device``.

    Pixels become float32 in [0, 1] exactly as ``transforms.ToTensor`` makes them (uint8 / 255).
    ``train_subset``/``test_subset`` keep the first n samples (for smoke runs). ``val_size``
    holds the last n of those training samples out as a validation split (a fixed split: the
    same images for every run and seed); training uses the ones before them, in order.
    """
    check_dataset(name)
    for label, n in (("train_subset", train_subset), ("test_subset", test_subset)):
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
            raise ValueError(f"{label} must be a positive integer or None, got {n!r}")
    if isinstance(val_size, bool) or not isinstance(val_size, int) or val_size < 0:
        raise ValueError(f"val_size must be an integer >= 0, got {val_size!r}")
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
    if val_size:
        n_train = len(splits[1])
        if val_size >= n_train:
            raise ValueError(f"val_size ({val_size}) must be smaller than the {n_train} "
                             "training samples: some must be left to train on")
        keep = n_train - val_size
        X_train, y_train = splits[:2]
        splits[:2] = [X_train[:keep], y_train[:keep]]
        splits += [X_train[keep:], y_train[keep:]]
    return Data(name, *splits)
