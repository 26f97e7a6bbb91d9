"""The character LM's training speed, measured side by side in one run.

1. One model at nanoGPT's CPU configuration (4 layers, 4 heads, d_model 128, context 64,
   batch 12; AdamW β 0.9/0.99, weight decay 0.1 on ≥ 2-d tensors, clipping at 1.0): this
   project's step (its model, its optimizer groups, ``clip_grad_norm_``) and, with
   ``--nanogpt DIR``, nanoGPT's own ``model.py`` imported from DIR in this process (its
   ``GPT`` and ``configure_optimizers``), the same loop on the same batches; beside them the
   project's whole loop (``lh.train_lm_eager``) and this CPU's large-matmul rate (1024 × 1024
   float32), each repeat in turn. Without ``--nanogpt`` nanoGPT is not timed and the JSON
   says so; nanoGPT's own reported 42 ms per step stays as an outside reference.
2. ``--profile``: ``torch.profiler`` over the project's step, its self CPU time grouped
   (matrix products, attention, LayerNorm, optimizer and clipping, embedding, cross-entropy,
   the rest); the step's FLOP rate against the large-matmul rate; and AdamW's CPU
   implementations (the default for-loop, ``foreach=True``, ``fused=True``) side by side.
3. ``--compile``: ``torch.compile`` of each model (loss included, as nanoGPT's ``train.py``
   compiles its model) against the same model eager, in a child process with a fresh
   inductor cache and a time limit (``--compile-timeout``); a failure or a time-out is
   recorded as skipped, with why.
4. M models trained together (``lh.train_lms``: ``torch.func`` stacked parameters + ``vmap``)
   against the same M models one at a time (``lh.train_lm_eager``), for the dense model and a
   factorized one, against the target of 1.2× for the factorized one; and where the stacked
   step's time goes against the same models one at a time (:func:`phases`: forward, backward,
   clipping with AdamW, in tight loops on the same windows).

Alternating repeats, the median of each; steps after a warm-up only. Single models take the
same batches in turns of 10 steps (:func:`rounds`), so that a busy spell of a shared machine
hits each alike; the JSON keeps every time.

    python benchmarks/bench_lm.py [--nanogpt DIR] [--profile] [--compile] [--steps 40]
        [--models 4] [--repeats 5] [--data-root DIR]

Writes benchmarks/bench_lm.json (README cites it). ``--smoke``: a tiny model on Python
source text (the test).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import importlib.util
import io
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import lowrank_helpers as lh
from lowrank_helpers.methods import METHODS
from lowrank_helpers.reports.lm import NANOGPT_CPU
from lowrank_helpers.tasks.text import load_corpus
from lowrank_helpers.training.lm import batch_generator, get_batch
from lowrank_helpers.training.loop import make_optimizer
from lowrank_helpers.training.trainer import param_groups

HERE = Path(__file__).resolve().parent
#: What training the factorized models together must buy over one at a time (the issue).
STACKED_TARGET = 1.2
MATMUL_N = 1024
#: The least probability that the repeats' range holds the median ratio, for a verdict on
#: the target (0.9: 5 repeats or more).
MIN_COVERAGE = 0.9
#: Steps per timed piece (:func:`rounds`).
CHUNK = 10


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def rounds(models: dict, batches, repeats: int, chunk: int = 10, each_piece=None,
           each_repeat=None) -> dict[str, list[float]]:
    """Seconds per step of each of ``models`` ((model, optimizer, loss) each), the batches cut
    into pieces of ``chunk`` steps and the models taking each piece in turn, ``repeats``
    times over: short turns, so that a busy spell of the machine hits every model alike.
    ``each_piece`` and ``each_repeat``: other measurements (name -> function giving a
    number) taken after every piece or every repeat."""
    each_piece, each_repeat = each_piece or {}, each_repeat or {}
    pieces = [batches[i:i + chunk] for i in range(0, len(batches), chunk)]
    for m in models.values():  # warm-up
        train_steps(*m, batches[:3])
    out = {name: [] for name in [*models, *each_piece, *each_repeat]}
    for _ in range(repeats):
        for piece in pieces:
            for name, m in models.items():
                out[name].append(train_steps(*m, piece) / len(piece))
            for name, fn in each_piece.items():
                out[name].append(fn())
        for name, fn in each_repeat.items():
            out[name].append(fn())
    return out


# -- the models and the step ----------------------------------------------------------------
def our_model(run, **adamw):
    """The project's model and optimizer as ``trainer.fit`` builds them (the method's groups,
    ``make_optimizer``); ``adamw``: AdamW's implementation flags instead (foreach, fused)."""
    model = run.build()
    groups = param_groups(model, run)
    if adamw:
        p = run.protocol
        opt = torch.optim.AdamW(groups, lr=p.lr, betas=(p.beta1, p.beta2),
                                weight_decay=p.weight_decay, **adamw)
    else:
        opt = METHODS[run.method].make_optimizer(groups, run.protocol) or \
            make_optimizer(groups, run.protocol)
    return model, opt, _WithLoss(model, run.task_spec.loss)


