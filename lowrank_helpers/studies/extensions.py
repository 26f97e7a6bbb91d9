"""The extensions on one protocol (``lowrank-study extensions``, ``notebooks/extensions.ipynb``):
LoRA+, ReLoRA, AdaLoRA, GaLore, CoLA, LORO and SLTrain on the language-model study's
transformer, nanoGPT's CPU configuration on tiny-shakespeare, each at ``ranks`` of d_model.

Every model (a method with its options, at a rank) gets the study's one search and seed rule
(:func:`~lowrank_helpers.studies.search.search_and_seed`): seed 0 at every rate of ``lrs``,
extended beyond an edge where the choice sits there, refined around the choice until its
neighbours lie within ``refine`` (2: neighbouring rungs at most 2× apart), then ``seeds``
seeds at the choice. Each method's other settings are its module's defaults (taken from its
official code, scaled to this run: each module's docstring says which). LoRA+ is run at
λ = 4 and 16; λ = 1 is the LoRA layers themselves.

The dense model and plain B·A are not retrained: the report reads the language-model study's
records (``lm_dir``), trained under the same protocol. Records go to ``results_dir``.
"""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from ..core.config import _not_empty, smoke_dir
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
#: What ``smoke=True`` shrinks the comparison to (besides the LM study's smoke sizes): two
#: methods, no refinement.
EXT_SMOKE = {"models": ("loro", "adalora"), "refine": 0}


@dataclass(frozen=True)
class ExtensionsConfig(LMStudyConfig):
    """The extensions comparison's parameters: the language-model study's (its shape,
    protocol and grid), with the extensions' models, ranks, refinement and folders."""
    ranks: tuple = setting((16, 32, 64), "list[int]", "ranks of every method",
                           check=all_of(_not_empty, distinct, each(positive)))
    refine: float = setting(2.0, "float", "refine each model's grid around its choice until "
                            "its neighbouring rates lie within this factor (0: off)",
                            check=_refine_factor)
    models: tuple = setting(tuple(EXT_MODELS), "list[str]", "the methods compared (LoRA+ at "
                            "two ratios)", choices=tuple(EXT_MODELS))
    results_dir: str = setting("../results/extensions", "str", "where records go")
    lm_dir: str = setting("../results/shakespeare_char", "str", "the language-model study's "
                          "records: the dense and plain B·A rows")
    train: bool = setting(True, "bool", "train what the records lack (False: read the "
                          "records only, e.g. while the runs train elsewhere)")

    def __post_init__(self):
        super().__post_init__()
        if self.smoke and self.models == tuple(EXT_MODELS):   # once (a job's replace keeps
            for k, v in EXT_SMOKE.items():                    # its own models)
                object.__setattr__(self, k, v)
            object.__setattr__(self, "lm_dir", smoke_dir(self.lm_dir))


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
    check_writable(cfg.results_dir)
    splits = split_text(read_corpus(cfg.corpus, cfg.data_root), cfg.tune_chars, cfg.corpus)
    Path(cfg.results_dir).mkdir(parents=True, exist_ok=True)
    bar = tqdm(desc="extensions (model-steps)", unit="step", disable=not progress)
    try:
        _search_and_seeds(extension_runs(cfg, splits.vocab_size), cfg, bar, cfg.seeds,
                          results_dir=cfg.results_dir, refine=float(cfg.refine) or False)
    finally:
        bar.close()
    return load_lm_records(cfg.results_dir)


def plan_jobs(cfg: ExtensionsConfig) -> list:
    """One job per method (each searches and seeds its ranks)."""
    from dataclasses import replace
    from ..batch.jobs import Job
    return [Job(name, replace(cfg, models=(name,))) for name in cfg.models]
