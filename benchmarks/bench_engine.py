"""Does the MLP's hand-written engine earn its place? Timed side by side in one run.

The reference sweep's 17 configurations (dense, and ``lora`` and ``ae`` at ranks 1-128; one
seed; plain SGD at lr 1e-3, batch 64, the whole Fashion-MNIST, test accuracy after every
epoch) for ``--epochs`` epochs, trained three ways in this process with the same threads:

1. the hand-written stacked engine (:func:`lowrank_helpers.train_many`: written-out backward,
   SGD fused into the weights, ranks up to 16 padded into one stack);
2. the generic stacked path (:func:`lowrank_helpers.training.stacking.train_stacked`: torch.func's
   ``vmap`` over ``functional_call``, autograd, per-model SGD; the same stacks, ranks padded
   the same way);
3. one model at a time through the one training loop (:func:`lowrank_helpers.training.trainer.fit`).

The issue's rule: the engine stays only if it is at least 1.3x faster than the generic path.
Prints the times and ratios and writes them to benchmarks/bench_engine.json (``--out``).

    python benchmarks/bench_engine.py [--epochs 1] [--skip-alone]
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

import lowrank_helpers as lh
from lowrank_helpers.models.mlp import RANKS
from lowrank_helpers.training.stacking import stack_key, train_stacked
from lowrank_helpers.training.trainer import fit

RULE = 1.3   # the engine stays only if it is at least this much faster than the generic path


def sweep(epochs: int) -> list[lh.RunConfig]:
    p = lh.Protocol(epochs=epochs)
    runs = [lh.RunConfig(method="full", protocol=p)]
    for method in ("lora", "ae"):
        runs += [lh.RunConfig(method=method, rank=r, protocol=p) for r in RANKS]
    return runs


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--train-subset", type=int, default=None, help="(tests: a small subset)")
    ap.add_argument("--skip-alone", action="store_true", help="skip one model at a time")
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--out", default=str(Path(__file__).with_name("bench_engine.json")))
    args = ap.parse_args(argv)
    runs = sweep(args.epochs)
    if args.train_subset:
        runs = [r.replace(train_subset=args.train_subset, test_subset=args.train_subset)
                for r in runs]
    data = lh.TASKS["fashion_mnist"].load(runs[0].protocol, args.data_root)
    groups: dict[tuple, list[lh.RunConfig]] = {}
    for r in runs:
        groups.setdefault(stack_key(r, pad=True), []).append(r)
    out = {"epochs": args.epochs, "configurations": len(runs), "stacks": len(groups),
           "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
           "machine": platform.processor() or platform.machine()}
    # warm-up: one short run of each path
    warm = [r.replace(train_subset=256, test_subset=256) for r in runs[:3]]
    warm_data = lh.TASKS["fashion_mnist"].load(warm[0].protocol, args.data_root)
    lh.train_many(warm, warm_data, device="cpu", progress=False)
    train_stacked(warm[1:], warm_data, pad=True)
    out["engine_s"] = timed(lambda: lh.train_many(runs, data, device="cpu", progress=False))
    out["generic_s"] = timed(lambda: [train_stacked(g, data, pad=True)
                                      for g in groups.values()])
    if not args.skip_alone:
        out["alone_s"] = timed(lambda: [fit(r, data, progress=False) for r in runs])
        out["generic_over_alone"] = out["alone_s"] / out["generic_s"]
        out["engine_over_alone"] = out["alone_s"] / out["engine_s"]
    out["engine_over_generic"] = out["generic_s"] / out["engine_s"]
    out["rule"] = RULE
    out["engine_stays"] = out["engine_over_generic"] >= RULE
    for k, v in out.items():
        print(f"{k:>22}: {v:.3f}" if isinstance(v, float) else f"{k:>22}: {v}")
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    return out


if __name__ == "__main__":
    main()
