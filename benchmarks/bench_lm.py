"""The character LM's training speed, measured side by side in one run.

1. One model, nanoGPT's loop (``lh.train_lm_eager``: ``torch.optim.AdamW``, ``clip_grad_norm_``)
   at nanoGPT's CPU configuration: milliseconds per step and tokens per second, beside
   nanoGPT's own 42 ms per step of 768 tokens on this machine class (issue 11; an outside
   reference, not timed here).
2. M models trained together (``lh.train_lms``: ``torch.func`` stacked parameters + ``vmap``)
   against the same M models one at a time, for the dense model and a factorized one:
   the speed-up of training together.

Alternating repeats, the median of each; steps after a warm-up only.

    python benchmarks/bench_lm.py [--steps 40] [--models 4] [--repeats 3] [--data-root DIR]

Writes benchmarks/bench_lm.json (README cites it). ``--smoke``: a tiny model on Python
source text (the test).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import time
from pathlib import Path

import torch

import lowrank_helpers as lh
from lowrank_helpers.lm_report import NANOGPT_CPU
from lowrank_helpers.text import load_corpus

HERE = Path(__file__).resolve().parent


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def bench(corpus: str, shape: lh.LMShape, steps: int, models: int, repeats: int, rank: int,
          data_root=None) -> dict:
    splits = load_corpus(corpus, data_root)
    proto = lh.LMProtocol(iters=steps, eval_every=10 ** 9, eval_windows=1)
    # the final evaluation of train_lms on one window only: the benchmark times the steps
    tiny_eval = dataclasses.replace(splits, val=splits.val[:shape.block_size + 1])
    tokens = steps * proto.batch_size * shape.block_size
    out = {"steps": steps, "models": models, "repeats": repeats,
           "tokens_per_step": proto.batch_size * shape.block_size, "shape": vars(shape),
           "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
           "machine": platform.processor() or platform.machine()}
    kinds = {"dense": {}, f"both r={rank}": {"factorize": "both", "rank": rank, "init": "he"}}
    for name, kw in kinds.items():
        runs = [lh.LMRun(corpus, shape, seed=s, protocol=proto, **kw) for s in range(models)]
        lh.train_lm_eager(runs[0].replace(steps=3), splits)                  # warm-up
        lh.train_lms([r.replace(steps=3) for r in runs], tiny_eval)
        one, together = [], []
        for _ in range(repeats):  # alternating, so a busy spell hits both
            one.append(sum(_timed(lambda r=r: lh.train_lm_eager(r, splits)) for r in runs))
            together.append(_timed(lambda: lh.train_lms(runs, tiny_eval)))
        one_s, together_s = statistics.median(one), statistics.median(together)
        out[name] = {"one_at_a_time_s": one_s, "together_s": together_s,
                     "speedup": one_s / together_s,
                     "ms_per_step_one": 1000 * one_s / (models * steps),
                     "tokens_per_s_one": models * tokens / one_s,
                     "tokens_per_s_together": models * tokens / together_s}
    ref = NANOGPT_CPU["tokens_per_iter"] / (NANOGPT_CPU["ms_per_iter"] / 1000)
    out["nanogpt_reference_tokens_per_s"] = ref
    out["dense_one_over_nanogpt"] = out["dense"]["tokens_per_s_one"] / ref
    out["dense_together_over_nanogpt"] = out["dense"]["tokens_per_s_together"] / ref
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--models", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--data-root", default=None)
    p.add_argument("--smoke", action="store_true", help="tiny model, Python source text")
    p.add_argument("--out", default=str(HERE / "bench_lm.json"))
    args = p.parse_args(argv)
    if args.smoke:
        splits = load_corpus("python_stdlib", args.data_root)
        corpus, shape = "python_stdlib", lh.LMShape(1, 2, 16, 16, splits.vocab_size)
        args.rank = min(args.rank, 4)
    else:
        corpus, shape = "tinyshakespeare", lh.LMShape()
    got = bench(corpus, shape, args.steps, args.models, args.repeats, args.rank, args.data_root)
    Path(args.out).write_text(json.dumps(got, indent=1) + "\n")
    print(f"{args.steps} steps of {got['tokens_per_step']} tokens, {args.models} models, "
          f"median of {args.repeats}, {got['torch_threads']} threads")
    for name in [k for k in got if isinstance(got[k], dict) and "speedup" in got[k]]:
        g = got[name]
        print(f"  {name:>10}: one at a time {g['ms_per_step_one']:.1f} ms/step "
              f"({g['tokens_per_s_one']:,.0f} tokens/s); together "
              f"{g['tokens_per_s_together']:,.0f} tokens/s: speed-up over one at a time "
              f"{g['speedup']:.2f}x")
    print(f"  nanoGPT's reported {NANOGPT_CPU['ms_per_iter']:g} ms/step = "
          f"{got['nanogpt_reference_tokens_per_s']:,.0f} tokens/s: dense one at a time is "
          f"{got['dense_one_over_nanogpt']:.2f}x, together {got['dense_together_over_nanogpt']:.2f}x")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
