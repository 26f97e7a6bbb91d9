"""The notebooks' typed configs, built from their parameters cells.

Each config is a frozen dataclass of settings (:mod:`lowrank_helpers.core.settings`); the study's
and the summary's also hold a :class:`~lowrank_helpers.core.protocol.Protocol`, whose fields are
notebook parameters of their own (``epochs = 100``, ``lr = 1e-3``) without being repeated here.
Unknown, ill-typed and out-of-range values are rejected with a message that says what is
accepted, since papermill on its own only warns about a misspelled notebook parameter.
"""
from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, field, fields, replace
from typing import Any, Iterable

from .devices import check_device
from ..models.layers import INITS, check_rank
from ..methods import METHODS, ORIGINAL_METHODS, init_methods, method_for_init
from ..models.mlp import DEFAULT_WIDTHS, RANKS
from .protocol import PROTOCOL_FIELDS, Protocol, RunConfig
from .settings import all_of, check_settings, distinct, each, positive, setting, settings_of
from ..tasks import TASKS

#: What ``smoke=True`` shrinks a study to (the only place smoke sizes are set). Smoke runs write
#: into a ``smoke`` subfolder of the results and figure directories, never beside real results.
SMOKE = {"epochs": 2, "train_subset": 1024, "test_subset": 512, "max_ranks": 2, "max_seeds": 1,
         "subdir": "smoke",
         # the theory notebook: draws at init, images measured, epochs before the spectra
         "theory_draws": 2, "theory_samples": 128, "theory_epochs": 1}
#: Where the notebooks (which run in notebooks/) read and write run records by default.
RESULTS_DIR = "../results"
HIDDEN_SIZES = DEFAULT_WIDTHS[1:-1]
#: Setting this environment variable to 1 turns smoke mode on in every notebook (tests and CI).
SMOKE_ENV = "LOWRANK_SMOKE"
#: Marks, in a notebook's ``_before`` set, that its parameters were checked once already.
_CHECKED = "<parameters checked>"


def smoke_dir(path: str) -> str:
    """``path/smoke`` (idempotent): where smoke mode writes instead of ``path``."""
    return path if os.path.basename(os.path.normpath(path)) == SMOKE["subdir"] else \
        os.path.join(path, SMOKE["subdir"])


def smoke_protocol(protocol: Protocol) -> Protocol:
    return protocol.smoke(SMOKE["epochs"], SMOKE["train_subset"], SMOKE["test_subset"])


def _rank_check(name, value):
    check_rank(value)


def _not_empty(name, values):
    if not values:
        raise ValueError(f"{name} must list at least one value")


def _suggest(unknown: Iterable[str], valid: list[str]) -> str:
    hints = []
    for k in unknown:
        close = difflib.get_close_matches(k, valid, n=1)
        hints.append(f"{k!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    return ", ".join(hints)


class NotebookParams:
    """Base of the notebooks' typed configs: their flat parameters are the config's own
    settings and, for a config with a ``protocol`` field, the protocol's fields."""

    @classmethod
    def _has_protocol(cls) -> bool:
        return any(f.name == "protocol" for f in fields(cls))

    @classmethod
    def parameter_names(cls) -> list[str]:
        own = [f.name for f in settings_of(cls) if f.metadata["param"]]
        return own + (list(PROTOCOL_FIELDS) if cls._has_protocol() else [])

    @classmethod
    def from_params(cls, params: dict[str, Any]):
        """Build from a dict of notebook parameters; unknown names raise with a suggestion."""
        valid = cls.parameter_names()
        unknown = [k for k in params if k not in valid]
        if unknown:
            raise ValueError(f"unknown parameter(s) {_suggest(unknown, valid)}; valid "
                             f"parameters: {', '.join(valid)}")
        mine = {f.name for f in settings_of(cls)}
        own = {k: v for k, v in params.items() if k in mine}   # a setting the config declares
        if cls._has_protocol():                                  # ... is never the protocol's
            own["protocol"] = task_protocol(own.get("task", "fashion_mnist"),
                                            {k: v for k, v in params.items() if k not in mine})
        return cls(**own)

    @classmethod
    def from_notebook(cls, namespace: dict[str, Any], before: set):
        """Build from the notebook's globals: the declared parameter names, as the parameters
        cell (and papermill's injected cell) set them. ``before``: the names that existed
        before the parameters cell. The first time, any other new public name is an unknown
        parameter (a misspelling, or papermill injecting one the notebook lacks); later runs
        of the cell, after later cells defined names of their own, read the declared names
        only. ``$LOWRANK_SMOKE=1`` turns smoke mode on (how tests run the notebooks).
        """
        declared = cls.parameter_names()
        if _CHECKED not in before:
            unknown = [k for k in namespace
                       if not k.startswith("_") and k not in before and k not in declared]
            if unknown:
                raise ValueError(f"unknown parameter(s) {_suggest(unknown, declared)}; valid "
                                 f"parameters: {', '.join(declared)} (a name left from an "
                                 "earlier run of the cell? `del` it or restart the kernel)")
        params = {k: namespace[k] for k in declared if k in namespace}
        if os.environ.get(SMOKE_ENV) == "1" and "smoke" in declared:
            params["smoke"] = True
        cfg = cls.from_params(params)
        before.add(_CHECKED)
        return cfg

    def to_dict(self) -> dict[str, Any]:
        """The notebook parameters (lists as lists), e.g. for papermill."""
        own = {f.name: getattr(self, f.name) for f in settings_of(type(self))
               if f.metadata["param"]}
        if self._has_protocol():
            own.update(self.protocol.to_dict())
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in own.items()}


