"""The fair comparison: every model's learning rate chosen on a validation split, then seeds.

For each model (method × rank × init, plus controls) and each tuned protocol (SGD with
momentum, AdamW; both shuffled, cosine-decayed, with 5,000 training images held out):

1. **search**: seed 0 at every learning rate of a log grid (1, 3, 10, 30, ... × 10^k); the
   rate with the best final validation accuracy is chosen; a choice at the grid's edge adds
   the next rate beyond it, until the choice lies inside (or ``max_extend`` rates were added
   on that side, which the table then flags);
2. **seeds**: the chosen rate is retrained with seeds 1 … ``seeds`` − 1 (seed 0 is the search
   run itself);
3. **close calls**: where two models the prose compares (a model against a dense baseline, or
   two inits at one rank) lie within ``close_points`` of each other in mean *validation*
   accuracy over their first ``seeds`` seeds, both get ``close_seeds``.

The choice is recomputed from the records each time (nothing but records is stored), so any
table here regenerates from ``results/tuned``. Test accuracy decides nothing: not the rate,
not the number of seeds (:func:`tuned_table` uses exactly the seeds this rule gives, whatever
other records lie beside them); it enters only the rows of chosen rates.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import pandas as pd

from ..core.config import RESULTS_DIR, SMOKE, NotebookParams, refuse_smoke_overrides, smoke_dir
from ..core.devices import check_device
from ..tasks import TASKS
from ..methods import METHODS, method_for_init
from ..models.mlp import RANKS
from ..core.protocol import Protocol, RunConfig
from ..core.results import has_record, load_records, replicates
from .search import choices, ladder_index, ladder_lr, search_and_seed
from ..core.settings import all_of, check_settings, distinct, each, positive, setting

#: The tuned protocols: what each optimizer trains under (lr is each model's own).
TUNED_PROTOCOLS = {
    "sgd": Protocol(epochs=10, batch_size=256, optimizer="sgd", lr=0.1, momentum=0.9,
                    schedule="cosine", warmup_steps=200, shuffle=True, val_size=5000),
    "adamw": Protocol(epochs=10, batch_size=256, optimizer="adamw", lr=1e-3, weight_decay=0.01,
                      schedule="cosine", warmup_steps=200, shuffle=True, val_size=5000),
}
#: Each optimizer's starting grid of learning rates (extended at an edge).
GRIDS = {"sgd": (1e-2, 3e-2, 1e-1, 3e-1), "adamw": (3e-4, 1e-3, 3e-3, 1e-2)}
#: The dense baselines and the factorized inits of the comparison.
DENSE = ("full", "full_he")
TUNED_INITS = ("lora", "default", "matched", "he", "spectral", "spectral_he")
#: Controls: factorized hidden layers with a dense output layer at the ranks where a
#: factorized head confines the logits; A → cA, B → B/c at a few c.
HEAD_RANKS = (1, 2, 4, 8)
HEAD_INITS = ("lora", "default", "he")
RESCALES = (0.25, 0.5, 2.0, 4.0)
RESCALE_MODELS = (("lora", 4), ("lora", 32), ("he", 4), ("he", 32))
#: The convergence check: these models (an init and a rank, or a dense method) retuned at
#: ``budget_epochs`` around their choice at the study's epochs.
BUDGET_MODELS = (("full", None), ("full_he", None), ("lora", 8), ("default", 8), ("he", 8),
                 ("he", 64))
#: Where the records go (from notebooks/).
TUNED_DIR = f"{RESULTS_DIR}/tuned"


def model_key(run: RunConfig) -> str:
    """Every field but the seed and the learning rate: the runs of one model's search."""
    return run.model_key


def _check_optimizers(name, values):
    unknown = [v for v in values if v not in TUNED_PROTOCOLS]
    if unknown:
        raise ValueError(f"{name}: unknown optimizer(s) {unknown}; tuned protocols: "
                         f"{', '.join(TUNED_PROTOCOLS)}")


def _check_inits(name, values):
    from ..models.layers import INITS
    unknown = [v for v in values if v not in INITS]
    if unknown:
        raise ValueError(f"{name}: unknown init(s) {unknown}; valid: {', '.join(sorted(INITS))}")


def _check_dense(name, values):
    dense = [m for m, spec in METHODS.items() if not spec.factorized]
    unknown = [v for v in values if v not in dense]
    if unknown:
        raise ValueError(f"{name}: {unknown} are not dense methods; dense methods: "
                         f"{', '.join(dense)}")


