"""The reference sweep (17 configurations, full Fashion-MNIST) timed several ways in one run.

1. One model at a time (the plain loop) against the stacked engine, at ``--epochs`` epochs each,
   and the engine against the FLOP lower bound: the configurations' matrix-product FLOPs
   (training on 60,000 images and evaluating on 10,000 per epoch) divided by this machine's
   large-matmul throughput, measured in the same run; on CPU also the time the engine's step
   spends in matrix products at its own (small) shapes, profiled, against the rest.
2. Three seeds against one seed, with the engine: the whole sweep, and ranks 1-16 alone (which
   are bound by per-step overhead, not arithmetic).
3. The per-epoch comparison with the original's DataLoader pipeline (bench_epoch.py; CPU).
4. With ``--reference-sweep DIR``: the whole reference sweep (100 epochs, ``--seeds``) trained
   with the package's defaults (``run_study``), its records written to DIR, its time printed.
5. Per optimizer of the tuned study (SGD with momentum, AdamW; shuffled, batch 256, 5,000
   images held out): the 17 configurations for ``--epochs`` epochs one at a time (plain loop,
   autograd), with the engine's default step (written out) and with the engine on autograd.

On CPU "the engine" is timed both in this process and with one worker process per core (one
thread each); on CUDA eagerly, with a CUDA graph per stack, and with all stacks in one graph
(one stream each), the default.

    python benchmarks/bench_sweep.py [--epochs 2] [--device auto] [--skip-epoch-bench]
                                     [--reference-sweep DIR --seeds 0 1 2]

Prints the ratios and writes them to benchmarks/bench_sweep.json (``--out``).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import torch

import lowrank_helpers as lh
from lowrank_helpers.methods import ORIGINAL_METHODS
from lowrank_helpers.models.mlp import RANKS
from lowrank_helpers.studies.tuned import TUNED_PROTOCOLS
from lowrank_helpers.reports.reference import training_minutes

sys.path.insert(0, str(Path(__file__).parent))
from bench_epoch import compare_epoch  # noqa: E402



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


def sweep_flops(runs: list[lh.RunConfig], n_train: int, n_test: int) -> float:
    """Matrix-product FLOPs of training ``runs`` (train set) and evaluating them (test set)."""
    total = 0.0
    for r in runs:
        task = lh.TASKS[r.task]
        total += r.epochs * (n_train * task.training_flops(r) + n_test * task.forward_flops(r))
    return total


MATMUL_OPS = {"aten::mm", "aten::bmm", "aten::addmm", "aten::addmm_", "aten::baddbmm",
              "aten::baddbmm_"}


def matmul_time_cpu(runs: list[lh.RunConfig], data, workers: int, steps: int = 150) -> dict:
    """CPU, plain SGD: each stack the engine would train (as ``workers`` workers split them)
    takes ``steps`` of its written-out step under the profiler, with one thread as each worker
    has. Returns the time in matrix products (at the step's own shapes: batch 64, the stack's
    widths and padded rank) and in everything else, scaled to the sweep's training steps and
    shared over the workers. The matrix products alone, against the FLOP bound, show how much of
    the gap is arithmetic that small products do slowly, and how much is the rest of the step
    (the profiler's own cost lands in "the rest")."""
    from torch.profiler import ProfilerActivity, profile

    from lowrank_helpers.training.planning import worker_stacks
    run = runs[0]
    bs, n = run.batch_size, len(data.y_train)
    total_steps = run.epochs * math.ceil(n / bs)
    steps = min(steps, n // bs)
    batches = [(data.X_train[i * bs:(i + 1) * bs], data.y_train[i * bs:(i + 1) * bs])
               for i in range(steps)]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    matmul = other = 0.0
    try:
        for members in worker_stacks(runs, workers):  # with 1 worker: plan_stacks' stacks
            stack = lh.StackedMLP([lh.build_model(runs[i]) for i in members])
            for xb, yb in batches[:10]:
                stack.sgd_step(xb, yb, run.lr)
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                for xb, yb in batches:
                    stack.sgd_step(xb, yb, run.lr)
            events = prof.key_averages()
            mm = sum(e.self_cpu_time_total for e in events if e.key in MATMUL_OPS) / 1e6
            everything = sum(e.self_cpu_time_total for e in events) / 1e6
            matmul += mm * total_steps / steps
            other += (everything - mm) * total_steps / steps
    finally:
        torch.set_num_threads(threads)
    return {"matmul_s": matmul / workers, "other_s": other / workers}


def sweep(epochs: int, seeds, ranks=RANKS, full=True):
    """The reference sweep's runs (without the dense model unless ``full``)."""
    methods = [m for m in ORIGINAL_METHODS if full or lh.METHODS[m].factorized]
    return lh.StudyConfig(methods=methods, ranks=list(ranks), seeds=list(seeds),
                          protocol=lh.Protocol(epochs=epochs)).runs()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_engine(runs, data, device, **kwargs) -> tuple[float, list]:
    """Seconds to train ``runs`` with the engine, and their results."""
    sync(device)
    t = time.perf_counter()
    results = lh.train_many(runs, data, device=device, progress=False, **kwargs)
    sync(device)
    return time.perf_counter() - t, results


def engine_variants(device: torch.device) -> dict[str, dict]:
    """The ways the engine is timed here; the first is the one the targets are checked on."""
    if device.type == "cuda":
        return {"graphs, lockstep streams": {}, "graphs, stack after stack": {"lockstep": False},
                "eager": {"cuda_graphs": False, "lockstep": False}}
    cores = os.cpu_count() or 1
    variants = {"one process": {}}
    if cores > 1:
        variants = {f"{cores} workers": {"workers": cores}, **variants}
    return variants


def time_one_at_a_time(runs, data, device) -> tuple[float, list]:
    """Seconds to train ``runs`` one after another with the plain loop, and their results."""
    sync(device)
    t = time.perf_counter()
    results = [lh.train(lh.build_model(run), data, run.protocol, seed=run.seed, device=device,
                        progress=False) for run in runs]
    sync(device)
    return time.perf_counter() - t, results


def float64_identity(data, device, n_train: int = 6400, n_test: int = 1000) -> dict:
    """The sweep's 17 configurations for one epoch on the first ``n_train`` images (100 steps),
    stacked and one at a time, in float64: the engine's arithmetic is each model's own, so
    the two agree to float64 rounding even where float32 rounding grows (the "lora" init's
    chaotic start at small ranks)."""
    sub = lh.Data(data.name, data.X_train[:n_train], data.y_train[:n_train],
                  data.X_test[:n_test], data.y_test[:n_test]).to(dtype=torch.float64)
    runs = sweep(1, [0])
    stacked = lh.train_many(runs, sub, device=device, progress=False, dtype=torch.float64)
    alone = [lh.train(lh.build_model(run).double(), sub, run.protocol, seed=run.seed,
                      device=device, progress=False) for run in runs]
    return largest_differences(runs, stacked, alone)


def largest_differences(runs, got: list, want: list) -> dict:
    """The largest difference between two trainings of ``runs`` over every epoch: in test
    accuracy (points) and in train and test loss (relative), and the model it is in."""
    out = {}
    for key, scale, rel in (("test_accuracy", 100, False), ("train_loss", 1, True),
                            ("test_loss", 1, True)):
        worst, where = 0.0, None
        for run, g, w in zip(runs, got, want):
            for hg, hw in zip(g.history, w.history):
                d = abs(hg[key] - hw[key]) * scale / (abs(hw[key]) if rel else 1)
                if d > worst:
                    worst, where = d, run.label
        out[key] = {"largest": worst, "model": where}
    return out


def reference_sweep(results_dir: str, seeds, device: torch.device, data_root,
                    smoke: bool = False) -> dict:
    """The reference sweep at 100 epochs with the package's defaults; its records go to
    ``results_dir`` (resumes). Returns the wall time and the training time in the records."""
    cfg = lh.StudyConfig(seeds=list(seeds), device=str(device), results_dir=results_dir,
                         data_root=data_root, smoke=smoke)
    sync(device)
    t = time.perf_counter()
    frame = lh.run_study(cfg, progress=False)
    sync(device)
    wall = time.perf_counter() - t
    return {"seeds": list(seeds), "models": len(frame), "wall_s": wall,
            "training_s": 60 * training_minutes(frame),  # each stack or lockstep group once
            "step_modes": sorted(set(frame["step_mode"].dropna()))}


def optimizer_speed(protocol: lh.Protocol, epochs: int, device, data_root, subsets,
                    engine_kw: dict) -> dict:
    """The 17 configurations under ``protocol`` (``epochs`` epochs): one at a time, with the
    engine (its default step) and with the engine on autograd (``written=False``)."""
    from dataclasses import replace
    protocol = replace(protocol, epochs=epochs)
    if subsets[0]:
        protocol = protocol.smoke(epochs, *subsets)
    data = lh.TASKS["fashion_mnist"].load(protocol, data_root, device)
    runs = [r.replace(protocol=protocol) for r in sweep(epochs, [0])]
    plain, plain_results = time_one_at_a_time(runs, data, device)
    fast, fast_results = time_engine(runs, data, device, **engine_kw)
    slow, _ = time_engine(runs, data, device, written=False, **engine_kw)
    same = largest_differences(runs, fast_results, plain_results)
    return {"protocol": protocol.describe(), "configs": len(runs), "one_at_a_time_s": plain,
            "engine_s": fast, "engine_autograd_s": slow, "speedup": plain / fast,
            "written_over_autograd": slow / fast,
            "step_mode": fast_results[0].step_mode,
            "largest_points": same["test_accuracy"]["largest"]}


def optimizer_part(out: dict, args, device, subsets, engine_kw: dict) -> None:
    """Part 5, for each tuned protocol, printed and stored under ``out["optimizers"]``."""
    out["optimizers"] = {}
    for opt, protocol in TUNED_PROTOCOLS.items():
        res = optimizer_speed(protocol, args.epochs, device, args.data_root, subsets, engine_kw)
        out["optimizers"][opt] = res
        print(f"5. {opt} ({res['protocol']}), {res['configs']} configs: one at a time "
              f"{res['one_at_a_time_s']:.1f} s, engine {res['engine_s']:.1f} s "
              f"({res['step_mode']}), engine on autograd {res['engine_autograd_s']:.1f} s: "
              f"engine speed-up {res['speedup']:.2f}x, written-out step "
              f"{res['written_over_autograd']:.2f}x faster than autograd in the engine; "
              f"largest difference from one at a time {res['largest_points']:.2g} points",
              flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--device", default="auto")
    p.add_argument("--data-root", default=None)
    p.add_argument("--skip-epoch-bench", action="store_true", help="skip part 3")
    p.add_argument("--skip-seeds", action="store_true", help="skip part 2")
    p.add_argument("--reference-sweep", metavar="DIR", default=None,
                   help="part 4: train the whole reference sweep, records into DIR")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                   help="seeds of part 4 (default: 0 1 2)")
    p.add_argument("--max-sweep-s", type=float, default=None,
                   help="skip part 4 if part 2's timing projects it past this many seconds")
    p.add_argument("--skip-optimizers", action="store_true", help="skip part 5")
    p.add_argument("--optimizers-only", action="store_true", help="only part 5, written to "
                   "benchmarks/bench_optimizers.json (unless --out)")
    p.add_argument("--smoke", action="store_true", help="tiny data, to try the script out")
    p.add_argument("--out", default=None, help="default: benchmarks/bench_sweep.json")
    args = p.parse_args()
    args.out = args.out or str(Path(__file__).with_name(
        "bench_optimizers.json" if args.optimizers_only else "bench_sweep.json"))
    device = lh.resolve_device(args.device)
    subsets = (640, 256) if args.smoke else (None, None)
    data = lh.load_data("fashion_mnist", root=args.data_root, device=device,
                        train_subset=subsets[0], test_subset=subsets[1])
    sizes = len(data.y_train), len(data.y_test)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    out = {"device": str(device), "device_name": name, "torch": torch.__version__,
           "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
           "machine": platform.machine(), "epochs": args.epochs}
    flops_per_s = matmul_throughput(device)
    out["matmul_gflops"] = flops_per_s / 1e9
    print(f"{device} ({name}), torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{os.cpu_count()} cores; large float32 matmul: {flops_per_s / 1e9:.0f} GFLOP/s")

    variants = engine_variants(device)
    best = next(iter(variants))
    if args.optimizers_only:
        optimizer_part(out, args, device, subsets, variants[best])
        Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
        print(f"wrote {args.out}")
        return
    one = sweep(args.epochs, [0])
    bound = sweep_flops(one, *sizes) / flops_per_s
    time_engine(sweep(1, [0], ranks=(4,)), data, device, **variants[best])  # warm up
    plain, plain_results = time_one_at_a_time(one, data, device)
    engine, engine_results = {}, {}
    for label, kw in variants.items():
        engine[label], engine_results[label] = time_engine(one, data, device, **kw)
    same = largest_differences(one, engine_results[best], plain_results)
    out.update(sweep_configs=len(one), flop_bound_s=bound, one_at_a_time_s=plain,
               engine_variants_s=engine, engine_variant=best, engine_s=engine[best],
               speedup=plain / engine[best], engine_over_bound=engine[best] / bound,
               engine_vs_one_at_a_time=same)
    print(f"1. sweep, {len(one)} configs x {args.epochs} epochs: one at a time {plain:.1f} s, "
          f"FLOP bound {bound:.2f} s; engine: "
          + ", ".join(f"{label} {t:.1f} s" for label, t in engine.items()))
    print(f"   engine ({best}) speed-up over one at a time: {plain / engine[best]:.2f}x "
          "(target >= 3x)")
    print("   engine against one at a time, largest difference over every model and epoch: "
          + "; ".join(f"{key.replace('_', ' ')} {d['largest']:.2g}"
                      + (" points" if key.endswith("accuracy") else " (relative)")
                      + f" ({d['model']})" for key, d in same.items()))
    print(f"   engine ({best}) / FLOP bound: {engine[best] / bound:.2f} "
          "(target <= 2, stretch 1.5)")
    if device.type == "cpu" and one[0].optimizer == "sgd" and not one[0].momentum:
        split = matmul_time_cpu(one, data, variants[best].get("workers", 1))
        out.update(matmul_at_step_shapes_s=split["matmul_s"], rest_of_step_s=split["other_s"],
                   matmul_at_step_shapes_over_bound=split["matmul_s"] / bound)
        print(f"   of which, profiled: matrix products at the step's own shapes "
              f"{split['matmul_s']:.1f} s = {split['matmul_s'] / bound:.2f}x the FLOP bound; "
              f"the rest of the step {split['other_s']:.1f} s")

    exact = float64_identity(data, device)
    out["engine_vs_one_at_a_time_float64"] = exact
    print("   the same in float64 (100 steps on 6,400 images): "
          + "; ".join(f"{key.replace('_', ' ')} {d['largest']:.2g}"
                      + (" points" if key.endswith("accuracy") else " (relative)")
                      for key, d in exact.items()))

    if not args.skip_seeds:
        kw = variants[best]
        three = sweep(args.epochs, [0, 1, 2])
        engine3 = time_engine(three, data, device, **kw)[0]
        bound3 = sweep_flops(three, *sizes) / flops_per_s
        small1 = time_engine(sweep(args.epochs, [0], ranks=(1, 2, 4, 8, 16), full=False), data,
                             device, **kw)[0]
        small3 = time_engine(sweep(args.epochs, [0, 1, 2], ranks=(1, 2, 4, 8, 16), full=False),
                             data, device, **kw)[0]
        out.update(engine_3_seeds_s=engine3, three_over_one=engine3 / engine[best],
                   engine_3_seeds_over_bound=engine3 / bound3, small_ranks_1_seed_s=small1,
                   small_ranks_3_seeds_s=small3, small_three_over_one=small3 / small1)
        print(f"2. three seeds ({len(three)} configs): engine {engine3:.1f} s = "
              f"{engine3 / engine[best]:.2f}x one seed; engine / FLOP bound {engine3 / bound3:.2f} "
              "(target <= 2)")
        print(f"   ranks 1-16 only: one seed {small1:.1f} s, three seeds {small3:.1f} s = "
              f"{small3 / small1:.2f}x (target <= 1.6x)")

    if not args.skip_epoch_bench:
        epoch = compare_epoch(args.data_root, device, repeats=2)
        out["epoch_vs_dataloader"] = epoch
        print(f"3. one epoch of the full-rank MLP: DataLoader pipeline / this package's loop = "
              f"{epoch['speedup']:.2f}x (target >= 2x on CPU)")

    projected = out.get("engine_3_seeds_s", 0) / args.epochs * 100 * len(args.seeds) / 3
    if args.reference_sweep and args.max_sweep_s and projected > args.max_sweep_s:
        print(f"4. skipped: projected {projected:.0f} s > --max-sweep-s {args.max_sweep_s:.0f}")
    elif args.reference_sweep:
        ref = reference_sweep(args.reference_sweep, args.seeds, device, args.data_root,
                              args.smoke)
        out["reference_sweep"] = ref
        print(f"4. reference sweep, {ref['models']} models ({ref['step_modes']}): "
              f"{ref['training_s']:.1f} s of training, {ref['wall_s']:.1f} s in all")
    if not args.skip_optimizers:
        optimizer_part(out, args, device, subsets, variants[best])
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
