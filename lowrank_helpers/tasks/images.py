"""Image classification by an MLP: Fashion-MNIST (the original study's task) and MNIST.

Images are flattened to vectors and classified by the PyTorch quickstart's MLP (784 → 512 →
512 → 10, ReLU), whose linear layers ``fc1`` … ``fcN`` are the method's targets (``"all"``;
the dense-head control keeps the output layer dense). The data are held in memory as tensors
(:mod:`lowrank_helpers.tasks.images_data`): the training split's last ``val_size`` images are the
validation split; the test split is read after every epoch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from . import images_data as data_mod
from ..models.mlp import DEFAULT_WIDTHS, MLP, count_parameters, forward_flops_per_sample
from .base import Task, register_task

if TYPE_CHECKING:
    from ..core.protocol import Protocol, RunConfig

#: per-epoch metrics of a classification task and what they mean
CLASSIFICATION_METRICS = {
    "test_accuracy": "top-1 accuracy on the test split, after the epoch",
    "test_loss": "mean cross-entropy per test sample (nats)",
    "train_loss": "mean over the epoch's steps of the batch's mean cross-entropy (nats), "
                  "during training",
    "val_accuracy": "top-1 accuracy on the validation split (with val_size > 0)",
    "val_loss": "mean cross-entropy per validation sample (nats), with val_size > 0",
}


@dataclass(frozen=True)
class ImageClassification(Task):
    """Images flattened to vectors, classified by an MLP with dense or factorized layers."""
    dataset: str = "fashion_mnist"           # in lowrank_helpers.tasks.images_data.DATASETS
    input_size: int = 784
    classes: int | None = 10
    hidden_sizes: tuple = DEFAULT_WIDTHS[1:-1]  # the PyTorch quickstart's MLP

    # -- the model --------------------------------------------------------------------------
    @property
    def default_widths(self) -> tuple:
        return self.widths_with(self.hidden_sizes)

    def widths_with(self, hidden_sizes) -> tuple:
        """The model's widths with these hidden sizes: input, hidden..., classes."""
        return (self.input_size, *hidden_sizes, self.classes)

    def check_widths(self, widths) -> tuple:
        """``widths`` as a tuple (None: the default), or ValueError saying what is accepted."""
        if widths is None:
            return self.default_widths
        widths = tuple(widths) if isinstance(widths, (list, tuple)) else widths
        ok = (isinstance(widths, tuple) and len(widths) >= 2
              and all(isinstance(w, int) and not isinstance(w, bool) and w >= 1 for w in widths))
        if not ok or widths[0] != self.input_size or widths[-1] != self.classes:
            raise ValueError(f"widths of task {self.name!r} must be positive integers from "
                             f"{self.input_size} (the input) to {self.classes} (the classes), "
                             f"got {widths!r}")
        return widths

    check_shape = check_widths

    def shape_label(self, shape) -> str:
        return "-".join(map(str, shape))

    def check_rank(self, rank: int, shape, targets, method) -> None:
        from ..core.protocol import check_rank_fits
        check_rank_fits(rank, shape, method.dense_output)

    def build(self, run: "RunConfig") -> MLP:
        """The run's model, initialised from ``run.seed`` without touching the global RNG."""
        from ..methods import METHODS
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(run.seed)
            model = MLP(run.method, run.rank, run.init, run.widths)
        METHODS[run.method].start(model, run)
        METHODS[run.method].prepare(model, run.options)
        return model

    def smoke(self, shape, protocol: "Protocol"):
        """The same task and model on 1,024 training and 512 test images, 2 epochs."""
        from ..core.config import SMOKE
        return self.name, shape, protocol.smoke(SMOKE["epochs"], SMOKE["train_subset"],
                                                SMOKE["test_subset"])

    # -- data -------------------------------------------------------------------------------
    def load(self, protocol: "Protocol", root=None, device="cpu") -> data_mod.Data:
        return data_mod.load_data(self.dataset, root, device, protocol.train_subset,
                                  protocol.test_subset, val_size=protocol.val_size)

    def prepare(self, root=None) -> None:
        data_mod.prepare_data(self.dataset, root)

    # -- training ---------------------------------------------------------------------------
    def steps_per_epoch(self, protocol: "Protocol", data) -> int:
        return math.ceil(len(data.X_train) / protocol.batch_size)

    def batches(self, run: "RunConfig", data):
        """The epochs' batches in order (or shuffled by a generator of the run's seed), as the
        plain loop and the stacked engine draw them
        (:func:`~lowrank_helpers.training.loop.epoch_batches`)."""
        from ..training.loop import epoch_batches
        protocol = run.protocol
        gen = torch.Generator().manual_seed(run.seed)
        per_epoch = self.steps_per_epoch(protocol, data)
        epochs = math.ceil(protocol.total_steps(per_epoch) / per_epoch)
        for _ in range(epochs):
            yield from epoch_batches(data.X_train, data.y_train, protocol.batch_size,
                                     protocol.shuffle, gen)

    def evaluate(self, model, data, protocol: "Protocol", final: bool = False) -> dict:
        from ..training.loop import evaluate
        out = dict(zip(("test_accuracy", "test_loss"),
                       evaluate(model, data.X_test, data.y_test)))
        if len(data.y_val):
            out.update(zip(("val_accuracy", "val_loss"), evaluate(model, data.X_val, data.y_val)))
        return out

    def evaluate_many(self, forward, run: "RunConfig", data, final: bool = False) -> list[dict]:
        """:meth:`evaluate` of stacked models at once: ``forward(x)`` gives every model's
        logits (M, N, classes) on the same images."""
        import torch.nn.functional as F
        out = None
        for split, X, y in (("test", data.X_test, data.y_test), ("val", data.X_val, data.y_val)):
            if not len(y):
                continue
            correct = loss = None
            for i in range(0, len(X), 1024):
                logits = forward(X[i:i + 1024])                            # (M, n, C)
                m = logits.shape[0]
                yb = y[i:i + 1024].to(logits.device).expand(m, -1)
                lo = F.cross_entropy(logits.transpose(1, 2), yb, reduction="none").sum(1)
                co = (logits.argmax(2) == yb).sum(1)
                loss, correct = (lo, co) if loss is None else (loss + lo, correct + co)
            out = out or [{} for _ in range(len(loss))]
            for k in range(len(loss)):
                out[k][f"{split}_accuracy"] = correct[k].item() / len(X)
                out[k][f"{split}_loss"] = loss[k].item() / len(X)
        return out or []

    # -- costs ------------------------------------------------------------------------------
    def parameters(self, run: "RunConfig") -> dict[str, int]:
        """Trainable parameters per linear layer and in total: the formula for a plain
        method, counted on the built model for one that changes it (freezes a factor)."""
        from ..methods import METHODS, Method
        if type(METHODS[run.method]) is Method:
            return count_parameters(run.method, run.rank, run.widths)
        from ..models.mlp import parameter_counts
        return parameter_counts(self.build(run))

    def training_flops(self, run: "RunConfig") -> int:
        """Matrix-product FLOPs to train on one sample (2 per multiply-add): every layer's
        forward, input gradient and weight gradient as its method counts them
        (:meth:`~lowrank_helpers.methods.Method.training_macs`: ReLoRA's frozen W, SLTrain's
        formed W and AdaLoRA's Λ included), less the first layer's input gradient
        (:meth:`~lowrank_helpers.methods.Method.input_macs`), which the image does not need.
        For dense and B·A layers this equals
        :func:`~lowrank_helpers.models.mlp.training_flops_per_sample`; :meth:`forward_flops`
        still counts a method's layers as B·A of its rank."""
        from ..methods import METHODS
        from ..models.mlp import layer_ranks
        m, widths = METHODS[run.method], run.widths
        ranks = layer_ranks(run.method, run.rank, widths)
        layers = list(zip(widths[:-1], widths[1:], ranks))
        macs = sum(METHODS["full"].training_macs(i, o, None) if r is None else
                   m.training_macs(i, o, r) for i, o, r in layers)
        i, o, r = layers[0]
        first = METHODS["full"].input_macs(i, o, None) if r is None else m.input_macs(i, o, r)
        return 2 * (macs - first)

    def forward_flops(self, run: "RunConfig") -> int:
        return forward_flops_per_sample(run.method, run.rank, run.widths)

    # -- ids --------------------------------------------------------------------------------
    def canonical(self, run: "RunConfig", seed: bool = True, model: bool = True) -> dict:
        """What the ids hash: every field, flat, numbers normalized (schema 1's layout, with
        the task under its old key ``dataset``). Fields added after schema 1 (protocol fields
        of a later ``since``, the method's options) appear only when they differ from their
        default, so that every shipped id stays valid."""
        from ..core.settings import settings_of
        d = {"dataset": run.task, "widths": list(run.widths)}
        if model:
            d.update(method=run.method, rank=run.rank, init=run.init)
            d.update(sorted(run.options.items()))  # added after schema 1: only when set
            if run.targets not in (None, self.default_targets):
                d["targets"] = run.targets
        if seed:
            d["seed"] = run.seed
        for f in settings_of(type(run.protocol)):
            value = getattr(run.protocol, f.name)
            if f.metadata["since"] == 1 or value != f.default:
                d[f.name] = value
        return d

    def to_config(self, run: "RunConfig") -> dict:
        """Schema 2: the run with its protocol nested (the rescaling, as schema 2 stored it,
        under ``rescale``; other options under ``options``)."""
        d = {"task": run.task, "method": run.method, "rank": run.rank, "init": run.init,
             "widths": list(run.widths), "seed": run.seed, "protocol": run.protocol.to_dict()}
        options = dict(run.options)
        if "rescale" in options:
            d["rescale"] = options.pop("rescale")
        if options:
            d["options"] = options
        if run.targets not in (None, self.default_targets):
            d["targets"] = run.targets
        return d

    def from_config(self, d: dict) -> dict:
        """Schema 2 (nested protocol) or schema 1 (flat, ``dataset``)."""
        from ..core.protocol import PROTOCOL_FIELDS, Protocol
        d = dict(d)
        if "protocol" in d:
            protocol = Protocol(**d.pop("protocol"))
        else:
            protocol = Protocol(**{k: d.pop(k) for k in PROTOCOL_FIELDS if k in d})
            d["task"] = d.pop("dataset", "fashion_mnist")
        options = dict(d.pop("options", {}) or {})
        if "rescale" in d:
            options["rescale"] = d.pop("rescale")
        return {**d, "protocol": protocol, "options": options}

    def name_of(self, run: "RunConfig") -> str:
        model = (run.method if run.rank is None
                 else f"{run.method}-r{run.rank:03d}-{run.init}")
        for k, v in sorted(run.options.items()):
            model += f"-c{v:g}" if k == "rescale" else f"-{k}{v:g}"
        if tuple(run.widths) != self.default_widths:         # a narrower (or wider) model
            model += "-w" + "x".join(map(str, run.widths))
        return f"{run.task}-{model}-s{run.seed}"

    def label_of(self, run: "RunConfig") -> str:
        from ..methods import model_label
        label = model_label(run.method, run.rank, run.init)
        if tuple(run.widths) != self.default_widths:
            label += ", widths " + "-".join(map(str, run.widths))
        c = run.options.get("rescale", 1.0)
        return label if c == 1 else f"{label}, A×{c:g}, B÷{c:g}"


register_task(ImageClassification("fashion_mnist", "Fashion-MNIST", CLASSIFICATION_METRICS,
                                  targets={"all": ()}, default_targets=None,
                                  dataset="fashion_mnist"))
register_task(ImageClassification("mnist", "MNIST", CLASSIFICATION_METRICS,
                                  targets={"all": ()}, default_targets=None, dataset="mnist"))
