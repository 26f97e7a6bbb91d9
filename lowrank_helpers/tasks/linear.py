"""Students of a linear teacher: where no spurious minimum exists, does B·A find the best
rank-r matrix?

A dense teacher W (d × d) with chosen singular values σ_1 ≥ σ_2 ≥ … (flat, power law or
exponential; random singular vectors; ‖W‖²_F = d, so outputs have unit variance) maps
x ~ N(0, I) to y = Wx. A student, the run's method in the one layer (B·A of rank r, or a dense
W), learns it by squared error from fresh samples. Its population loss is exactly
E‖(W − BA)x‖²/d = ‖W − BA‖²_F/d, and no rank-r matrix does better than the tail
Σ_{i>r} σ_i²/d (Eckart & Young, 1936): the :func:`floor`. A student at the floor says the
optimizer and the init find what rank r allows.

One task per spectrum (``linear_flat``, ``linear_power``, ``linear_exponential``); the shape is
d. The protocol is the language-model study's AdamW (β2 0.99, the cosine to lr/10) without
warm-up, weight decay or clipping, batches of 256 fresh samples for 2,000 steps. A run's
samples come from its seed (runs of one seed see the same samples), its init from the seed
too. Metric: ``val_loss``, the population loss, computed from the weights (no samples).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import torch

from .base import Task, extra_fields, register_task

if TYPE_CHECKING:
    from ..core.protocol import Protocol, RunConfig

#: Singular-value profiles σ_i (i = 1…n), before scaling to ‖W‖²_F = d.
SPECTRA = {
    "flat": lambda i: torch.ones_like(i),
    "power": lambda i: i ** -1.0,                     # σ_i ∝ 1/i
    "exponential": lambda i: torch.exp(-i / 8.0),     # σ_i ∝ e^(−i/8)
}
LINEAR_METRICS = {
    "val_loss": "the population loss ‖W − BA‖²_F / d (the mean squared error per output on "
                "x ~ N(0, I)), computed from the weights",
    "train_loss": "mean over the steps since the last evaluation of the batch's mean squared "
                  "error",
    "lr": "the learning rate of the evaluation's step",
}


def teacher(kind: str, d: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A d×d teacher with spectrum ``kind`` and ‖W‖²_F = d, and its singular values
    (float64)."""
    if kind not in SPECTRA:
        raise ValueError(f"unknown spectrum {kind!r}; valid: {', '.join(SPECTRA)}")
    gen = torch.Generator().manual_seed(seed)
    s = SPECTRA[kind](torch.arange(1, d + 1, dtype=torch.float64))
    s = s * math.sqrt(d / (s ** 2).sum())
    u, _ = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))
    return u @ torch.diag(s) @ v.T, s


def floor(s: torch.Tensor, rank: int) -> float:
    """The best rank-r loss Σ_{i>r} σ_i² / d (Eckart–Young)."""
    return float((s[rank:] ** 2).sum() / len(s))


def linear_protocol(**changes) -> "Protocol":
    """The students' protocol (module doc), with ``changes``."""
    from .chars import lm_protocol
    base = dict(steps=2000, batch_size=256, lr=1e-2, min_lr=1e-3, warmup_steps=0,
                weight_decay=0.0, grad_clip=0.0, eval_every=None)
    return lm_protocol(**{**base, **changes})


@dataclass
class Teachers:
    """A task's teachers, drawn on first use for each d (a run's shape): W in ``dtype`` on
    ``device`` (as the students train), its singular values in float64."""
    spectrum: str
    seed: int = 0
    device: str | torch.device = "cpu"
    dtype: torch.dtype = torch.float32

    def __post_init__(self):
        self._drawn: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def __call__(self, d: int) -> tuple[torch.Tensor, torch.Tensor]:
        if d not in self._drawn:
            w, s = teacher(self.spectrum, d, self.seed)
            self._drawn[d] = (w.to(self.device, self.dtype), s)
        return self._drawn[d]

    def to(self, device) -> "Teachers":
        return Teachers(self.spectrum, self.seed, device, self.dtype)


