"""The extensions' training cost, every row measured side by side in one run.

The comparison's records hold each run's own throughput and the process's peak resident set,
but its rows were trained under different conditions: the methods one at a time beside
another job, the dense model and plain B·A of the LM study stacked several to a call (their
time shared out), and a process's peak resident set counts Python, the data and every model
the process trained before. This script measures every row alike, in one process, at one
rank at a time:

- **Time.** Each model trains ``--steps`` steps through the trainer's own step
  (:class:`~lowrank_helpers.training.trainer.Step`: the method's optimizer, schedule, penalty,
  clipping and hook), from step 1 of the study's protocol, so periodic work falls where it
  does in a run; the JSON and README's block say, per method, how often it falls in the
  window against how often in a run (:func:`periodic`). Models run in turn,
  the order reversed on every other repeat, after an untimed warm-up of each; the JSON keeps
  every time and gives the median per step and each model's time over dense's in the same
  repeat (median and range over repeats).
- **Memory.** The most bytes of tensors alive at once over the first ``--memory-steps``
  steps of a fresh model (:class:`~lowrank_helpers.core.devices.TensorMemory`: parameters,
  gradients, optimizer state as it is created, activations and temporaries, the one batch
  of the step; not the dataset the batches are cut from), on any device; beside it the
  optimizer state's bytes from its tensors.

    python benchmarks/bench_extensions.py [--parts lm mlp] [--lm-ranks 16 32]
        [--mlp-ranks 8 32] [--steps 100] [--mlp-steps 200] [--repeats 3] [--data-root DIR]

Writes benchmarks/bench_extensions.json (README's extensions section cites it). ``--smoke``:
tiny sizes on made-up data (the test).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent


def rows(cfg, part: str, rank: int, vocab: int | None = None) -> dict:
    """The comparison's rows at ``rank`` as runs, by name: dense, plain B·A (default init),
    the narrower dense model of its parameter count where the study has one, and
    every model of ``cfg.models`` (the study's own run builders, at ``rank``)."""
    from lowrank_helpers.reports.extensions import DENSE, PLAIN, _equal, narrow_name
    from lowrank_helpers.studies.extensions import (EXT_MODELS, ext_name, extension_runs,
                                                    mlp_baselines, mlp_runs)
    plain = PLAIN.format(init="default")
    if part == "lm":
        from lowrank_helpers.studies.lm import _models
        base = _models(cfg, vocab, "search") + _models(cfg, vocab, "narrow")  # the LM study's
        ext = extension_runs(cfg, vocab)
    else:
        base, ext = mlp_baselines(cfg), mlp_runs(cfg)
    dense = next(r for r in base if r.method == "full")
    ba = [r for r in base if r.method != "full" and r.rank == rank
          and r.init in ("default", None)]
    if not ba:
        raise ValueError(f"rank {rank} is not among the {part} part's ranks here")
    out = {DENSE: dense, plain: ba[0]}
    count = ba[0].task_spec.parameters(ba[0])["total"]
    for r in base:                                              # narrower dense models
        if r.method == "full" and r is not dense and \
                _equal(r.task_spec.parameters(r)["total"], count):
            out[narrow_name(r.shape)] = r
    for r in ext:
        name = ext_name(r.method, r.options)
        if r.rank == rank and name in EXT_MODELS:
            out[name] = r
    return out


def periodic(run) -> int | None:
    """The period (steps) of a method's periodic work, or None: its hook's (ReLoRA's merge,
    LORO's exact step) or its ``<method>_every`` option's (GaLore's new projection)."""
    from lowrank_helpers.methods import METHODS
    from lowrank_helpers.methods.base import OPTIONS
    key = f"{run.method}_every"
    if key in OPTIONS:
        return int(run.options.get(key, OPTIONS[key].default)) or None
    return METHODS[run.method].every_for(run) or None


def _stepper(run, data, total: int):
    """A fresh model of ``run``, its trainer step, and its batches, each a tensor of its own
    (the MLP's are views of the whole split, which would count as live memory)."""
    from lowrank_helpers.training.trainer import Step
    task = run.task_spec
    model = run.build()
    model.train()
    batches = ((x.clone(), y.clone()) for x, y in task.batches(run, data))
    return Step(run, model, total), batches, model


def total_steps(run, data) -> int:
    """The steps of ``run``'s whole protocol on ``data`` (the schedule's length)."""
    return run.protocol.total_steps(run.task_spec.steps_per_epoch(run.protocol, data))


def timed(run, data, steps: int, total: int) -> float:
    """Seconds for ``steps`` training steps of a fresh model of ``run`` from step 1."""
    step, batches, _ = _stepper(run, data, total)
    got = [next(batches) for _ in range(steps)]             # the batches, drawn untimed
    start = time.perf_counter()
    for i, (x, y) in enumerate(got, start=1):
        step(i, x, y)
    return time.perf_counter() - start


def memory(run, data, steps: int, total: int) -> dict:
    """Peak tensor bytes over the first ``steps`` steps of a fresh model, and the optimizer
    state's bytes after them."""
    from lowrank_helpers.core.devices import TensorMemory
    from lowrank_helpers.methods import METHODS
    step, batches, model = _stepper(run, data, total)
    got = [next(batches) for _ in range(steps)]    # cut outside: the dataset is not counted
    with TensorMemory(*model.parameters(), *model.buffers()) as m:
        for i in range(1, steps + 1):
            x, y = got.pop(0)                      # one batch alive at a time, as in training
            m.track(x, y)
            step(i, x, y)
            del x, y
    return {"peak_tensor_bytes": m.peak,
            "optimizer_state_bytes": METHODS[run.method].state_bytes(model, step.opt)}


def measure(models: dict, data, steps: int, repeats: int, memory_steps: int,
            per_step: int, progress: bool = True) -> dict:
    """Every model of ``models`` (name → run): a warm-up, then ``repeats`` rounds of ``steps``
    timed steps each (order reversed every other round), then its memory."""
    total = total_steps(next(iter(models.values())), data)
    names = list(models)
    for n in names:                                        # warm-up: first-call costs
        timed(models[n], data, min(3, steps), total)
    times = {n: [] for n in names}
    for rep in range(repeats):
        order = names if rep % 2 == 0 else names[::-1]
        for n in order:
            times[n].append(timed(models[n], data, steps, total))
            if progress:
                print(f"  repeat {rep + 1}/{repeats}: {n}: {times[n][-1] / steps * 1e3:.1f} "
                      "ms/step", file=sys.stderr)
    dense = times[names[0]]
    out = {}
    for n in names:
        ratios = [t / d for t, d in zip(times[n], dense)]
        ms = statistics.median(times[n]) / steps * 1e3
        out[n] = {"seconds": times[n], "ms_per_step": ms,
                  "per_second": per_step / ms * 1e3,
                  "time_over_dense": statistics.median(ratios),
                  "time_over_dense_range": [min(ratios), max(ratios)],
                  **memory(models[n], data, memory_steps, total),
                  "period": periodic(models[n]),
                  "parameters": models[n].task_spec.parameters(models[n])["total"]}
    return out


def parts(args, cfg):
    """Per part of ``args.parts``: its data, the number of timed steps, the unit, the amount
    per step and, per rank, its rows (:func:`rows`)."""
    if "lm" in args.parts:
        from lowrank_helpers.tasks.text import read_corpus, split_text
        splits = split_text(read_corpus(cfg.corpus, cfg.data_root), cfg.tune_chars, cfg.corpus)
        shape = cfg.shape(splits.vocab_size)
        yield ("lm", splits, args.steps, "tokens", cfg.batch_size * shape.block_size,
               {r: rows(cfg, "lm", r, splits.vocab_size) for r in args.lm_ranks})
    if "mlp" in args.parts:
        from lowrank_helpers.tasks import TASKS
        tuned = cfg.mlp_config()
        task = TASKS[tuned.task]
        protocol = tuned.protocol("adamw")
        task.prepare(cfg.data_root)
        yield ("mlp", task.load(protocol, cfg.data_root), args.mlp_steps, "samples",
               protocol.batch_size, {r: rows(cfg, "mlp", r) for r in args.mlp_ranks})


def bench(args) -> dict:
    from lowrank_helpers.studies.extensions import ExtensionsConfig
    cfg = ExtensionsConfig(data_root=args.data_root, smoke=args.smoke, device="cpu")
    if args.memory_only:                  # exact tensor bytes, not timing: no noise to redo
        got = json.loads(Path(args.out).read_text())
        for part, data, _, _, _, ranks in parts(args, cfg):
            for r, models in ranks.items():
                for name, m in got["parts"][part]["ranks"][str(r)].items():
                    run = models[name]
                    m.update(memory(run, data, args.memory_steps, total_steps(run, data)))
        got["memory_steps"] = args.memory_steps
        return got
    got = {"torch": torch.__version__, "torch_threads": torch.get_num_threads(),
           "cpus": os.cpu_count(), "machine": platform.machine(), "repeats": args.repeats,
           "memory_steps": args.memory_steps, "note": args.note, "parts": {}}
    for part, data, steps, unit, per, ranks in parts(args, cfg):
        got["parts"][part] = {"unit": unit, "steps": steps, "per_step": per, "ranks": {}}
        for r, models in ranks.items():
            print(f"{part}, rank {r}", file=sys.stderr)
            got["parts"][part]["ranks"][str(r)] = measure(models, data, steps, args.repeats,
                                                          args.memory_steps, per)
    return got


def report(got: dict) -> None:
    for part, p in got["parts"].items():
        for rank, models in p["ranks"].items():
            print(f"\n{part}, rank {rank}: {p['steps']} steps, median of {got['repeats']}")
            print(f"{'model':40s} {'ms/step':>8s} {'× dense':>16s} {'peak MB':>8s} "
                  f"{'opt MB':>7s}")
            for n, m in models.items():
                lo, hi = m["time_over_dense_range"]
                print(f"{n:40s} {m['ms_per_step']:8.1f} {m['time_over_dense']:6.2f} "
                      f"({lo:.2f}-{hi:.2f}) {m['peak_tensor_bytes'] / 1e6:8.1f} "
                      f"{m['optimizer_state_bytes'] / 1e6:7.2f}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--parts", nargs="+", default=["lm", "mlp"], choices=["lm", "mlp"])
    p.add_argument("--lm-ranks", nargs="+", type=int, default=[16, 32])
    p.add_argument("--mlp-ranks", nargs="+", type=int, default=[8, 32])
    p.add_argument("--steps", type=int, default=100, help="timed steps per model (LM)")
    p.add_argument("--mlp-steps", type=int, default=200, help="timed steps per model (MLP)")
    p.add_argument("--memory-steps", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (1: as the comparison's runs trained)")
    p.add_argument("--data-root", default=None)
    p.add_argument("--smoke", action="store_true", help="tiny sizes (the test)")
    p.add_argument("--memory-only", action="store_true",
                   help="measure the memory again into the JSON at --out (its times kept)")
    p.add_argument("--note", default="", help="what else the machine ran (kept in the JSON)")
    p.add_argument("--out", default=str(HERE / "bench_extensions.json"))
    args = p.parse_args(argv)
    for name in ("steps", "mlp_steps", "memory_steps", "repeats", "threads"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    torch.set_num_threads(args.threads)
    got = bench(args)
    report(got)
    Path(args.out).write_text(json.dumps(got, indent=1))
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
