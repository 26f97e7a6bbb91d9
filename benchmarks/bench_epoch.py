"""One epoch of the full-rank MLP under the reference protocol, timed two ways in one run.

1. The original's pipeline: torchvision ``FashionMNIST`` with ``ToTensor``, a ``DataLoader`` of
   batch 64 (not shuffled), the PyTorch quickstart's train loop.
2. This package: the data loaded once into tensors, a batch is a slice (``lowrank_helpers.train``).

Both start from the same init and see the same batches in the same order, so they must reach the
same test accuracy (checked). Prints seconds per epoch and the ratio. Target: >= 2x on CPU.

    python benchmarks/bench_epoch.py [--repeats 2] [--device cpu] [--data-root DIR]

The measurement is also written to benchmarks/bench_epoch.json (README cites it).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

import lowrank_helpers as lh
from lowrank_helpers.tasks.images_data import default_root


def original_epoch(model, train_loader, test_loader, device) -> float:
    """The quickstart's ``train`` then ``test`` loops, as the original study ran them."""
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    model.train()
    for X, y in train_loader:
        X, y = X.to(device), y.to(device)
        loss = F.cross_entropy(model(X), y)
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    correct = 0
    with torch.no_grad():
        for X, y in test_loader:
            X, y = X.to(device), y.to(device)
            correct += (model(X).argmax(1) == y).sum().item()
    return correct / len(test_loader.dataset)


def compare_epoch(data_root=None, device=torch.device("cpu"), repeats: int = 2) -> dict:
    """Time one epoch both ways ``repeats`` times (alternating); check they agree."""
    root = data_root or default_root()
    t0 = time.perf_counter()
    data = lh.load_data("fashion_mnist", root=root, device=device)  # also prepares raw files
    load_s = time.perf_counter() - t0
    tf = transforms.ToTensor()
    train_loader = DataLoader(datasets.FashionMNIST(str(root), train=True, transform=tf),
                              batch_size=64)
    test_loader = DataLoader(datasets.FashionMNIST(str(root), train=False, transform=tf),
                             batch_size=64)
    run = lh.RunConfig(method="full", epochs=1, seed=0)
    times = {"original DataLoader pipeline": [], "lowrank_helpers loop": []}
    accs = {}
    for _ in range(repeats):  # alternate the two ways so that machine noise hits both
        model = lh.build_model(run).to(device)
        t0 = time.perf_counter()
        accs["original DataLoader pipeline"] = original_epoch(model, train_loader, test_loader,
                                                              device)
        times["original DataLoader pipeline"].append(time.perf_counter() - t0)

        model = lh.build_model(run)
        t0 = time.perf_counter()
        result = lh.train(model, data, run.protocol, device=device, progress=False)
        times["lowrank_helpers loop"].append(time.perf_counter() - t0)
        accs["lowrank_helpers loop"] = result.history[-1]["test_accuracy"]
    a, b = accs.values()
    assert abs(a - b) <= 0.002, f"the two ways disagree: {a:.4f} vs {b:.4f}"
    best = {k: min(v) for k, v in times.items()}
    return {"seconds_per_epoch": best, "test_accuracy_after_1_epoch": accs,
            "load_into_tensors_s": load_s, "repeats": repeats,
            "speedup": best["original DataLoader pipeline"] / best["lowrank_helpers loop"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=2, help="epochs timed per way (min is kept)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--data-root", default=None)
    p.add_argument("--out", default=str(Path(__file__).with_name("bench_epoch.json")))
    args = p.parse_args()
    device = lh.resolve_device(args.device)
    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    out = compare_epoch(args.data_root, device, args.repeats)
    for name, seconds in out["seconds_per_epoch"].items():
        print(f"{name:30s} {seconds:6.2f} s/epoch (min of {args.repeats}), test accuracy after "
              f"1 epoch {out['test_accuracy_after_1_epoch'][name]:.2%}")
    ratio = out["speedup"]
    print(f"speed-up: {ratio:.2f}x (target >= 2x on CPU) -> {'PASS' if ratio >= 2 else 'MISS'}")
    out.update(device=str(device), torch=torch.__version__, threads=torch.get_num_threads(),
               cpus=os.cpu_count(), machine=platform.machine())
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