def task_protocol(task: str, given: dict) -> Protocol:
    """The protocol of ``task`` with ``given`` fields: a field given at the reference
    protocol's default (as the notebooks' parameters cells spell every field out) takes the
    task's own default instead (nanoGPT's for the character transformer)."""
    from .settings import normalize
    base = TASKS[task].default_protocol if task in TASKS else Protocol()
    ref = {f.name: f for f in settings_of(Protocol)}
    changes = {}
    for k, v in given.items():
        if k not in ref:
            continue
        try:
            same = normalize(k, ref[k].metadata["kind"], v) == ref[k].default
        except (TypeError, ValueError):
            same = False   # a bad value: the protocol's own check names it
        if not same:
            changes[k] = v
    return replace(base, **changes)


def refuse_smoke_overrides(cfg, smoke_values: dict) -> None:
    """Smoke mode replaces settings with its own small values (``smoke_values``); one given a
    value other than its default (and other than smoke's) would be dropped without a word, so
    it is refused instead."""
    from .settings import default_of, normalize
    by_name = {f.name: f for f in settings_of(type(cfg))}
    clash = [k for k, v in smoke_values.items()
             if getattr(cfg, k) not in (default_of(by_name[k]),
                                        normalize(k, by_name[k].metadata["kind"], v))]
    if clash:
        given = ", ".join(f"{k}={getattr(cfg, k)!r}" for k in clash)
        raise ValueError(f"smoke mode sets {', '.join(clash)} itself ({given} would be "
                         f"ignored): drop {'it' if len(clash) == 1 else 'them'} or drop smoke")


def _task_shape(task: str, hidden_sizes):
    """A study's model shape: the MLP's widths from its hidden sizes, else the task's own."""
    t = TASKS[task]
    return t.widths_with(hidden_sizes) if hasattr(t, "widths_with") else t.check_shape(None)


def _task_setting(help="the task (data and model family)"):
    return setting("fashion_mnist", "str", help, choices=lambda: tuple(TASKS))




