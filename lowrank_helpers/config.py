"""Typed configs: one training run (RunConfig) and one notebook's study (StudyConfig).

Both reject unknown or ill-typed values with a message that says what is accepted, since
papermill on its own only warns about a misspelled notebook parameter.
"""
from __future__ import annotations

import difflib
import hashlib
import json
import os
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Iterable

from .data import check_dataset
from .layers import check_init, check_rank
from .models import DEFAULT_WIDTHS, METHODS, check_method, method_init

OPTIMIZERS = ("sgd", "adamw")
#: What ``smoke=True`` shrinks a study to (the only place smoke sizes are set). Smoke runs write
#: into a ``smoke`` subfolder of the results and figure directories, never beside real results.
SMOKE = {"epochs": 2, "train_subset": 1024, "test_subset": 512, "max_ranks": 2, "max_seeds": 1,
         "subdir": "smoke"}
#: Setting this environment variable to 1 turns smoke mode on in every notebook (tests and CI).
SMOKE_ENV = "LOWRANK_SMOKE"


def smoke_dir(path: str) -> str:
    """``path/smoke`` (idempotent): where smoke mode writes instead of ``path``."""
    return path if os.path.basename(os.path.normpath(path)) == SMOKE["subdir"] else \
        os.path.join(path, SMOKE["subdir"])


def _kind_ok(value, kind: str) -> bool:
    def is_int(v):
        return isinstance(v, int) and not isinstance(v, bool)
    checks = {
        "str": lambda v: isinstance(v, str),
        "int": is_int,
        "float": lambda v: (isinstance(v, (int, float)) and not isinstance(v, bool)),
        "bool": lambda v: isinstance(v, bool),
        "str|None": lambda v: v is None or isinstance(v, str),
        "int|None": lambda v: v is None or is_int(v),
        "list[int]": lambda v: isinstance(v, (list, tuple)) and all(is_int(x) for x in v),
        "list[str]": lambda v: isinstance(v, (list, tuple)) and all(isinstance(x, str) for x in v),
    }
    return checks[kind](value)


def check_kinds(obj, kinds: dict[str, str]) -> None:
    for name, kind in kinds.items():
        value = getattr(obj, name)
        if not _kind_ok(value, kind):
            raise TypeError(f"{name} must be {kind}, got {value!r} ({type(value).__name__})")


def check_positive(**values) -> None:
    for name, value in values.items():
        if value is not None and value <= 0:
            raise ValueError(f"{name} must be > 0, got {value!r}")


def check_optimizer(name: str) -> str:
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; valid optimizers: {', '.join(OPTIMIZERS)}")
    return name


@dataclass(frozen=True)
class TrainConfig:
    """How to train. The defaults are the original study's protocol."""
    epochs: int = 100          # the original trains 100 epochs, test accuracy after each
    lr: float = 1e-3           # plain SGD, lr 1e-3 (the PyTorch quickstart's values)
    batch_size: int = 64
    optimizer: str = "sgd"     # "sgd" or "adamw"
    momentum: float = 0.0      # SGD only
    weight_decay: float = 0.0
    shuffle: bool = False      # the original's training loader is not shuffled

    _KINDS = {"epochs": "int", "lr": "float", "batch_size": "int", "optimizer": "str",
              "momentum": "float", "weight_decay": "float", "shuffle": "bool"}

    def __post_init__(self):
        check_kinds(self, self._KINDS)
        check_positive(epochs=self.epochs, lr=self.lr, batch_size=self.batch_size)
        check_optimizer(self.optimizer)
        if self.momentum < 0 or self.weight_decay < 0:
            raise ValueError("momentum and weight_decay must be >= 0, got "
                             f"{self.momentum!r} and {self.weight_decay!r}")
        if self.optimizer != "sgd" and self.momentum:
            raise ValueError(f"momentum applies to optimizer 'sgd' only, not {self.optimizer!r}")


