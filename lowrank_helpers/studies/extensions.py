"""The extensions on one protocol (``lowrank-study extensions``, ``notebooks/extensions.ipynb``):
LoRA+, ReLoRA, AdaLoRA, GaLore, CoLA, LORO and SLTrain on the language-model study's
transformer, nanoGPT's CPU configuration on tiny-shakespeare, each at ``ranks`` of d_model
(part ``lm``), and on the Fashion-MNIST MLP under the tuned study's AdamW protocol at
``mlp_ranks`` (part ``mlp``; its dense and plain B·A rows start from the tuned study's records
of the same runs and are refined as the methods are).

Every model (a method with its options, at a rank) gets the study's one search and seed rule
(:func:`~lowrank_helpers.studies.search.search_and_seed`): seed 0 at every rate of ``lrs``,
extended beyond an edge where the choice sits there, refined around the choice until its
neighbours lie within ``refine`` (1.5, as the baselines were: rungs at most 1.5× apart), then ``seeds``
seeds at the choice, and ``close_seeds`` where the model's 95 % interval overlaps the dense
model's or plain B·A's of its rank (:func:`~lowrank_helpers.reports.extensions.close_calls`;
the baselines keep their own studies' seeds). Each method's other settings are its module's defaults (taken from its
official code, scaled to this run: each module's docstring says which). LoRA+ is run at
λ = 4 and 16; λ = 1 is the LoRA layers themselves.

The dense model and plain B·A are not retrained: the report reads the language-model study's
records (``lm_dir``), trained under the same protocol. Records go to ``results_dir``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import pandas as pd

from ..core.config import _not_empty, refuse_smoke_overrides, smoke_dir
from ..core.results import check_writable
from ..core.settings import all_of, distinct, each, positive, setting
from .lm import LMStudyConfig, _refine_factor, _search_and_seeds, load_lm_records

#: The models compared, by name: (method, options). Tables and figures list them in this order.
EXT_MODELS: dict[str, tuple[str, dict]] = {
    "loraplus4": ("loraplus", {"loraplus_ratio": 4.0}),
    "loraplus16": ("loraplus", {"loraplus_ratio": 16.0}),
    "relora": ("relora", {}),
    "adalora": ("adalora", {}),
    "galore": ("galore", {}),
    "cola": ("cola", {}),
    "loro": ("loro", {}),
    "sltrain": ("sltrain", {}),
}
#: What ``smoke=True`` shrinks the comparison to (besides the LM study's smoke sizes): one
#: method (the one with the most machinery: hooks, penalty, summary), no refinement.
EXT_SMOKE = {"models": ("adalora",), "refine": 0, "mlp_ranks": (4,), "close_seeds": 3}
#: The tasks the comparison can run on.
PARTS = ("lm", "mlp")


def _hidden(name: str):
    """An inherited setting of the language-model study that this comparison does not use:
    kept at its default, neither a notebook parameter nor a flag."""
    f = LMStudyConfig.__dataclass_fields__[name]
    return field(default=f.default, metadata={**f.metadata, "param": False, "flag": False})


@dataclass(frozen=True)
class ExtensionsConfig(LMStudyConfig):
    """The extensions comparison's parameters: the language-model study's (its shape,
    protocol and grid), with the extensions' models, ranks, refinement and folders."""
    ranks: tuple = setting((16, 32, 64), "list[int]", "ranks of every method",
                           check=all_of(_not_empty, distinct, each(positive)))
    refine: float = setting(1.5, "float", "refine each model's grid around its choice until "
                            "its neighbouring rates lie within this factor (0: off; 1.5: as "
                            "the LM study's dense and B·A at ranks 16-64, and the MLP's "
                            "baselines here)",
                            check=_refine_factor)
    models: tuple = setting(tuple(EXT_MODELS), "list[str]", "the methods compared (LoRA+ at "
                            "two ratios)", choices=tuple(EXT_MODELS))
    results_dir: str = setting("../results/extensions", "str", "where records go")
    extra_inits: tuple = _hidden("extra_inits")
    refine_ranks: tuple = _hidden("refine_ranks")
    extra_init_seeds: int = _hidden("extra_init_seeds")
    anchor_seeds: int = _hidden("anchor_seeds")
    narrow_ranks: tuple = _hidden("narrow_ranks")
    partial_rank: int = _hidden("partial_rank")
    svd_ranks: tuple = _hidden("svd_ranks")
    svd_lrs: tuple = _hidden("svd_lrs")
    teacher_ranks: tuple = _hidden("teacher_ranks")
    phases: tuple = _hidden("phases")
    scale_dirs: tuple = _hidden("scale_dirs")
    budget_dir: str | None = _hidden("budget_dir")
    lm_dir: str = setting("../results/shakespeare_char", "str", "the language-model study's "
                          "records: the dense and plain B·A rows")
    close_seeds: int = setting(5, "int", "seeds of a model whose interval overlaps dense's or "
                               "plain B·A's at its rank, after seeds", check=positive)
    train: bool = setting(True, "bool", "train what the records lack (False: read the "
                          "records only, e.g. while the runs train elsewhere)")
    parts: tuple = setting(PARTS, "list[str]", "the tasks compared: lm (the transformer), mlp "
                           "(the Fashion-MNIST MLP under the tuned AdamW protocol)",
                           choices=PARTS)
    mlp_ranks: tuple = setting((8, 32, 128), "list[int]", "ranks of the MLP's methods",
                               check=all_of(_not_empty, distinct, each(positive)))
    mlp_dir: str | None = setting(None, "str|None", "where the MLP's records go (default: "
                                  "results_dir/mlp)")
    tuned_dir: str = setting("../results/tuned", "str", "the tuned study's records: the "
                             "MLP's dense and plain B·A rows")

    def __post_init__(self):
        super().__post_init__()
        if self.mlp_dir is None:
            object.__setattr__(self, "mlp_dir", os.path.join(self.results_dir, "mlp"))
        if self.smoke:
            refuse_smoke_overrides(self, {k: v for k, v in EXT_SMOKE.items() if k != "models"})
            for k, v in EXT_SMOKE.items():
                if k != "models" or self.models == tuple(EXT_MODELS):   # models: a job's own
                    object.__setattr__(self, k, v)                       # are kept
            for k in ("lm_dir", "tuned_dir"):
                object.__setattr__(self, k, smoke_dir(getattr(self, k)))

    def mlp_config(self):
        """The tuned study's config whose AdamW protocol, grid and data the MLP part uses."""
        from .tuned import TunedConfig
        return TunedConfig(optimizers=("adamw",), ranks=self.mlp_ranks, inits=("default",),
                           dense=("full",), controls=False, results_dir=self.mlp_dir,
                           data_root=self.data_root, device=self.device, smoke=self.smoke)