@dataclass(frozen=True)
class StudyConfig(NotebookParams):
    """The parameters of the study notebook, checked: a grid of models (methods × ranks) under
    one protocol, for several seeds. See the notebook's parameters cell."""
    task: str = _task_setting()
    methods: tuple = setting(ORIGINAL_METHODS, "list[str]", "methods to compare",
                             choices=lambda: tuple(METHODS), check=all_of(_not_empty, distinct))
    ranks: tuple = setting(RANKS, "list[int]", "ranks r of the factorized layers",
                           check=all_of(each(_rank_check), distinct))
    init: str | None = setting(None, "str|None", "init of the methods that take one (None: "
                               "their own)", choices=lambda: tuple(sorted(INITS)))
    targets: str | None = setting(None, "str|None", "the layers the method builds (None: the "
                                  "task's default set; the transformer: both, attn or mlp)")
    hidden_sizes: tuple = setting(HIDDEN_SIZES, "list[int]", "hidden widths of the MLP",
                                  check=each(positive))
    seeds: tuple = setting((0, 1, 2), "list[int]", "one run per seed",
                           check=all_of(_not_empty, distinct))
    device: str = setting("auto", "str", "auto (CUDA, else MPS, else CPU), cpu, cuda, cuda:N "
                          "or mps", check=lambda name, v: check_device(v))
    engine: bool = setting(True, "bool", "train stacked in lockstep (False: the plain "
                           "one-model loop)")
    results_dir: str = setting(RESULTS_DIR, "str", "one JSON record per run; a run whose "
                               "record exists is not redone")
    data_root: str | None = setting(None, "str|None", "data directory (None: $LOWRANK_DATA "
                                    "or ~/.cache/lowrank_helpers/data)")
    smoke: bool = setting(False, "bool", "tiny data, 2 epochs, 2 ranks, 1 seed; writes into "
                          "results_dir/smoke")
    protocol: Protocol = field(default_factory=Protocol)

    def __post_init__(self):
        check_settings(self)
        if not isinstance(self.protocol, Protocol):
            raise TypeError(f"protocol must be a Protocol, got {self.protocol!r}")
        factorized = [m for m in self.methods if METHODS[m].takes_rank]
        if factorized and not self.ranks:
            raise ValueError(f"ranks is empty but methods {factorized} need at least one "
                             "rank")
        takers = [m for m in self.methods if METHODS[m].takes_init()]
        if self.init is not None and not takers:
            raise ValueError(f"init {self.init!r} applies to method(s) "
                             f"{', '.join(init_methods())} only; methods "
                             f"{', '.join(self.methods)} ignore it")
        object.__setattr__(self, "_shape", _task_shape(self.task, self.hidden_sizes))
        if self.smoke:  # the one place where smoke mode shrinks the study
            task, shape, protocol = TASKS[self.task].smoke(self._shape, self.protocol)
            for name, value in (("task", task), ("_shape", shape), ("protocol", protocol),
                                ("ranks", self.ranks[:SMOKE["max_ranks"]]),
                                ("seeds", self.seeds[:SMOKE["max_seeds"]]),
                                ("results_dir", smoke_dir(self.results_dir))):
                object.__setattr__(self, name, value)
        self.runs()  # every run's own checks (widths, init, ...) fail here, before any training

    @property
    def widths(self):
        """The models' shape: the MLP's widths (its hidden sizes between the task's input and
        classes), the transformer's LMShape (the task's)."""
        return self._shape

    def runs(self) -> list[RunConfig]:
        """Every run of the study: a dense method once per seed, a factorized one per rank and
        seed, each under the study's protocol."""
        runs = []
        for seed in self.seeds:
            for method in self.methods:
                m = METHODS[method]
                init = self.init if m.takes_init() else None
                for rank in (self.ranks if m.takes_rank else [None]):
                    runs.append(RunConfig(self.task, method, rank, init, seed=seed,
                                          shape=self.widths, protocol=self.protocol,
                                          targets=self.targets))
        return runs


@dataclass(frozen=True)
class SummaryConfig(NotebookParams):
    """The parameters of the summary notebook: which records to draw (one task, widths and
    protocol), where figures go."""
    task: str = _task_setting("the task whose records are drawn")
    results_dir: str = setting(RESULTS_DIR, "str", "where the run records are")
    img_dir: str = setting("../img", "str", "where the figures are written")
    hidden_sizes: tuple = setting(HIDDEN_SIZES, "list[int]", "hidden widths of the models drawn",
                                  check=each(positive))
    smoke: bool = setting(False, "bool", "draw the records of a smoke batch")
    protocol: Protocol = field(default_factory=Protocol)

    def __post_init__(self):
        check_settings(self)
        object.__setattr__(self, "_shape", _task_shape(self.task, self.hidden_sizes))
        if self.smoke:
            task, shape, protocol = TASKS[self.task].smoke(self._shape, self.protocol)
            for name, value in (("task", task), ("_shape", shape), ("protocol", protocol),
                                ("results_dir", smoke_dir(self.results_dir)),
                                ("img_dir", smoke_dir(self.img_dir))):
                object.__setattr__(self, name, value)

    @property
    def protocol_id(self) -> str:
        """The ``protocol_id`` of the records drawn."""
        return RunConfig(self.task, shape=self._shape, protocol=self.protocol).protocol_id

    def study(self, **kwargs) -> StudyConfig:
        """The study whose records this summary draws."""
        cfg = StudyConfig(task=self.task, hidden_sizes=self.hidden_sizes,
                          results_dir=self.results_dir, protocol=self.protocol, **kwargs)
        return cfg