@dataclass(frozen=True)
class RunConfig(TrainConfig):
    """One training run: a model, a data set, a seed and how to train it."""
    method: str = "full"
    rank: int | None = None
    init: str | None = None    # None: the method's own ("lora" for "lora", "default" otherwise)
    dataset: str = "fashion_mnist"
    seed: int = 0
    widths: tuple = DEFAULT_WIDTHS
    train_subset: int | None = None  # first n samples only (smoke runs)
    test_subset: int | None = None

    _KINDS = {**TrainConfig._KINDS, "method": "str", "rank": "int|None", "init": "str|None",
              "dataset": "str", "seed": "int", "widths": "list[int]",
              "train_subset": "int|None", "test_subset": "int|None"}

    def __post_init__(self):
        super().__post_init__()
        check_method(self.method)
        check_dataset(self.dataset)
        object.__setattr__(self, "widths", tuple(self.widths))
        object.__setattr__(self, "init", method_init(self.method, self.init))
        if self.method != "full":
            check_rank(self.rank)
        elif self.rank is not None:
            raise ValueError(f"method 'full' takes no rank, got rank={self.rank!r}")
        check_positive(train_subset=self.train_subset, test_subset=self.test_subset)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["widths"] = list(self.widths)
        return d

    @property
    def run_id(self) -> str:
        """Short hash of every field: two runs with the same id are the same experiment."""
        blob = json.dumps(self.to_dict(), sort_keys=True)
        return hashlib.sha1(blob.encode()).hexdigest()[:10]

    @property
    def name(self) -> str:
        model = "full" if self.method == "full" else f"{self.method}-r{self.rank:03d}-{self.init}"
        return f"{self.dataset}-{model}-s{self.seed}"

    @property
    def label(self) -> str:
        return "full-rank" if self.method == "full" else f"{self.method} r={self.rank}"

    def train_config(self) -> TrainConfig:
        return TrainConfig(**{f.name: getattr(self, f.name) for f in fields(TrainConfig)})