@dataclass(frozen=True)
class TunedConfig(NotebookParams):
    """The tuned study (the parameters of notebooks/tuned.ipynb and of ``lowrank-study
    tune``): which models, under which optimizers, how many seeds."""
    task: str = setting("fashion_mnist", "str", "the task", choices=lambda: tuple(TASKS))
    optimizers: tuple = setting(tuple(TUNED_PROTOCOLS), "list[str]", "tuned protocols to run",
                                check=all_of(_check_optimizers, distinct))
    ranks: tuple = setting(RANKS, "list[int]", "ranks of the factorized models",
                           check=all_of(each(positive), distinct))
    inits: tuple = setting(TUNED_INITS, "list[str]", "factorized inits compared",
                           check=all_of(_check_inits, distinct))
    dense: tuple = setting(DENSE, "list[str]", "dense baselines",
                           check=all_of(_check_dense, distinct))
    controls: bool = setting(True, "bool", "also the dense-head and rescaling controls")
    seeds: int = setting(3, "int", "seeds of each chosen setting", check=positive)
    close_seeds: int = setting(5, "int", "seeds where two compared models are close",
                               check=positive)
    close_points: float = setting(0.5, "float", "how close (points of mean validation "
                                  "accuracy) is close", check=positive)
    max_extend: int = setting(3, "int", "rates added beyond each edge of the grid at most",
                              check=positive)
    epochs: int | None = setting(None, "int|None", "epochs (None: the tuned protocols')",
                                 check=positive)
    train_subset: int | None = setting(None, "int|None", "train on the first n images only",
                                       check=positive)
    test_subset: int | None = setting(None, "int|None", "test on the first n images only",
                                      check=positive)
    val_size: int | None = setting(None, "int|None", "validation images (None: the tuned "
                                   "protocols' 5,000)", check=positive)
    budget_epochs: int | None = setting(30, "int|None", "the convergence check's epochs "
                                        "(None: no check)", check=positive)
    workers: int = setting(1, "int", "CPU worker processes", check=positive)
    device: str = setting("auto", "str", "auto, cpu, cuda, cuda:N or mps",
                          check=lambda name, v: check_device(v))
    results_dir: str = setting(TUNED_DIR, "str", "one record per run; recorded runs are "
                               "not redone")
    data_root: str | None = setting(None, "str|None", "data directory")
    reference_dirs: tuple = setting((RESULTS_DIR, f"{RESULTS_DIR}/inits"), "list[str]",
                                    "reference-protocol records drawn beside the tuned ones")
    img_dir: str = setting("../img", "str", "where the figures are written")
    smoke: bool = setting(False, "bool", "tiny data, 2 ranks, 1 epoch, 2 seeds; writes into "
                          "results_dir/smoke")

    def __post_init__(self):
        check_settings(self)
        if self.smoke:  # the one place where smoke mode shrinks the tuned study
            sizes = {"epochs": 1, "train_subset": SMOKE["train_subset"],
                     "test_subset": SMOKE["test_subset"], "seeds": 2, "close_seeds": 3,
                     "max_extend": 1, "budget_epochs": 2}
            refuse_smoke_overrides(self, sizes)
            for name, value in (("ranks", self.ranks[:SMOKE["max_ranks"]]), *sizes.items(),
                                ("results_dir", smoke_dir(self.results_dir)),
                                ("img_dir", smoke_dir(self.img_dir))):
                object.__setattr__(self, name, value)
        for opt in self.optimizers:
            self.protocol(opt)  # a bad size fails here, before any training
            self.models(opt)    # ... and a rank no layer can hold

    def protocol(self, optimizer: str) -> Protocol:
        p = TUNED_PROTOCOLS[optimizer]
        changes = {k: getattr(self, k) for k in ("epochs", "train_subset", "test_subset",
                                                  "val_size") if getattr(self, k) is not None}
        if self.train_subset is not None and "val_size" not in changes:
            changes["val_size"] = min(p.val_size, self.train_subset // 4)
        if changes.get("epochs") is not None:
            steps = math.ceil((self.train_subset or 60000) / p.batch_size)
            changes["warmup_steps"] = min(p.warmup_steps, steps)
        return replace(p, **changes)

    def models(self, optimizer: str) -> list[RunConfig]:
        """The comparison's models (seed 0, at the protocol's nominal lr)."""
        p = self.protocol(optimizer)
        runs = [RunConfig(self.task, m, protocol=p) for m in self.dense]
        for init in self.inits:
            method, name = method_for_init(init)
            runs += [RunConfig(self.task, method, r, name, protocol=p) for r in self.ranks]
        return runs

    def budget_models(self, optimizer: str) -> list[RunConfig]:
        """The convergence check's models at ``budget_epochs`` (seed 0, nominal lr)."""
        if not self.budget_epochs:
            return []
        p = replace(self.protocol(optimizer), epochs=self.budget_epochs)
        runs = []
        for name, rank in BUDGET_MODELS:
            if rank is None and name in self.dense:
                runs.append(RunConfig(self.task, name, protocol=p))
            elif rank is not None and name in self.inits and rank in self.ranks:
                method, init = method_for_init(name)
                runs.append(RunConfig(self.task, method, rank, init, protocol=p))
        return runs

    def control_models(self, optimizer: str) -> list[RunConfig]:
        """The dense-head and rescaling controls (seed 0, nominal lr)."""
        if not self.controls:
            return []
        p = self.protocol(optimizer)
        runs = [RunConfig(self.task, "densehead", r, init, protocol=p)
                for init in HEAD_INITS if init in self.inits
                for r in HEAD_RANKS if r in self.ranks]
        for init, r in RESCALE_MODELS:
            if init not in self.inits or r not in self.ranks:
                continue
            method, name = method_for_init(init)
            runs += [RunConfig(self.task, method, r, name, protocol=p, rescale=c)
                     for c in RESCALES]
        return runs


def _records(cfg: TunedConfig, seeds: int | None = None) -> pd.DataFrame:
    """The study's records (those of seeds below ``seeds`` only, where given)."""
    from pathlib import Path
    if not Path(cfg.results_dir).is_dir():
        return pd.DataFrame()
    runs = replicates(load_records(cfg.results_dir))
    return runs if seeds is None or runs.empty else runs[runs.seed < seeds]


def _keyed(runs: pd.DataFrame) -> pd.DataFrame:
    return runs.assign(key=runs.model_key if len(runs) else [])


def _train(runs: list[RunConfig], cfg: TunedConfig, what: str, progress: bool) -> int:
    """Train the runs of ``runs`` without a record; return how many those were."""
    from .reference import run_records
    todo = [r for r in {r.run_id: r for r in runs}.values()
            if not has_record(r, cfg.results_dir)]
    if runs:
        print(f"{what}: {len(runs)} runs")
        run_records(runs, cfg.results_dir, data_root=cfg.data_root, device=cfg.device,
                    progress=progress, workers=cfg.workers)
    return len(todo)


def _stable_seeds(models, cfg, seeds, what, progress, start=None) -> None:
    """The one search and seed rule (:func:`~lowrank_helpers.studies.search.search_and_seed`) for
    ``models``, each starting at its optimizer's grid or at ``start[key]``."""
    start = start or {}
    grids = {m.model_key: tuple(start.get(m.model_key, GRIDS[m.optimizer])) for m in models}
    search_and_seed(models, grids, lambda runs, w: _train(runs, cfg, w, progress),
                    lambda: _records(cfg), cfg.max_extend, seeds, what)


def split_budget(table: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(the study's rows, the convergence check's): the study's epochs are those of most rows."""
    if table.empty:
        return table, table
    main = table.epochs == table.epochs.mode().iloc[0]
    return table[main], table[~main]


def close_models(table: pd.DataFrame, points: float) -> set[str]:
    """Keys of the models the prose compares that lie within ``points`` of each other in
    mean final *validation* accuracy (never test: the seed count must not depend on the split
    the answers are read on): each factorized model against each dense baseline of its
    optimizer, and the inits at one rank (each against that rank's best)."""
    close = set()
    table = split_budget(table)[0]
    for _, part in table.groupby("optimizer"):
        dense = part[part["rank"].isna()]
        fact = part[part["rank"].notna()]
        for _, d in dense.iterrows():
            near = fact[(fact.mean_val - d.mean_val).abs() * 100 < points]
            if len(near):
                close |= set(near.key) | {d.key}
        plain = fact[(fact.rescale == 1)
                     & ~fact.method.map(lambda m: METHODS[m].dense_output)]
        for _, at in plain.groupby("rank"):
            best = at.mean_val.max()
            near = at[(best - at.mean_val) * 100 < points]
            if len(near) > 1:
                close |= set(near.key)
    return close


def tuned_table(runs: pd.DataFrame, seeds: int | None = None, close_seeds: int | None = None,
                close_points: float | None = None) -> pd.DataFrame:
    """One row per model and optimizer: the chosen rate, the rates tried, the edge flag, and
    the chosen rate's seeds (test accuracy mean, std, n; final train loss; validation
    accuracy). ``runs``: records of the tuned study (any directory). The seeds are those of
    the seed rule (defaults: :class:`TunedConfig`'s): seeds 0 … ``seeds`` − 1, and up to
    ``close_seeds`` for the models :func:`close_models` finds close on the validation split
    at ``seeds`` seeds; records of other seeds are left out."""
    d = TunedConfig.__dataclass_fields__
    seeds = d["seeds"].default if seeds is None else seeds
    close_seeds = d["close_seeds"].default if close_seeds is None else close_seeds
    close_points = d["close_points"].default if close_points is None else close_points
    runs = _keyed(replicates(runs))
    if runs.empty:
        return pd.DataFrame()
    table = _table(runs[runs.seed < seeds])
    if close_seeds > seeds and len(table):
        close = close_models(table, close_points)
        table = _table(runs[(runs.seed < seeds)
                            | (runs.key.isin(close) & (runs.seed < close_seeds))])
    return table


def _mean(values) -> float:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else math.nan


def _table(runs: pd.DataFrame) -> pd.DataFrame:
    """:func:`tuned_table` of the keyed records ``runs`` (all of their seeds)."""
    if runs.empty:
        return pd.DataFrame()
    rows = []
    for key, c in choices(runs).items():
        part = runs[(runs.key == key) & (runs.lr == c.lr)]
        first = part.iloc[0]
        acc = part.final_test_accuracy
        late = [h[-1]["val_accuracy"] - h[max(0, (3 * len(h)) // 4 - 1)]["val_accuracy"]
                for h in part.history if h and h[-1].get("val_accuracy") is not None]
        rows.append({"key": key, "optimizer": first.optimizer, "method": first.method,
                     "rank": first["rank"], "init": first.init, "rescale": first.rescale,
                     "model": first.model, "params": first.params, "lr": c.lr,
                     "tried": " ".join(f"{x:g}" for x in c.tried), "edge": c.edge,
                     "unstable": " ".join(f"{x:g}" for x in c.unstable),
                     "seeds": len(part), "mean_test": acc.mean(),
                     "std_test": acc.std(ddof=1) if len(part) > 1 else math.nan,
                     "mean_val": part.final_val_accuracy.mean(),
                     "train_loss": part.final_train_loss.mean(),
                     "epoch1_test": part.epoch1_test_accuracy.mean(),
                     "epoch1_val": _mean([h[0].get("val_accuracy") for h in part.history
                                          if h]),
                     "late_val_gain": sum(late) / len(late) if late else math.nan,
                     "epochs": int(first.epochs), "diverged": int(part.diverged_epoch.notna().sum()),
                     "test_values": list(acc), "epoch1_values": list(part.epoch1_test_accuracy)})
    return pd.DataFrame(rows)


def plan_jobs(cfg: TunedConfig) -> list:
    """The tuned study as jobs of the batch runner: one per optimizer (their searches, seeds,
    close calls and convergence checks are independent of each other)."""
    from ..batch.plan import Job
    return [Job(opt, replace(cfg, optimizers=(opt,))) for opt in cfg.optimizers]


def run_tuning(cfg: TunedConfig, progress: bool = True) -> pd.DataFrame:
    """All steps, for the comparison's models first, then the controls, the close calls'
    extra seeds (a choice at which a seed diverges moves to the next best rate, whose seeds
    are trained in turn) and the convergence check (:data:`BUDGET_MODELS` retuned at
    ``budget_epochs`` around their choice); resumes from the records in ``cfg.results_dir``.
    Returns :func:`tuned_table` of the records."""
    from ..tasks import TASKS
    TASKS[cfg.task].prepare(cfg.data_root)
    for group, models_of in (("models", cfg.models), ("controls", cfg.control_models)):
        models = [m for opt in cfg.optimizers for m in models_of(opt)]
        if models:
            _stable_seeds(models, cfg, range(1, cfg.seeds), f"{group}: seeds of the chosen "
                          "rates", progress)
    table = tuned_table(_records(cfg), cfg.seeds, cfg.seeds)  # the first `seeds` seeds only
    close = close_models(table, cfg.close_points)
    every = {model_key(m): m for opt in cfg.optimizers
             for m in cfg.models(opt) + cfg.control_models(opt)}
    extra = [every[k] for k in close if k in every]
    if cfg.close_seeds > cfg.seeds and extra:
        _stable_seeds(extra, cfg, range(1, cfg.close_seeds),
                      f"close calls: {len(extra)} models to {cfg.close_seeds} seeds", progress)
    long = [m for opt in cfg.optimizers for m in cfg.budget_models(opt)]
    if long:  # the convergence check: retuned around the study's choice
        table = tuned_table(_records(cfg), cfg.seeds, cfg.close_seeds, cfg.close_points)
        picked = dict(zip(table.key, table.lr))  # each model's choice under the seed rule
        start = {}
        for m in long:
            short = picked.get(model_key(m.replace(epochs=cfg.protocol(m.optimizer).epochs)))
            if short is not None:
                k = ladder_index(short)
                start[model_key(m)] = (ladder_lr(k - 1), short, ladder_lr(k + 1))
        _stable_seeds(long, cfg, range(1, cfg.seeds), f"convergence check at "
                      f"{cfg.budget_epochs} epochs: seeds", progress, start)
    return tuned_table(_records(cfg), cfg.seeds, cfg.close_seeds, cfg.close_points)
