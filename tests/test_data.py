import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

import lowrank_helpers.tasks.images_data as data_mod
from lowrank_helpers import DataNotFoundError, load_data
from tests.fakedata import make_split, write_fake_dataset


@pytest.mark.parametrize("name", ["fashion_mnist", "mnist"])
@pytest.mark.parametrize("compressed", [False, True])
def test_loads_idx_files(tmp_path, name, compressed):
    write_fake_dataset(tmp_path, name, n_train=50, n_test=20, compressed=compressed)
    data = load_data(name, root=tmp_path, download=False)
    images, labels = make_split(50, seed=0)
    assert data.X_train.shape == (50, 784) and data.X_test.shape == (20, 784)
    assert data.X_train.dtype == torch.float32 and data.y_train.dtype == torch.int64
    # exactly what transforms.ToTensor gives: uint8 / 255
    expected = torch.from_numpy(images.reshape(50, -1)).float().div(255)
    assert torch.equal(data.X_train, expected)
    assert torch.equal(data.y_train, torch.from_numpy(labels.astype(np.int64)))
    assert 0.0 <= data.X_train.min() and data.X_train.max() <= 1.0


def test_subsets_keep_the_first_samples(tmp_path):
    write_fake_dataset(tmp_path, n_train=50, n_test=20)
    full = load_data(root=tmp_path, download=False)
    sub = load_data(root=tmp_path, download=False, train_subset=10, test_subset=5)
    assert torch.equal(sub.X_train, full.X_train[:10]) and len(sub.y_test) == 5


def test_system_copy_is_found(tmp_path, monkeypatch):
    system = tmp_path / "usr-share"
    raw = write_fake_dataset(tmp_path / "staging", n_train=30, n_test=10, compressed=True)
    system.mkdir()
    for f in raw.iterdir():
        (system / f.name).write_bytes(f.read_bytes())
    monkeypatch.setitem(data_mod.DATASETS, "fashion_mnist", ("FashionMNIST", (str(system),)))
    root = tmp_path / "root"
    data = load_data(root=root, download=False)
    assert len(data.y_train) == 30
    assert (root / "FashionMNIST" / "raw" / "train-images-idx3-ubyte").is_file()


def test_missing_data_without_download(tmp_path, monkeypatch):
    monkeypatch.setitem(data_mod.DATASETS, "mnist", ("MNIST", (str(tmp_path / "nowhere"),)))
    with pytest.raises(DataNotFoundError) as err:
        load_data("mnist", root=tmp_path, download=False)
    msg = str(err.value)
    assert "mnist not found under root" in msg and str(tmp_path) in msg
    assert "download=False" in msg and "network" in msg


def test_failed_download_is_explained(tmp_path, monkeypatch):
    import torchvision.datasets as tvd

    class NoNetwork:
        def __init__(self, *args, **kwargs):
            raise RuntimeError("Error downloading train-images-idx3-ubyte.gz")
    monkeypatch.setattr(tvd, "FashionMNIST", NoNetwork)
    monkeypatch.setitem(data_mod.DATASETS, "fashion_mnist",
                        ("FashionMNIST", (str(tmp_path / "nowhere"),)))
    with pytest.raises(DataNotFoundError, match="fashion_mnist not found.*download failed: "
                       "RuntimeError.*apt-get install dataset-fashion-mnist"):
        load_data("fashion_mnist", root=tmp_path / "data")


def test_unwritable_root_is_explained(tmp_path, monkeypatch):
    raw = write_fake_dataset(tmp_path / "system", n_train=5, n_test=5, compressed=True)
    monkeypatch.setitem(data_mod.DATASETS, "fashion_mnist", ("FashionMNIST", (str(raw),)))
    blocker = tmp_path / "file"
    blocker.write_text("a file where the root's folders should go")
    with pytest.raises(DataNotFoundError, match="could not write the fashion_mnist files"):
        load_data(root=blocker, download=False)


@pytest.mark.parametrize("kwargs, match", [
    ({"name": "cifar10"}, "unknown data set 'cifar10'; valid data sets: fashion_mnist, mnist"),
    ({"train_subset": 0}, "train_subset must be a positive integer"),
])
def test_bad_arguments(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        load_data(root=tmp_path, download=False, **kwargs)


REAL = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.skipif(not (REAL / "train-images-idx3-ubyte.gz").exists(),
                    reason="Debian's dataset-fashion-mnist is not installed")
def test_real_fashion_mnist_from_system_copy(tmp_path):
    data = load_data("fashion_mnist", root=tmp_path, download=False, test_subset=100)
    assert data.X_train.shape == (60_000, 784) and len(data.y_test) == 100
    assert set(data.y_train.unique().tolist()) == set(range(10))
    with gzip.open(REAL / "train-labels-idx1-ubyte.gz") as f:
        first_label = f.read()[8]  # the label file's 8-byte header, then one byte per label
    assert data.y_train[0].item() == first_label


def _load_in_child(system: str, root: str, barrier) -> int:
    data_mod.DATASETS["fashion_mnist"] = ("FashionMNIST", (system,))  # the "system copy"
    barrier.wait()  # all at once
    return len(load_data(root=root, download=False).y_train)


def test_parallel_first_runs_do_not_race(tmp_path):
    """Four processes preparing one fresh data root at once (parallel jobs on a new machine):
    each gets the whole data set, and no temporary file is left behind."""
    import multiprocessing
    system = write_fake_dataset(tmp_path / "system", n_train=20000, n_test=500, compressed=True)
    root = tmp_path / "root"
    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager, context.Pool(4) as pool:
        barrier = manager.Barrier(4)
        sizes = pool.starmap(_load_in_child, [(str(system), str(root), barrier)] * 4)
    assert sizes == [20000] * 4
    raw = root / "FashionMNIST" / "raw"
    assert sorted(p.name for p in raw.iterdir()) == sorted(data_mod.RAW_FILES)


def test_validation_split_is_the_last_training_samples(tmp_path):
    write_fake_dataset(tmp_path, n_train=50, n_test=20)
    full = load_data(root=tmp_path, download=False)
    split = load_data(root=tmp_path, download=False, val_size=10)
    assert torch.equal(split.X_train, full.X_train[:40]) and torch.equal(split.X_val, full.X_train[40:])
    assert torch.equal(split.y_val, full.y_train[40:]) and len(full.y_val) == 0
    sub = load_data(root=tmp_path, download=False, train_subset=30, val_size=5)
    assert torch.equal(sub.X_val, full.X_train[25:30])
    with pytest.raises(ValueError, match="val_size \\(50\\) must be smaller than the 50 training"):
        load_data(root=tmp_path, download=False, val_size=50)