class NotebookParams:
    """Base of the notebooks' typed configs: built from the names a parameters cell defines."""

    @classmethod
    def parameter_names(cls) -> list[str]:
        return [f.name for f in fields(cls) if f.repr]

    @classmethod
    def from_params(cls, params: dict[str, Any]):
        """Build from a dict of notebook parameters; unknown names raise with a suggestion."""
        valid = cls.parameter_names()
        unknown = [k for k in params if k not in valid]
        if unknown:
            hints = []
            for k in unknown:
                close = difflib.get_close_matches(k, valid, n=1)
                hints.append(f"{k!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
            raise ValueError(f"unknown parameter(s) {', '.join(hints)}; valid parameters: "
                             f"{', '.join(valid)}")
        return cls(**params)

    @classmethod
    def from_notebook(cls, namespace: dict[str, Any], before: Iterable[str]):
        """Build from the names a notebook's parameters cell (and papermill's injected cell)
        defined: every public global that is not in ``before``, the names that existed before.
        ``$LOWRANK_SMOKE=1`` turns smoke mode on (how tests run the notebooks).
        """
        before = set(before)
        params = {k: v for k, v in namespace.items()
                  if not k.startswith("_") and k not in before}
        if os.environ.get(SMOKE_ENV) == "1" and "smoke" in cls.parameter_names():
            params["smoke"] = True
        return cls.from_params(params)

    def to_dict(self) -> dict[str, Any]:
        """The notebook parameters (lists as lists), e.g. for papermill."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()
                if k in self.parameter_names()}


@dataclass(frozen=True)
class StudyConfig(NotebookParams):
    """The parameters of the study notebook, checked. See the notebook's parameters cell."""
    dataset: str = "fashion_mnist"
    methods: tuple = METHODS
    ranks: tuple = (1, 2, 4, 8, 16, 32, 64, 128)
    init: str = "lora"
    hidden_sizes: tuple = (512, 512)
    epochs: int = 100
    batch_size: int = 64
    lr: float = 1e-3
    optimizer: str = "sgd"
    momentum: float = 0.0
    weight_decay: float = 0.0
    shuffle: bool = False
    seeds: tuple = (0, 1, 2)
    device: str = "auto"
    engine: bool = True        # stacked lockstep training (False: the plain one-model loop)
    results_dir: str = "../results"
    data_root: str | None = None
    smoke: bool = False        # tiny data, 2 epochs, 2 ranks, 1 seed; writes into results_dir/smoke
    train_subset: int | None = field(default=None, repr=False)  # set by smoke
    test_subset: int | None = field(default=None, repr=False)

    _KINDS = {"dataset": "str", "methods": "list[str]", "ranks": "list[int]", "init": "str",
              "hidden_sizes": "list[int]", "epochs": "int", "batch_size": "int", "lr": "float",
              "optimizer": "str", "momentum": "float", "weight_decay": "float",
              "shuffle": "bool", "seeds": "list[int]", "device": "str", "engine": "bool",
              "results_dir": "str",
              "data_root": "str|None", "smoke": "bool", "train_subset": "int|None",
              "test_subset": "int|None"}

    def __post_init__(self):
        check_kinds(self, self._KINDS)
        for name in ("methods", "ranks", "seeds", "hidden_sizes"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        check_dataset(self.dataset)
        if not self.methods or len(set(self.methods)) != len(self.methods):
            raise ValueError(f"methods must be distinct names among {METHODS}, got {self.methods}")
        for m in self.methods:
            check_method(m)
        for r in self.ranks:
            check_rank(r)
        if set(self.methods) - {"full"} and not self.ranks:
            raise ValueError("ranks is empty but factorized methods "
                             f"{[m for m in self.methods if m != 'full']} need at least one rank")
        check_init(self.init)
        if not self.seeds:
            raise ValueError("seeds must list at least one seed")
        check_positive(hidden_sizes=min(self.hidden_sizes, default=1))
        from .training import resolve_device  # validates the name; no device is touched
        resolve_device(self.device, check_only=True)
        if self.smoke:  # the one place where smoke mode shrinks the study
            object.__setattr__(self, "epochs", min(self.epochs, SMOKE["epochs"]))
            object.__setattr__(self, "ranks", self.ranks[:SMOKE["max_ranks"]])
            object.__setattr__(self, "seeds", self.seeds[:SMOKE["max_seeds"]])
            object.__setattr__(self, "train_subset", SMOKE["train_subset"])
            object.__setattr__(self, "test_subset", SMOKE["test_subset"])
            object.__setattr__(self, "results_dir", smoke_dir(self.results_dir))
        self.runs()  # every run's own checks (optimizer, lr, ...) fail here, before any training

    @property
    def widths(self) -> tuple:
        return (784, *self.hidden_sizes, 10)

    def runs(self) -> list[RunConfig]:
        """Every run of the study: full-rank once per seed, factorized per method, rank, seed."""
        common = dict(dataset=self.dataset, widths=self.widths, epochs=self.epochs, lr=self.lr,
                      batch_size=self.batch_size, optimizer=self.optimizer,
                      momentum=self.momentum, weight_decay=self.weight_decay,
                      shuffle=self.shuffle, train_subset=self.train_subset,
                      test_subset=self.test_subset)
        runs = []
        for seed in self.seeds:
            for method in self.methods:
                if method == "full":
                    runs.append(RunConfig(method="full", seed=seed, **common))
                    continue
                init = self.init if method == "lora" else None
                runs += [RunConfig(method=method, rank=r, init=init, seed=seed, **common)
                         for r in self.ranks]
        return runs



@dataclass(frozen=True)
class SummaryConfig(NotebookParams):
    """The parameters of the summary notebook: which records to draw, where figures go."""
    dataset: str = "fashion_mnist"
    results_dir: str = "../results"
    img_dir: str = "../img"
    epochs: int = 100          # the protocol whose records are drawn (others are left out)
    lr: float = 1e-3
    batch_size: int = 64
    optimizer: str = "sgd"
    momentum: float = 0.0
    weight_decay: float = 0.0
    shuffle: bool = False
    smoke: bool = False

    _KINDS = {"dataset": "str", "results_dir": "str", "img_dir": "str", "epochs": "int",
              "lr": "float", "batch_size": "int", "optimizer": "str", "momentum": "float",
              "weight_decay": "float", "shuffle": "bool", "smoke": "bool"}

    def __post_init__(self):
        check_kinds(self, self._KINDS)
        check_dataset(self.dataset)
        check_optimizer(self.optimizer)
        if self.smoke:
            object.__setattr__(self, "epochs", min(self.epochs, SMOKE["epochs"]))
            object.__setattr__(self, "results_dir", smoke_dir(self.results_dir))
            object.__setattr__(self, "img_dir", smoke_dir(self.img_dir))

    def record_filter(self) -> dict[str, Any]:
        """Keyword filters for :func:`load_records` that select this protocol's records."""
        return {"dataset": self.dataset, "epochs": self.epochs, "lr": self.lr,
                "batch_size": self.batch_size, "optimizer": self.optimizer,
                "momentum": self.momentum, "weight_decay": self.weight_decay,
                "shuffle": self.shuffle}


@dataclass(frozen=True)
class ExplorerConfig(NotebookParams):
    """The parameters of the explorer notebook."""
    results_dir: str = "../results"

    def __post_init__(self):
        check_kinds(self, {"results_dir": "str"})


@dataclass(frozen=True)
class TheoryConfig(NotebookParams):
    """The parameters of the theory notebook."""
    dataset: str = "fashion_mnist"
    ranks: tuple = (1, 2, 4, 8, 16, 32, 64, 128)
    inits: tuple = ("lora", "default", "matched", "he", "spectral")
    seeds: tuple = tuple(range(10))
    n_samples: int = 1024
    spectrum_rank: int = 32
    train_epochs: int = 100
    results_dirs: tuple = ("../results", "../results/inits")
    img_dir: str = "../img"
    data_root: str | None = None
    smoke: bool = False
    train_subset: int | None = field(default=None, repr=False)  # set by smoke
    test_subset: int | None = field(default=None, repr=False)

    _KINDS = {"dataset": "str", "ranks": "list[int]", "inits": "list[str]", "seeds": "list[int]",
              "n_samples": "int", "spectrum_rank": "int", "train_epochs": "int",
              "results_dirs": "list[str]", "img_dir": "str", "data_root": "str|None",
              "smoke": "bool", "train_subset": "int|None", "test_subset": "int|None"}

    def __post_init__(self):
        from .layers import check_init
        check_kinds(self, self._KINDS)
        for name in ("ranks", "inits", "seeds", "results_dirs"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        check_dataset(self.dataset)
        for r in (*self.ranks, self.spectrum_rank):
            check_rank(r)
        for i in self.inits:
            check_init(i)
        if not self.seeds or not self.ranks or not self.inits:
            raise ValueError("ranks, inits and seeds must each list at least one value")
        check_positive(n_samples=self.n_samples, train_epochs=self.train_epochs)
        if self.smoke:
            object.__setattr__(self, "seeds", self.seeds[:2])
            object.__setattr__(self, "ranks", self.ranks[:SMOKE["max_ranks"] + 1])
            object.__setattr__(self, "n_samples", min(self.n_samples, 128))
            object.__setattr__(self, "train_epochs", 1)
            object.__setattr__(self, "train_subset", SMOKE["train_subset"])
            object.__setattr__(self, "test_subset", SMOKE["test_subset"])
            object.__setattr__(self, "results_dirs", tuple(smoke_dir(d) for d in self.results_dirs))
            object.__setattr__(self, "img_dir", smoke_dir(self.img_dir))