class _WithLoss(torch.nn.Module):
    """model(x) and the task's loss in one module (what ``torch.compile`` gets)."""

    def __init__(self, model, loss):
        super().__init__()
        self.model, self.loss = model, loss

    def forward(self, x, y):
        return self.loss(self.model(x), y)


def load_nanogpt(directory):
    """nanoGPT's ``model.py`` from ``directory``, imported as it is (never copied here)."""
    path = Path(directory) / "model.py"
    if not path.is_file():
        raise SystemExit(f"--nanogpt: no model.py in {directory}")
    spec = importlib.util.spec_from_file_location("nanogpt_model", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module, hashlib.sha256(path.read_bytes()).hexdigest()


def nanogpt_model(module, shape: lh.LMShape, seed: int = 0):
    """nanoGPT's GPT at ``shape`` (dropout 0, no biases) with its own optimizer, as its
    ``train.py`` makes it on the CPU; the loss is the one its forward returns."""
    cfg = module.GPTConfig(block_size=shape.block_size, vocab_size=shape.vocab_size,
                           n_layer=shape.n_layer, n_head=shape.n_head, n_embd=shape.d_model,
                           dropout=0.0, bias=False)
    with torch.random.fork_rng(devices=[]), contextlib.redirect_stdout(io.StringIO()):
        torch.manual_seed(seed)
        model = module.GPT(cfg)
        opt = model.configure_optimizers(weight_decay=0.1, learning_rate=1e-3,
                                         betas=(0.9, 0.99), device_type="cpu")
    return model, opt, lambda x, y: model(x, y)[1]


def train_steps(model, opt, loss_of, batches, clip: float = 1.0) -> float:
    """Seconds for nanoGPT's step on each batch: loss, zero_grad, backward, clip, AdamW."""
    model.train()
    t = time.perf_counter()
    for x, y in batches:
        loss = loss_of(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
    return time.perf_counter() - t


def fixed_batches(splits, shape: lh.LMShape, batch: int, steps: int, seed: int = 0):
    """The same training windows for every model (nanoGPT's ``get_batch``)."""
    gen = batch_generator(seed)
    return [get_batch(splits.train, shape.block_size, batch, gen) for _ in range(steps)]


def matmul_gflops(n: int = MATMUL_N, reps: int = 8) -> float:
    """This CPU's large-matmul rate now: ``reps`` n × n float32 products, GFLOP/s."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    t = _timed(lambda: [a @ b for _ in range(reps)])
    return 2 * n ** 3 * reps / t / 1e9


def _tensors(opt) -> int:
    return sum(len(g["params"]) for g in opt.param_groups)


# -- 1. one model: ours against nanoGPT's model.py -------------------------------------------
def one_model(corpus, shape, splits, steps, repeats, nanogpt=None, chunk=CHUNK) -> dict:
    run = lh.LMRun(corpus, shape)
    proto = lh.LMProtocol(iters=steps, eval_every=10 ** 9, eval_windows=1)
    loop_run = run.replace(protocol=proto)
    batches = fixed_batches(splits, shape, proto.batch_size, steps)
    tokens = proto.batch_size * shape.block_size
    models = {"ours": our_model(run)}
    out = {"steps": steps, "repeats": repeats, "chunk": chunk, "tokens_per_step": tokens,
           "our_parameters": sum(p.numel() for p in models["ours"][0].parameters()),
           "parameter_tensors": {"ours": _tensors(models["ours"][1])}, "matmul_n": MATMUL_N}
    if nanogpt is not None:
        module, digest = nanogpt
        models["nanogpt"] = nanogpt_model(module, shape)
        out["parameter_tensors"]["nanogpt"] = _tensors(models["nanogpt"][1])
        out["nanogpt_parameters"] = sum(p.numel() for p in models["nanogpt"][0].parameters())
        out["nanogpt_model_py_sha256"] = digest
    lh.train_lm_eager(loop_run.replace(steps=3), splits)  # warm-up
    times = rounds(models, batches, repeats, chunk, each_piece={"matmul": matmul_gflops},
                   each_repeat={"ours_loop": lambda: _timed(
                       lambda: lh.train_lm_eager(loop_run, splits)) / steps})
    rates = times.pop("matmul")
    out["matmul_gflops"] = statistics.median(rates)
    out["matmul_gflops_all"] = rates
    flops = run.task_spec.training_flops(run) * tokens
    out["training_flops_per_step"] = flops
    for name, ts in times.items():
        s = statistics.median(ts)
        out[name] = {"ms_per_step": 1000 * s, "tokens_per_s": tokens / s,
                     "gflops": flops / s / 1e9, "of_matmul_rate": flops / s / 1e9
                     / out["matmul_gflops"], "all_ms": [1000 * t for t in ts]}
    if "nanogpt" in models:
        out["ours_over_nanogpt"] = out["ours"]["tokens_per_s"] / out["nanogpt"]["tokens_per_s"]
        out["loop_over_nanogpt"] = (out["ours_loop"]["tokens_per_s"]
                                    / out["nanogpt"]["tokens_per_s"])
        # the same ratio piece by piece (each pair timed back to back), its median
        out["ours_over_nanogpt_paired"] = statistics.median(
            n / o for o, n in zip(times["ours"], times["nanogpt"]))
    return out


# -- 2. profile and AdamW's implementations --------------------------------------------------
CATEGORIES = ("matmul", "attention", "layer norm", "optimizer", "embedding", "cross-entropy",
              "elementwise/other", "python between ops")
_PATTERNS = [  # (category, regex on the lowercased event name); first match wins
    ("optimizer", r"^optimizer\.|^bench::(clip|optimizer)|adamw"),
    ("cross-entropy", r"cross_entropy|log_softmax|nll_loss|logsoftmax|nllloss"),
    ("attention", r"scaled_dot_product|flash_attention|softmax"),
    ("layer norm", r"layer_norm|layernorm"),
    ("embedding", r"embedding"),
    ("matmul", r"\baten::(mm|addmm|bmm|baddbmm|matmul|linear)\b|\b(mm|addmm|bmm|linear|matmul)"
               r"backward"),
    ("python between ops", r"^bench::step$"),
]


def _category(event) -> str | None:
    name = event.name.lower()
    for cat, pat in _PATTERNS:
        if re.search(pat, name):
            return cat
    return None


def categorize(events) -> dict[str, float]:
    """Self CPU time (µs) of every event, by category: an optimizer or clipping range claims
    everything under it; otherwise an event's own name decides, else its nearest ancestor's
    (an aten::t under aten::linear is the product's), else ``elementwise/other``."""
    out = dict.fromkeys(CATEGORIES, 0.0)
    for e in events:
        chain, p = [], e
        while p is not None:
            chain.append(p)
            p = p.cpu_parent
        if not any(c.name == "bench::step" for c in chain):
            continue  # outside the timed steps
        cats = [_category(c) for c in chain]
        if "optimizer" in cats:
            cat = "optimizer"
        elif cats[0] == "python between ops":  # the step range's own time, outside any op
            cat = cats[0]
        else:
            cat = next((c for c in cats if c not in (None, "python between ops")),
                       "elementwise/other")
        out[cat] += e.self_cpu_time_total
    return out


def profile_step(corpus, shape, splits, steps: int, repeats: int) -> dict:
    """torch.profiler over ``steps`` of the project's step (after a warm-up), ``repeats``
    times; each category's median time per step, and its share of their sum."""
    from torch.profiler import ProfilerActivity, profile, record_function
    run = lh.LMRun(corpus, shape)
    model, opt, loss_of = our_model(run)
    batches = fixed_batches(splits, shape, run.protocol.batch_size, steps, seed=1)
    train_steps(model, opt, loss_of, batches[:3])
    per, walls = {k: [] for k in CATEGORIES}, []
    for _ in range(repeats):
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            t = time.perf_counter()
            for x, y in batches:
                with record_function("bench::step"):
                    loss = loss_of(x, y)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    with record_function("bench::clip"):
                        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                    opt.step()
            walls.append((time.perf_counter() - t) / steps)
        for k, v in categorize(prof.events()).items():
            per[k].append(v / 1000 / steps)
    ms = {k: statistics.median(v) for k, v in per.items()}
    total = sum(ms.values())
    tokens = run.protocol.batch_size * shape.block_size
    matmul_flops = 6 * (run.task_spec.parameters(run)["matrices"]
                        + shape.vocab_size * shape.d_model) * tokens
    return {"steps": steps, "repeats": repeats,
            "profiled_ms_per_step": 1000 * statistics.median(walls),
            "ms_per_step": ms, "share": {k: v / total for k, v in ms.items()},
            "matmul_flops_per_step": matmul_flops,
            "matmul_gflops_in_step": matmul_flops / (ms["matmul"] / 1000) / 1e9
            if ms["matmul"] else None,
            "note": "self CPU time under the profiler (which slows small ops most): each "
                    "category's median ms per step over the repeats and its share of their sum"}


def adamw_variants(corpus, shape, splits, steps, repeats, chunk=CHUNK) -> dict:
    """The project's step with AdamW's default CPU implementation against foreach=True and
    fused=True, on the same batches, in turns (:func:`rounds`)."""
    from torch.optim.optimizer import _default_to_fused_or_foreach
    run = lh.LMRun(corpus, shape)
    batches = fixed_batches(splits, shape, run.protocol.batch_size, steps, seed=2)
    kinds = {"default": {}, "foreach": {"foreach": True}, "fused": {"fused": True}}
    models = {k: our_model(run, **kw) for k, kw in kinds.items()}
    times = rounds(models, batches, repeats, chunk)
    fused, foreach = _default_to_fused_or_foreach(list(models["default"][0].parameters()),
                                                  False, False)
    out = {"steps": steps, "repeats": repeats, "chunk": chunk,
           "default_is": "fused" if fused else "foreach" if foreach else "for-loop"}
    for k, ts in times.items():
        out[k] = {"ms_per_step": 1000 * statistics.median(ts), "all_ms": [1000 * t for t in ts]}
    for k in ("foreach", "fused"):
        out[f"{k}_speedup"] = out["default"]["ms_per_step"] / out[k]["ms_per_step"]
    return out


# -- 3. torch.compile, in a child process -----------------------------------------------------
def compile_compare(corpus, shape, steps, repeats, data_root=None, nanogpt_dir=None,
                    chunk=CHUNK) -> dict:
    """Each model eager against ``torch.compile`` of it (loss included), in turns
    (:func:`rounds`); the compile's wall time is that of the first compiled step."""
    splits = load_corpus(corpus, data_root)
    run = lh.LMRun(corpus, shape)
    batches = fixed_batches(splits, shape, run.protocol.batch_size, steps, seed=3)
    tokens = run.protocol.batch_size * shape.block_size
    makers = {"ours": lambda: our_model(run)}
    if nanogpt_dir:
        module, _ = load_nanogpt(nanogpt_dir)
        makers["nanogpt"] = lambda: nanogpt_model(module, shape)
    models, out = {}, {"steps": steps, "repeats": repeats, "chunk": chunk}
    for name, make in makers.items():
        eager, comp = make(), make()
        compiled = (comp[0], comp[1], torch.compile(comp[2]))
        t = time.perf_counter()
        train_steps(*compiled, batches[:1])
        out[f"{name}_compile_s"] = time.perf_counter() - t
        models[f"{name}_eager"], models[f"{name}_compiled"] = eager, compiled
    times = rounds(models, batches, repeats, chunk)
    for name, ts in times.items():
        s = statistics.median(ts)
        out[name] = {"ms_per_step": 1000 * s, "tokens_per_s": tokens / s,
                     "all_ms": [1000 * t for t in ts]}
    for name in makers:
        out[f"{name}_compiled_speedup"] = (out[f"{name}_eager"]["ms_per_step"]
                                           / out[f"{name}_compiled"]["ms_per_step"])
    return out


def compile_in_child(args, shape) -> dict:
    cmd = [sys.executable, __file__, "--compile-child", json.dumps(
        {"corpus": args.corpus, "shape": vars(shape), "steps": args.steps,
         "repeats": args.repeats, "data_root": args.data_root, "nanogpt_dir": args.nanogpt})]
    env = {**os.environ}
    with tempfile.TemporaryDirectory() as cache:
        env["TORCHINDUCTOR_CACHE_DIR"] = cache  # a cold compile, as a first run has
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env,
                                  timeout=args.compile_timeout)
        except subprocess.TimeoutExpired:
            return {"skipped": f"compile and timing took over {args.compile_timeout} s"}
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no message"])[-1]
        return {"skipped": f"torch.compile failed: {last[:300]}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


# -- 4. many models together against one at a time ---------------------------------------------
def stacked(corpus: str, shape: lh.LMShape, steps: int, models: int, repeats: int, rank: int,
            splits) -> dict:
    proto = lh.LMProtocol(iters=steps, eval_every=10 ** 9, eval_windows=1)
    # the final evaluation of train_lms on one window only: the benchmark times the steps
    tiny_eval = dataclasses.replace(splits, val=splits.val[:shape.block_size + 1])
    tokens = steps * proto.batch_size * shape.block_size
    out = {}
    kinds = {"dense": {}, f"both r={rank}": {"factorize": "both", "rank": rank, "init": "he"}}
    for name, kw in kinds.items():
        runs = [lh.LMRun(corpus, shape, seed=s, protocol=proto, **kw) for s in range(models)]
        lh.train_lm_eager(runs[0].replace(steps=3), splits)                  # warm-up
        lh.train_lms([r.replace(steps=3) for r in runs], tiny_eval)
        one, together = [], []
        timings = {"one": lambda: sum(_timed(lambda r=r: lh.train_lm_eager(r, splits))
                                      for r in runs),
                   "together": lambda: _timed(lambda: lh.train_lms(runs, tiny_eval))}
        for k in range(repeats):  # alternating, so a busy spell hits both; which goes first too
            order = ("one", "together") if k % 2 == 0 else ("together", "one")
            took = {way: timings[way]() for way in order}
            one.append(took["one"])
            together.append(took["together"])
        one_s, together_s = statistics.median(one), statistics.median(together)
        out[name] = {"one_at_a_time_s": one_s, "together_s": together_s,
                     "speedup": one_s / together_s,
                     # the same ratio repeat by repeat (each pair back to back), its median
                     "speedup_paired": statistics.median(o / t for o, t in zip(one, together)),
                     "ms_per_step_one": 1000 * one_s / (models * steps),
                     "tokens_per_s_one": models * tokens / one_s,
                     "tokens_per_s_together": models * tokens / together_s,
                     "one_all_s": one, "together_all_s": together}
        out[name]["phases"] = phases(runs, splits, steps, repeats)
    out["factorized_target"] = target_verdict(f"both r={rank}", out[f"both r={rank}"])
    return out


def target_verdict(kind: str, g: dict, target: float = STACKED_TARGET) -> dict:
    """Whether training together meets ``target``, from the repeats' paired ratios (one at a
    time over together, each pair back to back): with n repeats, their lowest and highest
    enclose the median ratio with probability 1 − 2·0.5ⁿ (a sign test; 94 % for 5), so the
    target is ``met`` where even the lowest reaches it, ``not met`` where even the highest
    falls short, and otherwise not distinguishable from it at this machine's noise; so too
    with fewer repeats than give :data:`MIN_COVERAGE` (5)."""
    paired = [o / t for o, t in zip(g["one_all_s"], g["together_all_s"])]
    low, high = min(paired), max(paired)
    coverage = 1 - 2 * 0.5 ** len(paired)
    verdict = ("not distinguishable" if coverage < MIN_COVERAGE else "met" if low >= target
               else "not met" if high < target else "not distinguishable")
    return {"kind": kind, "target": target, "speedup": g["speedup"],
            "paired_low": low, "paired_high": high,
            "coverage": coverage, "verdict": verdict}


def phases(runs, splits, steps: int, repeats: int, chunk: int = CHUNK) -> dict:
    """Where a stacked step's time goes against the same models' steps one at a time, in
    tight loops on the same windows (no evaluation, no batch drawing): milliseconds per step
    of all ``runs`` in the forward pass with the loss, the backward pass, and clipping with
    AdamW (with the gradients' release); the stack as ``train_stacked`` runs it (``Stack``,
    ``StackedAdamW``), each model alone as ``trainer.fit`` does (:func:`our_model`), one
    model's ``chunk`` steps after another's; the stack and the models alone take turns of
    ``chunk`` steps."""
    from lowrank_helpers.training.stacking import Stack, StackedAdamW, stack_decays
    shape, p = runs[0].shape, runs[0].protocol
    batches = [fixed_batches(splits, shape, p.batch_size, steps, seed=r.seed) for r in runs]
    xs = [torch.stack([b[i][0] for b in batches]) for i in range(steps)]
    ys = [torch.stack([b[i][1] for b in batches]) for i in range(steps)]
    built = [r.build() for r in runs]
    stack = Stack(built, runs[0].task_spec.loss)
    opt = StackedAdamW(stack.tensors(), stack_decays(built[0], runs[0], stack.trainable), p)
    lrs = torch.full((len(runs),), p.lr, dtype=torch.float64)
    alone = [our_model(r) for r in runs]
    kinds = ("forward", "backward", "optimizer")
    got = {w: {k: 0.0 for k in kinds} for w in ("together", "one_at_a_time")}

    def together(piece):
        spent = [0.0, 0.0, 0.0]
        for i in piece:
            t0 = time.perf_counter()
            losses = stack.loss(stack.params, stack.buffers, xs[i], ys[i])
            t1 = time.perf_counter()
            losses.sum().backward()
            t2 = time.perf_counter()
            if p.grad_clip:
                opt.clip(p.grad_clip)
            opt.step(lrs)                                   # and releases the gradients
            for j, dt in enumerate((t1 - t0, t2 - t1, time.perf_counter() - t2)):
                spent[j] += dt
        return spent

    def one_at_a_time(piece):
        spent = [0.0, 0.0, 0.0]
        for (model, o, loss_of), b in zip(alone, batches):  # one model's steps, then the next
            for i in piece:
                t0 = time.perf_counter()
                loss = loss_of(*b[i])
                t1 = time.perf_counter()
                loss.backward()
                t2 = time.perf_counter()
                if p.grad_clip:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), p.grad_clip)
                o.step()
                o.zero_grad(set_to_none=True)
                for j, dt in enumerate((t1 - t0, t2 - t1, time.perf_counter() - t2)):
                    spent[j] += dt
        return spent

    ways = {"together": together, "one_at_a_time": one_at_a_time}
    for fn in ways.values():   # warm-up
        fn(range(3))
    for n in range(repeats):
        for start in range(0, steps, chunk):
            piece = range(start, min(start + chunk, steps))
            for way in list(ways)[::1 if n % 2 == 0 else -1]:   # the other first, next repeat
                for k, dt in zip(kinds, ways[way](piece)):
                    got[way][k] += dt
    out = {w: {k: 1000 * v / (repeats * steps) for k, v in d.items()} for w, d in got.items()}
    for w in ways:
        out[w]["step"] = sum(out[w][k] for k in kinds)
    out["speedup"] = {k: out["one_at_a_time"][k] / out["together"][k] for k in (*kinds, "step")}
    return out


def bench(args, corpus: str, shape: lh.LMShape) -> dict:
    splits = load_corpus(corpus, args.data_root)
    proto = lh.LMProtocol()
    out = {"steps": args.steps, "models": args.models, "repeats": args.repeats,
           "tokens_per_step": proto.batch_size * shape.block_size, "shape": vars(shape),
           "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
           "machine": platform.processor() or platform.machine(),
           "cpu": _cpu_name()}
    nanogpt = load_nanogpt(args.nanogpt) if args.nanogpt else None
    out["one_model"] = one_model(corpus, shape, splits, args.steps, args.repeats, nanogpt)
    if nanogpt is None:
        out["one_model"]["nanogpt"] = {
            "skipped": "no --nanogpt DIR given: nanoGPT's model.py not timed in this run"}
    if args.profile:
        out["profile"] = profile_step(corpus, shape, splits, args.profile_steps, args.repeats)
        out["adamw"] = adamw_variants(corpus, shape, splits, args.steps, args.repeats)
    if args.compile:
        out["compile"] = compile_in_child(args, shape)
    out.update(stacked(corpus, shape, args.steps, args.models, args.repeats, args.rank, splits))
    ref = NANOGPT_CPU["tokens_per_iter"] / (NANOGPT_CPU["ms_per_iter"] / 1000)
    out["nanogpt_reference_tokens_per_s"] = ref
    out["dense_one_over_nanogpt"] = out["dense"]["tokens_per_s_one"] / ref
    out["dense_together_over_nanogpt"] = out["dense"]["tokens_per_s_together"] / ref
    return out


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def report(got: dict) -> None:
    print(f"{got['steps']} steps of {got['tokens_per_step']} tokens, median of "
          f"{got['repeats']}, {got['torch_threads']} threads")
    o = got["one_model"]
    print(f"  one model: ours {o['ours']['ms_per_step']:.1f} ms/step "
          f"({o['ours']['tokens_per_s']:,.0f} tokens/s); the whole loop (train_lm_eager) "
          f"{o['ours_loop']['ms_per_step']:.1f} ms/step")
    if "ours_over_nanogpt" in o:
        print(f"  nanoGPT's model.py here: {o['nanogpt']['ms_per_step']:.1f} ms/step "
              f"({o['nanogpt']['tokens_per_s']:,.0f} tokens/s): ours/nanoGPT's "
              f"{o['ours_over_nanogpt']:.2f}x (loop {o['loop_over_nanogpt']:.2f}x)")
    else:
        print(f"  nanoGPT's model.py: {o['nanogpt']['skipped']}")
    print(f"  large-matmul rate {o['matmul_gflops']:.0f} GFLOP/s; the step "
          f"{o['ours']['gflops']:.0f} GFLOP/s = {100 * o['ours']['of_matmul_rate']:.0f} %")
    if "profile" in got:
        p = got["profile"]
        print("  profile: " + ", ".join(f"{k} {100 * v:.0f} %" for k, v in
                                        sorted(p["share"].items(), key=lambda kv: -kv[1])))
        a = got["adamw"]
        print(f"  AdamW (default {a['default_is']}) {a['default']['ms_per_step']:.1f} ms/step; "
              f"foreach {a['foreach_speedup']:.2f}x, fused {a['fused_speedup']:.2f}x")
    if "compile" in got:
        c = got["compile"]
        if "skipped" in c:
            print(f"  torch.compile: skipped ({c['skipped']})")
        else:
            print("  torch.compile: " + ", ".join(
                f"{k.split('_')[0]} {c[k]:.2f}x" for k in c if k.endswith("compiled_speedup")))
    for name in [k for k in got if isinstance(got[k], dict) and "speedup" in got[k]
                 and "one_at_a_time_s" in got[k]]:
        g = got[name]
        print(f"  {name:>10}: one at a time {g['ms_per_step_one']:.1f} ms/step "
              f"({g['tokens_per_s_one']:,.0f} tokens/s); together "
              f"{g['tokens_per_s_together']:,.0f} tokens/s: speed-up over one at a time "
              f"{g['speedup']:.2f}x")
    for name in [k for k in got if isinstance(got[k], dict) and "phases" in got[k]]:
        ph = got[name]["phases"]
        print(f"  {name} phases, ms per step of all models (together / one at a time): " +
              ", ".join(f"{k} {ph['together'][k]:.1f} / {ph['one_at_a_time'][k]:.1f}"
                        for k in ("forward", "backward", "optimizer", "step")))
    t = got["factorized_target"]
    print(f"  {t['kind']} together: {t['speedup']:.2f}x (repeats {t['paired_low']:.2f}x to "
          f"{t['paired_high']:.2f}x) against the target {t['target']}x: {t['verdict']}")
    print(f"  nanoGPT's reported {NANOGPT_CPU['ms_per_iter']:g} ms/step = "
          f"{got['nanogpt_reference_tokens_per_s']:,.0f} tokens/s: dense one at a time is "
          f"{got['dense_one_over_nanogpt']:.2f}x, together {got['dense_together_over_nanogpt']:.2f}x")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--models", type=int, default=4)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--data-root", default=None)
    p.add_argument("--nanogpt", metavar="DIR", default=None,
                   help="a nanoGPT checkout: its model.py is timed beside ours")
    p.add_argument("--profile", action="store_true",
                   help="profile the step; AdamW default/foreach/fused")
    p.add_argument("--profile-steps", type=int, default=20)
    p.add_argument("--compile", action="store_true", help="torch.compile of each model")
    p.add_argument("--compile-timeout", type=int, default=900)
    p.add_argument("--compile-child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--smoke", action="store_true", help="tiny model, Python source text")
    p.add_argument("--out", default=str(HERE / "bench_lm.json"))
    args = p.parse_args(argv)
    if args.compile_child:
        kw = json.loads(args.compile_child)
        kw["shape"] = lh.LMShape(**kw["shape"])
        print(json.dumps(compile_compare(**kw)))
        return 0
    if args.smoke:
        splits = load_corpus("python_stdlib", args.data_root)
        corpus, shape = "python_stdlib", lh.LMShape(1, 2, 16, 16, splits.vocab_size)
        args.rank = min(args.rank, 4)
    else:
        corpus, shape = "tinyshakespeare", lh.LMShape()
    args.corpus = corpus
    got = bench(args, corpus, shape)
    Path(args.out).write_text(json.dumps(got, indent=1) + "\n")
    report(got)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
