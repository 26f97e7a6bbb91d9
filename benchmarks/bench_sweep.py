"""The reference sweep (17 configurations, full Fashion-MNIST) timed several ways in one run.

1. One model at a time (the plain loop) against the stacked engine, at ``--epochs`` epochs each,
   and the engine against the FLOP lower bound: the configurations' matrix-product FLOPs
   (training on 60,000 images and evaluating on 10,000 per epoch) divided by this machine's
   large-matmul throughput, measured in the same run.
2. Three seeds against one seed, with the engine: the whole sweep, and ranks 1-16 alone (which
   are bound by per-step overhead, not arithmetic).
3. The per-epoch comparison with the original's DataLoader pipeline (bench_epoch.py).

    python benchmarks/bench_sweep.py [--epochs 2] [--device auto] [--skip-epoch-bench]

Prints the ratios and writes them to benchmarks/bench_sweep.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

import lowrank_helpers as lh
from lowrank_helpers.models import forward_flops_per_sample, training_flops_per_sample

sys.path.insert(0, str(Path(__file__).parent))
from bench_epoch import compare_epoch  # noqa: E402

N_TRAIN, N_TEST = 60_000, 10_000


def matmul_throughput(device: torch.device, n: int = 2048, seconds: float = 3.0) -> float:
    """FLOP/s of a large float32 matrix product (the best this machine does on dense math)."""
    a, b = (torch.randn(n, n, device=device) for _ in range(2))
    for _ in range(3):
        a @ b
    best, end = float("inf"), time.perf_counter() + seconds
    while time.perf_counter() < end:
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(5):
            a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, (time.perf_counter() - t) / 5)
    return 2 * n ** 3 / best


def sweep_flops(runs: list[lh.RunConfig]) -> float:
    """Matrix-product FLOPs of training ``runs`` (train set) and evaluating them (test set)."""
    total = 0.0
    for r in runs:
        total += r.epochs * (N_TRAIN * training_flops_per_sample(r.method, r.rank, r.widths)
                             + N_TEST * forward_flops_per_sample(r.method, r.rank, r.widths))
    return total


def sweep(epochs: int, seeds, ranks=(1, 2, 4, 8, 16, 32, 64, 128), full=True):
    methods = ["full", "lora", "ae"] if full else ["lora", "ae"]
    return lh.StudyConfig(methods=methods, ranks=list(ranks), seeds=list(seeds),
                          epochs=epochs).runs()


def time_engine(runs, data, device) -> float:
    t = time.perf_counter()
    lh.train_many(runs, data, device=device, progress=False)
    return time.perf_counter() - t


def time_one_at_a_time(runs, data, device) -> float:
    t = time.perf_counter()
    for run in runs:
        lh.train(lh.build_model(run), data, run.train_config(), seed=run.seed, device=device,
                 progress=False)
    return time.perf_counter() - t


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--device", default="auto")
    p.add_argument("--data-root", default=None)
    p.add_argument("--skip-epoch-bench", action="store_true", help="skip part 3")
    p.add_argument("--out", default=str(Path(__file__).with_name("bench_sweep.json")))
    args = p.parse_args()
    device = lh.resolve_device(args.device)
    data = lh.load_data("fashion_mnist", root=args.data_root, device=device)
    out = {"device": str(device), "torch": torch.__version__, "threads": torch.get_num_threads(),
           "cpus": os.cpu_count(), "machine": platform.machine(), "epochs": args.epochs}

    flops_per_s = matmul_throughput(device)
    out["matmul_gflops"] = flops_per_s / 1e9
    print(f"{device}, torch {torch.__version__}, {torch.get_num_threads()} threads; large "
          f"matmul: {flops_per_s / 1e9:.0f} GFLOP/s")

    one = sweep(args.epochs, [0])
    bound = sweep_flops(one) / flops_per_s
    plain = time_one_at_a_time(one, data, device)
    engine = time_engine(one, data, device)
    out.update(sweep_configs=len(one), flop_bound_s=bound, one_at_a_time_s=plain,
               engine_s=engine, speedup=plain / engine, engine_over_bound=engine / bound)
    print(f"1. sweep, {len(one)} configs x {args.epochs} epochs: one at a time {plain:.1f} s, "
          f"engine {engine:.1f} s, FLOP bound {bound:.1f} s")
    print(f"   engine speed-up over one at a time: {plain / engine:.2f}x (target >= 2.2x)")
    print(f"   engine / FLOP bound: {engine / bound:.2f} (target <= 2, stretch 1.5)")

    three = sweep(args.epochs, [0, 1, 2])
    engine3 = time_engine(three, data, device)
    bound3 = sweep_flops(three) / flops_per_s
    small1 = time_engine(sweep(args.epochs, [0], ranks=(1, 2, 4, 8, 16), full=False), data,
                         device)
    small3 = time_engine(sweep(args.epochs, [0, 1, 2], ranks=(1, 2, 4, 8, 16), full=False),
                         data, device)
    out.update(engine_3_seeds_s=engine3, three_over_one=engine3 / engine,
               engine_3_seeds_over_bound=engine3 / bound3, small_ranks_1_seed_s=small1,
               small_ranks_3_seeds_s=small3, small_three_over_one=small3 / small1)
    print(f"2. three seeds ({len(three)} configs): engine {engine3:.1f} s = {engine3 / engine:.2f}x "
          f"one seed; engine / FLOP bound {engine3 / bound3:.2f} (target <= 2)")
    print(f"   ranks 1-16 only: one seed {small1:.1f} s, three seeds {small3:.1f} s = "
          f"{small3 / small1:.2f}x (target <= 1.6x)")

    if not args.skip_epoch_bench:
        epoch = compare_epoch(args.data_root, device, repeats=2)
        out["epoch_vs_dataloader"] = epoch
        print(f"3. one epoch of the full-rank MLP: DataLoader pipeline / this package's loop = "
              f"{epoch['speedup']:.2f}x (target >= 2x on CPU)")
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