@dataclass(frozen=True)
class LinearTeacher(Task):
    """Students of a linear teacher with singular values ``spectrum`` (module doc)."""
    spectrum: str = "flat"
    teacher_seed: int = 0

    @property
    def default_protocol(self) -> "Protocol":
        return linear_protocol()

    def at_rate(self, run: "RunConfig", lr: float) -> "RunConfig":
        return run.replace(lr=lr, min_lr=lr / 10)

    def check_shape(self, shape) -> int:
        shape = 128 if shape is None else shape
        if isinstance(shape, bool) or not isinstance(shape, int) or shape < 1:
            raise ValueError(f"the shape of task {self.name!r} is d, an int ≥ 1, got {shape!r}")
        return shape

    def max_rank(self, shape) -> int:
        return shape

    def check_rank(self, rank: int, shape, targets, method) -> None:
        if not method.linear:
            raise ValueError(f"method {method.name!r} is not a linear layer: the population "
                             f"loss of task {self.name!r} (from the weights) holds only for "
                             "linear students")
        if method.factorized and rank > shape:
            raise ValueError(f"rank {rank} is above d = {shape}: B·A would not restrict W")

    def build(self, run: "RunConfig") -> torch.nn.Module:
        """The one layer, the run's method's, drawn from the run's seed (global generator
        untouched)."""
        from ..methods import METHODS, LayerSpec
        m = METHODS[run.method]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(run.seed)
            layer = m.layer(LayerSpec("w", run.shape, run.shape, bias=False), run.rank,
                            run.init or m.own_init)
        m.start(layer, run)
        m.prepare(layer, run.options)
        return layer

    def smoke(self, shape, protocol: "Protocol"):
        from dataclasses import replace
        return self.name, 16, replace(protocol, steps=50, batch_size=64)

    def prepare(self, root=None) -> None:
        """Nothing to fetch: the teacher is drawn."""

    def load(self, protocol: "Protocol", root=None, device="cpu") -> Teachers:
        return Teachers(self.spectrum, self.teacher_seed, device)

    def batches(self, run: "RunConfig", data: Teachers):
        """Fresh x ~ N(0, I) from a generator of the run's seed, and y = Wx."""
        gen = torch.Generator().manual_seed(run.seed)
        w, _ = data(run.shape)
        for _ in range(run.protocol.total_steps()):
            x = torch.randn(run.protocol.batch_size, run.shape, generator=gen).to(w)
            yield x, x @ w.T

    def loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return (out - y).pow(2).mean()

    def _population(self, product: torch.Tensor, data: Teachers) -> torch.Tensor:
        """‖W − M‖²_F / d per model, from each model's outputs on the identity, (…, d, d) =
        Mᵀ."""
        w, _ = data(product.shape[-1])
        diff = product.double() - w.T.double().to(product.device)
        return diff.pow(2).sum(dim=(-2, -1)) / w.shape[0]

    def evaluate(self, model, data: Teachers, protocol: "Protocol", final: bool = False) -> dict:
        p = next(model.parameters())
        with torch.no_grad():
            eye = torch.eye(model.in_features, device=p.device, dtype=p.dtype)
            return {"val_loss": self._population(model(eye), data).item()}

    def evaluate_many(self, forward, run: "RunConfig", data: Teachers,
                      final: bool = False) -> list[dict]:
        w, _ = data(run.shape)
        eye = torch.eye(run.shape, device=w.device, dtype=w.dtype)
        return [{"val_loss": v} for v in self._population(forward(eye), data).tolist()]

    def parameters(self, run: "RunConfig") -> dict[str, int]:
        return {"total": sum(p.numel() for p in self.build(run).parameters()
                             if p.requires_grad)}

    def training_flops(self, run: "RunConfig") -> int:
        """6 FLOPs per weight per sample (forward and backward)."""
        return 6 * self.parameters(run)["total"]

    def canonical(self, run: "RunConfig", seed: bool = True, model: bool = True) -> dict:
        d = {"task": self.name, "d": run.shape}
        if model:
            d.update(method=run.method, rank=run.rank, init=run.init,
                     **extra_fields(run, self.default_protocol)[0])   # options, where set
        d["seed"] = run.seed if seed else None
        d["protocol"] = asdict(run.protocol)
        return d

    def to_config(self, run: "RunConfig") -> dict:
        return self.canonical(run)

    def from_config(self, d: dict) -> dict:
        from ..core.protocol import Protocol
        return {"task": d["task"], "method": d["method"], "shape": d["d"], "rank": d["rank"],
                "init": d["init"], "seed": d["seed"], "options": d.get("options", {}),
                "protocol": Protocol(**d["protocol"])}

    def name_of(self, run: "RunConfig") -> str:
        model = "dense" if run.rank is None else f"r{run.rank:03d}-{run.init}"
        return f"{self.name}-{run.method}-{model}-d{run.shape}-lr{run.protocol.lr:g}-s{run.seed}"

    def label_of(self, run: "RunConfig") -> str:
        return "dense" if run.rank is None else f"r={run.rank} ({run.init} init)"


for _kind in SPECTRA:
    register_task(LinearTeacher(f"linear_{_kind}", f"a linear teacher ({_kind} spectrum)",
                                LINEAR_METRICS, targets={"w": "the one layer"},
                                default_targets="w", score="val_loss", higher_is_better=False,
                                entry="iter", selection=(("val_loss", -1),), spectrum=_kind))