def ext_name(method: str, options: dict | None) -> str | None:
    """The comparison's name (:data:`EXT_MODELS`) of a (method, options), or None if it is
    not one of them (options at their default are left out of a run's, as of these)."""
    from ..methods import check_options
    for name, (m, opts) in EXT_MODELS.items():
        if m == method and check_options(m, opts) == dict(options or {}):
            return name
    return None


def extension_runs(cfg: ExtensionsConfig, vocab: int) -> list:
    """Seed-0 runs of every model at every rank, at the grid's first rate."""
    from ..training.lm import LMRun
    base = LMRun(cfg.corpus, cfg.shape(vocab), protocol=cfg.protocol(cfg.lrs[0]))
    return [base.replace(method=EXT_MODELS[name][0], targets="both", rank=r, init=None,
                         options=EXT_MODELS[name][1])
            for name in cfg.models for r in cfg.ranks]


def run_extensions(cfg: ExtensionsConfig, progress: bool = True) -> pd.DataFrame:
    """Train what the records lack (module doc; with ``cfg.train`` False, nothing) and return
    the records."""
    from pathlib import Path
    from tqdm.auto import tqdm
    from ..tasks.text import read_corpus, split_text
    if not cfg.train:
        return load_lm_records(cfg.results_dir) if Path(cfg.results_dir).is_dir() \
            else pd.DataFrame()
    if "mlp" in cfg.parts:
        check_writable(cfg.mlp_dir)
    if "lm" in cfg.parts:
        check_writable(cfg.results_dir)
        splits = split_text(read_corpus(cfg.corpus, cfg.data_root), cfg.tune_chars, cfg.corpus)
        Path(cfg.results_dir).mkdir(parents=True, exist_ok=True)
        bar = tqdm(desc="extensions (model-steps)", unit="step", disable=not progress)
        try:
            runs = extension_runs(cfg, splits.vocab_size)
            refine = float(cfg.refine) or False
            _search_and_seeds(runs, cfg, bar, cfg.seeds, results_dir=cfg.results_dir,
                              refine=refine)
            if cfg.close_seeds > cfg.seeds:             # the close calls: more seeds
                from ..reports.extensions import close_calls, extensions_table
                close = close_calls(extensions_table(cfg))
                more = [r for r in runs if (ext_name(r.method, r.options), r.rank) in close]
                if more:
                    _search_and_seeds(more, cfg, bar, cfg.close_seeds,
                                      results_dir=cfg.results_dir, refine=refine)
        finally:
            bar.close()
    if "mlp" in cfg.parts:
        _mlp_part(cfg, progress)
    return load_lm_records(cfg.results_dir) if Path(cfg.results_dir).is_dir() \
        else pd.DataFrame()


