"""Small IDX files in torchvision's layout, written by the tests themselves.

The images are learnable (each class is a fixed random pattern plus noise), so a few SGD steps
lower the loss, yet tiny: tests never need the real data sets.
"""
from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

FOLDERS = {"fashion_mnist": "FashionMNIST", "mnist": "MNIST"}


def idx_bytes(array: np.ndarray) -> bytes:
    """IDX encoding of a uint8 array: magic (0, 0, 0x08 = ubyte, ndim), big-endian dims, data."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def make_split(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    prototypes = np.random.default_rng(1234).integers(0, 256, size=(10, 28, 28))
    labels = rng.integers(0, 10, size=n)
    noise = rng.normal(0, 40, size=(n, 28, 28))
    images = np.clip(prototypes[labels] * 0.8 + noise, 0, 255).astype(np.uint8)
    return images, labels.astype(np.uint8)


def write_fake_dataset(root, name: str = "fashion_mnist", n_train: int = 1200,
                       n_test: int = 600, compressed: bool = False) -> Path:
    """Write the four IDX files of ``name`` under ``root/<Folder>/raw`` (``.gz`` if
    ``compressed``); return the raw folder."""
    raw = Path(root) / FOLDERS[name] / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for prefix, (n, seed) in (("train", (n_train, 0)), ("t10k", (n_test, 1))):
        images, labels = make_split(n, seed)
        for kind, arr in (("images-idx3", images), ("labels-idx1", labels)):
            path = raw / f"{prefix}-{kind}-ubyte"
            data = idx_bytes(arr)
            if compressed:
                path.with_name(path.name + ".gz").write_bytes(gzip.compress(data))
            else:
                path.write_bytes(data)
    return raw