@dataclass(frozen=True)
class ExplorerConfig(NotebookParams):
    """The parameters of the explorer notebook."""
    results_dir: str = setting(RESULTS_DIR, "str", "where the run records are")

    def __post_init__(self):
        check_settings(self)


@dataclass(frozen=True)
class TheoryConfig(NotebookParams):
    """The parameters of the theory notebook."""
    task: str = _task_setting("images whose statistics feed the measurements")
    ranks: tuple = setting(RANKS, "list[int]", "ranks",
                           check=all_of(_not_empty, each(_rank_check), distinct))
    inits: tuple = setting(("lora", "default", "matched", "he", "spectral"), "list[str]",
                           "inits compared", choices=lambda: tuple(sorted(INITS)),
                           check=all_of(_not_empty, distinct))
    seeds: tuple = setting(tuple(range(10)), "list[int]", "draws of each model at init",
                           check=all_of(_not_empty, distinct))
    n_samples: int = setting(1024, "int", "training images the measurements use",
                             check=positive)
    spectrum_rank: int = setting(32, "int", "rank of the models whose spectra are compared",
                                 check=_rank_check)
    train_epochs: int = setting(100, "int", "epochs before the second spectrum",
                                check=positive)
    results_dirs: tuple = setting((RESULTS_DIR, f"{RESULTS_DIR}/inits"), "list[str]",
                                  "records of the init experiment")
    spectra_dir: str = setting(f"{RESULTS_DIR}/spectra", "str", "records of the spectra "
                               "models (with their singular values after training)")
    img_dir: str = setting("../img", "str", "where the figures are written")
    data_root: str | None = setting(None, "str|None", "data directory")
    smoke: bool = setting(False, "bool", "tiny sizes, for tests and CI")
    train_subset: int | None = setting(None, "int|None", "set by smoke", param=False)
    test_subset: int | None = setting(None, "int|None", "set by smoke", param=False)

    def __post_init__(self):
        check_settings(self)
        if self.smoke:
            object.__setattr__(self, "seeds", self.seeds[:SMOKE["theory_draws"]])
            object.__setattr__(self, "ranks", self.ranks[:SMOKE["max_ranks"] + 1])
            object.__setattr__(self, "n_samples", min(self.n_samples, SMOKE["theory_samples"]))
            object.__setattr__(self, "train_epochs", SMOKE["theory_epochs"])
            object.__setattr__(self, "train_subset", SMOKE["train_subset"])
            object.__setattr__(self, "test_subset", SMOKE["test_subset"])
            object.__setattr__(self, "results_dirs", tuple(smoke_dir(d) for d in self.results_dirs))
            object.__setattr__(self, "spectra_dir", smoke_dir(self.spectra_dir))
            object.__setattr__(self, "img_dir", smoke_dir(self.img_dir))

    @property
    def spectra_protocol(self) -> Protocol:
        """The reference protocol for ``train_epochs`` (smoke: on the smoke data)."""
        return replace(Protocol(), epochs=self.train_epochs, train_subset=self.train_subset,
                       test_subset=self.test_subset)

    def spectra_runs(self) -> list[RunConfig]:
        """The models whose spectra are compared: the dense MLP and every init at
        ``spectrum_rank``, seed 0."""
        runs = [RunConfig(self.task, "full", protocol=self.spectra_protocol)]
        for init in self.inits:
            method, name = method_for_init(init)
            runs.append(RunConfig(self.task, method, self.spectrum_rank, name,
                                  protocol=self.spectra_protocol))
        return runs