def mlp_runs(cfg: ExtensionsConfig) -> list:
    """Seed-0 runs of every model at every MLP rank, under the tuned AdamW protocol."""
    from ..core.protocol import RunConfig
    tuned = cfg.mlp_config()
    p = tuned.protocol("adamw")
    return [RunConfig(tuned.task, EXT_MODELS[name][0], r, protocol=p,
                      options=EXT_MODELS[name][1])
            for name in cfg.models for r in cfg.mlp_ranks]


def mlp_baselines(cfg: ExtensionsConfig) -> list:
    """The MLP's dense model and plain B·A (the LoRA layers, the autoencoder layers) at
    ``mlp_ranks``, then the narrower dense models of their parameter counts (equal
    parameters: :func:`mlp_narrow`), seed 0, under the tuned AdamW protocol."""
    from ..core.protocol import RunConfig
    tuned = cfg.mlp_config()
    p = tuned.protocol("adamw")
    return [RunConfig(tuned.task, "full", protocol=p)] + [
        RunConfig(tuned.task, m, r, i, protocol=p) for m, i in (("lora", "lora"), ("ae", None))
        for r in cfg.mlp_ranks] + mlp_narrow(cfg)


def mlp_narrow(cfg: ExtensionsConfig) -> list:
    """The MLP's narrower dense models, one per rank of ``mlp_ranks``: every hidden layer as
    wide as makes the dense MLP's parameter count closest to plain B·A's at that rank
    (:func:`~lowrank_helpers.models.mlp.narrow_widths`), under the tuned AdamW protocol."""
    from ..core.protocol import RunConfig
    from ..models.mlp import narrow_widths
    tuned = cfg.mlp_config()
    p = tuned.protocol("adamw")
    out = []
    for r in cfg.mlp_ranks:
        plain = RunConfig(tuned.task, "lora", r, "lora", protocol=p)
        run = RunConfig(tuned.task, "full", protocol=p,
                        widths=narrow_widths(plain.task_spec.parameters(plain)["total"],
                                             plain.widths))
        if run not in out:
            out.append(run)
    return out


def _adopt(models: list, source, target) -> int:
    """Copy ``source``'s records of ``models`` (any rate and seed: the same runs, by id) into
    ``target``, where a search resumes from them; returns how many were copied."""
    import shutil
    from pathlib import Path
    from ..core.results import load_records
    if not Path(source).is_dir():
        return 0
    runs = load_records(source)
    if runs.empty:
        return 0
    keys = {m.model_key for m in models}
    Path(target).mkdir(parents=True, exist_ok=True)
    copied = 0
    for path in runs[runs.model_key.isin(keys)].path:
        dest = Path(target) / Path(path).name
        if not dest.exists():
            shutil.copy2(path, dest)
            copied += 1
    return copied


def _mlp_part(cfg: ExtensionsConfig, progress: bool) -> None:
    """The MLP's models and baselines through the one search and seed rule, on the tuned
    study's AdamW grid, extended at an edge and all refined alike to ``refine``; records in
    ``mlp_dir``. The baselines start from the tuned study's records of the same runs (copied),
    so that only their refinement trains."""
    from .search import search_and_seed
    from .tuned import GRIDS, _records, _train
    from ..tasks import TASKS
    tuned = cfg.mlp_config()
    TASKS[tuned.task].prepare(cfg.data_root)
    baselines = mlp_baselines(cfg)
    _adopt(baselines, cfg.tuned_dir, tuned.results_dir)
    models = baselines + mlp_runs(cfg)
    def seeded(models, seeds, what):
        search_and_seed(models, {m.model_key: GRIDS["adamw"] for m in models},
                        lambda runs, w: _train(runs, tuned, w, progress),
                        lambda: _records(tuned), tuned.max_extend, range(1, seeds), what,
                        refine={m.model_key: cfg.refine for m in models} if cfg.refine
                        else None)
    seeded(models, cfg.seeds, "extensions (MLP): seeds of the chosen rates")
    if cfg.close_seeds > cfg.seeds:
        from ..reports.extensions import close_calls, mlp_table
        close = close_calls(mlp_table(cfg))
        more = [m for m in mlp_runs(cfg) if (ext_name(m.method, m.options), m.rank) in close]
        if more:
            seeded(more, cfg.close_seeds, "extensions (MLP): the close calls' seeds")


def plan_jobs(cfg: ExtensionsConfig) -> list:
    """One job per method (each searches and seeds its ranks)."""
    from dataclasses import replace
    from ..batch.plan import Job
    return [Job(name, replace(cfg, models=(name,))) for name in cfg.models]
