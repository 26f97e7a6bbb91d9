"""Character-level language modelling: nanoGPT's transformer on tiny-shakespeare.

The model is :class:`~lowrank_helpers.models.charlm.CharTransformer` of an
:class:`~lowrank_helpers.models.charlm.LMShape`; a run's method builds the block projections its
``targets`` name: all six (``"both"``), the attention's Q, K, V, O (``"attn"``) or the MLP's
two (``"mlp"``). The protocol is nanoGPT's ``train_shakespeare_char`` at its CPU size (the
task's default protocol): AdamW (β2 0.99, weight decay 0.1 on matrices and embeddings), a
warm-up then nanoGPT's cosine to lr/10, clipping at 1.0, random windows of the training split.
The corpus is split as nanoGPT splits it; ``val_size`` characters cut from the end of the
training split are the tuning slice learning rates are chosen on; the held-out split is the
last 10 %. Losses are in nats per character.

``shakespeare_char`` is the study's task; ``python_char`` (a few modules of the Python
standard library's source, which every machine has) the smoke tests'.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

import torch

from ..models.charlm import FACTORIZE, CharTransformer, LMShape, check_lm_rank, lm_training_flops
from .base import Task, extra_fields, register_task

if TYPE_CHECKING:
    from ..core.protocol import Protocol, RunConfig

LN2 = math.log(2.0)
LM_METRICS = {
    "val_loss": "mean cross-entropy per held-out character (nats), the corpus's last 10 %; "
                "during training on eval_samples windows, at the end on all of it",
    "tune_loss": "the same on the tuning slice (the training split's last val_size "
                 "characters), where learning rates are chosen",
    "train_loss": "mean over the steps since the last evaluation of the batch's mean "
                  "cross-entropy (nats)",
    "lr": "the learning rate of the evaluation's step",
}
#: The legacy record layout's names of protocol fields (schema lm-1).
_LEGACY = {"steps": "iters", "batch_size": "batch_size", "lr": "lr", "min_lr": "min_lr",
           "warmup_steps": "warmup_steps", "beta1": "beta1", "beta2": "beta2",
           "weight_decay": "weight_decay", "grad_clip": "grad_clip", "val_size": "tune_chars",
           "eval_every": "eval_every", "eval_samples": "eval_windows"}


def min_lr_for(lr: float) -> float:
    """nanoGPT's rule of thumb for the cosine's floor: a tenth of the peak rate."""
    return lr / 10


def lm_protocol(**changes) -> "Protocol":
    """nanoGPT's ``train_shakespeare_char`` settings at its CPU size (batch 12, 2,000 steps,
    cosine decay over all of them, no dropout), with ``changes``. The legacy names ``iters``,
    ``tune_chars`` and ``eval_windows`` are accepted for ``steps``, ``val_size`` and
    ``eval_samples``."""
    from ..core.protocol import Protocol
    legacy = {v: k for k, v in _LEGACY.items()}
    changes = {legacy.get(k, k): v for k, v in changes.items()}
    base = dict(epochs=None, steps=2000, batch_size=12, optimizer="adamw", lr=1e-3,
                min_lr=1e-4, warmup_steps=100, beta1=0.9, beta2=0.99, weight_decay=0.1,
                grad_clip=1.0, schedule="cosine_nanogpt", val_size=0, eval_every=250,
                eval_samples=100)
    return Protocol(**{**base, **changes})


#: What smoke mode shrinks the character task to (CI, tests): a text every Python has, a tiny
#: model, a few steps.
SMOKE_SIZES = {"n_layer": 1, "n_head": 2, "d_model": 16, "block_size": 16, "batch_size": 4,
               "iters": 12, "tune_chars": 4000, "eval_every": 6, "eval_windows": 8}
#: The task a smoke run of a character task runs instead, and each task's corpus.
TASKS_SMOKE = {"shakespeare_char": "python_char"}
TASKS_CORPUS = {"shakespeare_char": "tinyshakespeare", "python_char": "python_stdlib"}


@lru_cache(maxsize=None)
def _vocab_size(corpus: str, root) -> int:
    from .text import read_corpus
    return len(set(read_corpus(corpus, root)))


@dataclass(frozen=True)
class CharLM(Task):
    """A character corpus modelled by nanoGPT's transformer (module doc)."""
    corpus: str = "tinyshakespeare"

    @property
    def default_protocol(self) -> "Protocol":
        return lm_protocol()

    def at_rate(self, run: "RunConfig", lr: float) -> "RunConfig":
        """The rate and the cosine's floor with it (:func:`min_lr_for`)."""
        return run.replace(lr=lr, min_lr=min_lr_for(lr))

    # -- the model --------------------------------------------------------------------------
    def check_shape(self, shape) -> LMShape:
        if shape is None:
            return LMShape(vocab_size=65) if self.corpus == "tinyshakespeare" else \
                LMShape(vocab_size=_vocab_size(self.corpus, None))
        if isinstance(shape, dict):
            shape = LMShape(**shape)
        if not isinstance(shape, LMShape):
            raise ValueError(f"the shape of task {self.name!r} is an LMShape (or a dict of "
                             f"its fields), got {shape!r}")
        return shape

    def shape_label(self, shape) -> str:
        return (f"L{shape.n_layer}-H{shape.n_head}-D{shape.d_model}-T{shape.block_size}"
                f"-V{shape.vocab_size}")

    def check_rank(self, rank: int, shape, targets, method) -> None:
        check_lm_rank(rank, shape.d_model)

    def max_rank(self, shape) -> int:
        return shape.d_model

    def factorize(self, run: "RunConfig") -> str:
        """The legacy name of the run's target set: "none" for the dense model."""
        return "none" if run.method == "full" else run.targets

    def init_seed(self, run: "RunConfig") -> int:
        """The seed a run's model is drawn from: its own."""
        return run.seed

    def build(self, run: "RunConfig") -> CharTransformer:
        """The run's model, drawn from :meth:`init_seed` without touching the global
        generator."""
        from ..methods import METHODS
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.init_seed(run))
            model = CharTransformer(run.shape, self.factorize(run), run.rank,
                                    run.init or "lora", method=run.method)
        METHODS[run.method].start(model, run)
        METHODS[run.method].prepare(model, run.options)
        return model

    def smoke(self, shape, protocol: "Protocol"):
        """A one-block model of width 16 on the Python standard library's source (which every
        machine has), 12 steps of 4 windows of 16 characters, at the protocol's rate."""
        from dataclasses import replace
        task = TASKS_SMOKE.get(self.name, self.name)
        vocab = _vocab_size(TASKS_CORPUS[task], None)
        s = SMOKE_SIZES
        tiny = LMShape(s["n_layer"], s["n_head"], s["d_model"], s["block_size"], vocab)
        return task, tiny, replace(protocol, steps=s["iters"], batch_size=s["batch_size"],
                                   val_size=s["tune_chars"], eval_every=s["eval_every"],
                                   eval_samples=s["eval_windows"],
                                   warmup_steps=min(protocol.warmup_steps, 2))

    # -- data -------------------------------------------------------------------------------
    def prepare(self, root=None) -> None:
        from .text import corpus_path
        corpus_path(self.corpus, root)

    def load(self, protocol: "Protocol", root=None, device="cpu"):
        from .text import read_corpus, split_text
        return split_text(read_corpus(self.corpus, root), protocol.val_size, self.corpus)

    # -- training ---------------------------------------------------------------------------
    def to_device(self, data, device):
        """The corpus stays on the CPU: windows are drawn there (the same on every device)
        and moved with each batch."""
        return data

    def param_groups(self, model, protocol: "Protocol") -> list[dict]:
        """nanoGPT's groups: tensors of ≥ 2 dimensions (matrices, embeddings) decay, the
        LayerNorms' weights do not."""
        from ..training.lm import decay_mask
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        mask = decay_mask(named)
        return [{"params": [p for (_, p), d in zip(named, mask) if d],
                 "weight_decay": protocol.weight_decay},
                {"params": [p for (_, p), d in zip(named, mask) if not d], "weight_decay": 0.0}]

    def batches(self, run: "RunConfig", data):
        """nanoGPT's random windows, from a generator of the run's own (seed-paired runs see
        the same windows, whatever trains beside them)."""
        from ..training.lm import batch_generator, get_batch
        gen = batch_generator(run.seed)
        for _ in range(run.protocol.total_steps()):
            yield get_batch(data.train, run.shape.block_size, run.protocol.batch_size, gen)

    def evaluate(self, model, data, protocol: "Protocol", final: bool = False) -> dict:
        from ..training.lm import windows
        block = model.shape.block_size
        n = None if final else protocol.eval_samples
        device = next(model.parameters()).device
        out = {}
        was = model.training
        model.eval()
        with torch.no_grad():
            for split in ("val", "tune"):
                tokens = getattr(data, split)
                if len(tokens) <= block:
                    continue
                x, y = (t.to(device) for t in windows(tokens, block, n))
                total = 0.0
                for i in range(0, len(x), 128):
                    total += self.loss(model(x[i:i + 128]), y[i:i + 128]).item() * len(x[i:i + 128])
                out[f"{split}_loss"] = total / len(x)
        model.train(was)
        return out

    def evaluate_many(self, forward, run: "RunConfig", data, final: bool = False) -> list[dict]:
        """:meth:`evaluate` of stacked models at once: ``forward(x)`` gives every model's
        logits (M, N, T, vocab) on the same windows."""
        import torch.nn.functional as F
        from ..training.lm import windows
        block, vocab = run.shape.block_size, run.shape.vocab_size
        n = None if final else run.protocol.eval_samples
        out = None
        for split in ("val", "tune"):
            tokens = getattr(data, split)
            if len(tokens) <= block:
                continue
            x, y = windows(tokens, block, n)
            total = None
            for i in range(0, len(x), 128):
                logits = forward(x[i:i + 128])                         # (M, n, T, V)
                m = logits.shape[0]
                yb = y[i:i + 128].to(logits.device).reshape(1, -1).expand(m, -1)
                ce = F.cross_entropy(logits.reshape(m, -1, vocab).transpose(1, 2), yb,
                                     reduction="none").mean(1).double() * len(x[i:i + 128])
                total = ce if total is None else total + ce
            out = out or [{} for _ in range(len(total))]
            for k in range(len(total)):
                out[k][f"{split}_loss"] = (total[k] / len(x)).item()
        return out or []

    # -- costs ------------------------------------------------------------------------------
    def parameters(self, run: "RunConfig") -> dict[str, int]:
        """Trainable parameters: ``total``, ``matrices`` (the blocks' projections) and
        ``nanogpt`` (total without the position embedding, what nanoGPT prints)."""
        model = self.build(run)
        trainable = {n: p.numel() for n, p in model.named_parameters() if p.requires_grad}
        total = sum(trainable.values())
        matrices = sum(v for n, v in trainable.items() if n.startswith("blocks.")
                       and n.rsplit(".", 2)[-2] in model.blocks[0].shape_names)
        return {"total": total, "matrices": matrices,
                "nanogpt": total - trainable.get("wpe.weight", 0)}

    def training_flops(self, run: "RunConfig") -> int:
        """6·(matmul parameters) + attention per token; a method that counts its own layers'
        multiply-adds (:meth:`~lowrank_helpers.methods.Method.training_macs`: ReLoRA, SLTrain,
        AdaLoRA) by its count; a dense method with a rank (GaLore) counts as dense (its
        projections' SVDs every few steps are not counted)."""
        from ..methods import METHODS, Method
        m = METHODS[run.method]
        if type(m).training_macs is not Method.training_macs:    # the method counts its own
            return lm_training_flops(run.shape, self.factorize(run), run.rank,
                                     macs=lambda d_in, d_out: m.training_macs(d_in, d_out,
                                                                              run.rank))
        dense = not m.factorized
        return lm_training_flops(run.shape, "none" if dense else self.factorize(run),
                                 None if dense else run.rank)

    def record_columns(self, record: dict, run: "RunConfig") -> dict:
        """The language-model study's names: the config flat (shape fields, the protocol's
        under their first names), the final losses in nats and bits and the sample, the step
        a run diverged at, parameters, FLOPs per token, tokens, seconds, tokens per second."""
        from ..training.lm import LN2
        c, cost = record["config"], record.get("cost") or {}
        final = dict(record.get("final") or {})
        for k in [k for k in final if k.endswith("_loss")]:
            final.setdefault(k.replace("_loss", "_bits"),
                             final[k] / LN2 if final[k] is not None else None)
        p = run.protocol
        tokens = p.total_steps() * p.batch_size * run.shape.block_size
        seconds, stack = record.get("wall_time"), cost.get("stack_size") or 1
        return {**{k: v for k, v in c.items() if k not in ("protocol", "rank", "init", "seed")},
                **c["protocol"], **final, "parameters": record["parameters"]["total"],
                "diverged_iter": record.get("diverged"),
                "training_flops_per_token": cost.get("training_flops_per_sample"),
                "tokens": tokens, "seconds": seconds,
                "tokens_per_second": tokens * stack / seconds if seconds else None,
                "label": run.label}

    # -- ids --------------------------------------------------------------------------------
    def canonical(self, run: "RunConfig", seed: bool = True, model: bool = True) -> dict:
        """The language-model study's first record layout (schema lm-1), which its shipped
        ids hash: corpus, shape, factorize, rank, init, seed and the protocol under its old
        names; a field it lacks (another method, options, a protocol field nanoGPT's protocol
        leaves at its default) is added only where it is set."""
        fz = self.factorize(run)
        d = {"corpus": self.corpus, **asdict(run.shape)}
        if model:
            d.update(factorize=fz, rank=run.rank if fz != "none" else None,
                     init=run.init if fz != "none" else None)
            if run.method not in ("full", "lora"):
                d["method"] = run.method
        d["seed"] = run.seed if seed else None
        runs, proto = extra_fields(run, self.default_protocol, skip=tuple(_LEGACY))
        d["protocol"] = {new: getattr(run.protocol, old) for old, new in _LEGACY.items()}
        d["protocol"].update(proto)
        if model:
            d.update(runs)
        return d

    def to_config(self, run: "RunConfig") -> dict:
        """Schema lm-1: the id layout itself (:meth:`canonical`)."""
        return self.canonical(run)

    def from_config(self, d: dict) -> dict:
        """A schema lm-1 ``config`` as a run's arguments."""
        d = dict(d)
        shape = LMShape(**{k: d.pop(k) for k in asdict(LMShape())})
        proto = dict(d.pop("protocol"))
        legacy = {v: k for k, v in _LEGACY.items()}
        protocol = lm_protocol(**{legacy.get(k, k): v for k, v in proto.items()})
        fz = d.pop("factorize")
        method = d.pop("method", "full" if fz == "none" else "lora")
        d.pop("corpus")
        return {"task": self.name, "method": method, "shape": shape, "protocol": protocol,
                "targets": None if fz == "none" else fz, "rank": d.pop("rank"),
                "init": d.pop("init"), "seed": d.pop("seed"), "options": d.pop("options", {}),
                **d}

    def name_of(self, run: "RunConfig") -> str:
        fz = self.factorize(run)
        from ..methods import METHODS
        fixed = not METHODS[run.method].takes_init()   # its init is the method's, not named
        model = "dense" if fz == "none" else \
            f"{fz}-r{run.rank:03d}" + ("" if fixed else f"-{run.init}")
        if run.method not in ("full", "lora"):
            model = f"{run.method}-{model}"
        return f"{self.corpus}-{model}-d{run.shape.d_model}-lr{run.protocol.lr:g}-s{run.seed}"

    def label_of(self, run: "RunConfig") -> str:
        fz = self.factorize(run)
        if fz == "none":
            return f"dense d={run.shape.d_model}"
        from ..methods import METHODS
        m = METHODS[run.method]
        if not m.takes_init():                          # its init is the method's own
            return f"{m.label}: {fz} r={run.rank}"
        label = f"{fz} r={run.rank} ({run.init} init)"
        return label if run.method == "lora" else f"{m.label}: {label}"


register_task(CharLM("shakespeare_char", "tiny-shakespeare", LM_METRICS,
                     targets={k: v for k, v in FACTORIZE.items() if k != "none"},
                     default_targets="both", score="val_loss", higher_is_better=False,
                     entry="iter", selection=(("tune_loss", -1),), corpus="tinyshakespeare"))
register_task(CharLM("python_char", "Python standard-library source", LM_METRICS,
                     targets={k: v for k, v in FACTORIZE.items() if k != "none"},
                     default_targets="both", score="val_loss", higher_is_better=False,
                     entry="iter", selection=(("tune_loss", -1),), corpus="python_stdlib"))
