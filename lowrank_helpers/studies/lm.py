"""The language-model study: which runs, in which order, trained in stacks, with resume.

The study (``notebooks/shakespeare_char.ipynb``, ``lowrank-study lm``) runs in phases, each
skipping the runs that already have a record, so a stopped sweep loses nothing:

1. ``anchor``: the dense model at nanoGPT's CPU configuration, trained on the whole training
   split at nanoGPT's lr, ``anchor_seeds`` seeds: the check against nanoGPT's own loss. Dense
   records hold the singular values of their trained W and of its learned part W − γ·W₀
   (:func:`learned_analysis`; for anchor records written before, :func:`complete_analysis`
   adds the latter by retraining).
2. ``search``: seed 0 of every model at every rate of ``lrs`` (and one rung beyond an edge
   where the choice sits there, up to ``max_extend``), trained without the tuning slice and
   scored on it: the dense model, and all six projections factorized at ``ranks`` with
   ``inits``.
3. ``seeds``: seeds 1… at each model's chosen rate.
4. ``narrow``: dense models narrowed to the parameter count of the factorized ones at
   ``narrow_ranks`` (search, then seeds): "low rank" against "fewer parameters".
5. ``partial``: attention only and MLP only, at ``partial_rank`` (search, then seeds).
6. ``inits``: the other inits at ``partial_rank`` (search, then ``extra_init_seeds`` seeds:
   by default the search's seed 0 only, for the CPU budget).
7. ``svd``: the SVD-started control at ``svd_ranks`` (:mod:`.svd`): the dense model's seeds
   kept as checkpoints, cut to each rank, evaluated untrained and trained on as B·A.
8. ``teacher``: students of the anchor cut to each rank of ``teacher_ranks``
   (:mod:`.distill`): can B·A from scratch find a rank-r solution that exists?

The dense model and the factorized models at ``refine_ranks`` get their grid refined around
their choice (``refine``: rungs at most that factor apart there; :func:`.search.search`).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ..models.charlm import LMShape, check_lm_rank, lm_parameters, spectra
from ..core.config import NotebookParams, _not_empty, refuse_smoke_overrides, smoke_dir
from ..core.devices import check_device, resolve_device
from ..models.layers import INITS
from ..training.lm import LMProtocol, LMRun, _sample, another_model, retrain
from ..core.protocol import RunConfig
from ..core.results import check_writable, has_record, load_records, read_record, record_path
from ..core.settings import all_of, check_settings, distinct, each, non_negative, positive, setting
from ..tasks.text import CORPORA, read_corpus, split_text
from .search import at_rate, search_and_seed
from ..tasks.chars import SMOKE_SIZES, min_lr_for

#: Where the teacher–student students are stored, under the study's results directory.
STUDENTS = "teacher_student/students.json"
PHASES = ("anchor", "search", "seeds", "narrow", "partial", "inits", "svd", "teacher")
#: What ``smoke=True`` shrinks the study to (CI, tests): a text every Python has, a tiny model.
LM_SMOKE = {"corpus": "python_stdlib", **SMOKE_SIZES, "ranks": (2, 4), "seeds": 2,
            "lrs": (1e-3, 1e-2), "anchor_seeds": 2, "narrow_ranks": (2,), "partial_rank": 2,
            "sample_chars": 40, "extra_inits": ("he",), "refine_ranks": (4,),
            "svd_ranks": (2, 4), "svd_lrs": (1e-3, 1e-2), "teacher_ranks": (2,),
            "scale_dirs": (), "budget_dir": None}


def _refine_factor(name, value):
    if not (value == 0 or value > 1):
        raise ValueError(f"{name} must be 0 (off) or a factor above 1, got {value!r}")


def _inits(name, values):
    for v in values:
        if v not in INITS:
            raise ValueError(f"unknown init {v!r} in {name}; valid inits: {', '.join(INITS)}")


@dataclass(frozen=True)
class LMStudyConfig(NotebookParams):
    """The language-model study's notebook parameters (and ``lowrank-study lm``'s flags)."""
    corpus: str = setting("tinyshakespeare", "str", "the text", choices=lambda: tuple(CORPORA))
    n_layer: int = setting(4, "int", "transformer blocks", check=positive)
    n_head: int = setting(4, "int", "attention heads", check=positive)
    d_model: int = setting(128, "int", "width of the residual stream", check=positive)
    block_size: int = setting(64, "int", "context length in characters", check=positive)
    batch_size: int = setting(12, "int", "sequences per step", check=positive)
    iters: int = setting(2000, "int", "optimizer steps per run", check=positive)
    ranks: tuple = setting((4, 8, 16, 32, 64), "list[int]", "ranks of the factorized models",
                           check=all_of(_not_empty, distinct, each(positive)))
    inits: tuple = setting(("lora", "default"), "list[str]", "inits at every rank",
                           check=all_of(_not_empty, distinct, _inits))
    extra_inits: tuple = setting(("matched", "he", "spectral", "spectral_he"), "list[str]",
                                 "the other inits, at partial_rank only",
                                 check=all_of(distinct, _inits))
    lrs: tuple = setting((1e-3, 3e-3, 1e-2), "list[float]", "peak learning rates searched",
                         check=all_of(_not_empty, distinct, each(positive)))
    max_extend: int = setting(1, "int", "rungs added beyond an edge of the rate grid at "
                              "most, while the choice sits at that edge", check=non_negative)
    refine: float = setting(1.5, "float", "refine the grid around the choice of the dense "
                            "model and of the models at refine_ranks until its neighbouring "
                            "rates lie within this factor (0: off)", check=_refine_factor)
    refine_ranks: tuple = setting((16, 32, 64), "list[int]", "ranks whose factorized models "
                                  "get the refined grid", check=all_of(distinct,
                                                                       each(positive)))
    seeds: int = setting(3, "int", "seeds per model at its chosen rate", check=positive)
    extra_init_seeds: int = setting(1, "int", "seeds of the extra_inits models (1: the search "
                                    "only)", check=positive)
    anchor_seeds: int = setting(3, "int", "seeds of the nanoGPT anchor", check=positive)
    tune_chars: int = setting(100_000, "int", "tuning slice cut from the training split",
                              check=positive)
    narrow_ranks: tuple = setting((4, 16), "list[int]", "ranks whose parameter count a "
                                  "narrower dense model matches", check=all_of(distinct,
                                                                             each(positive)))
    partial_rank: int = setting(16, "int", "rank of the attention-only, MLP-only and other-"
                                "init models", check=positive)
    eval_every: int = setting(250, "int", "steps between evaluations", check=positive)
    eval_windows: int = setting(100, "int", "windows per split in an evaluation during "
                                "training", check=positive)
    sample_chars: int = setting(300, "int", "characters sampled from each trained model",
                                check=positive)
    svd_ranks: tuple = setting((4, 8, 16, 32, 64), "list[int]", "ranks of the SVD-started "
                               "control", check=all_of(distinct, each(positive)))
    svd_lrs: tuple = setting((3e-4, 1e-3, 3e-3), "list[float]", "peak learning rates searched "
                             "for the SVD-started models (extended at an edge)",
                             check=all_of(_not_empty, distinct, each(positive)))
    teacher_ranks: tuple = setting((8, 32), "list[int]", "ranks of the teachers (the anchor "
                                   "cut by its SVD) whose students are trained",
                                   check=all_of(distinct, each(positive)))
    device: str = setting("auto", "str", "cuda, mps or cpu; auto: the first available",
                          check=lambda name, v: check_device(v))
    phases: tuple = setting(PHASES, "list[str]", "which phases to run", choices=PHASES)
    smoke: bool = setting(False, "bool", "tiny sizes on a small text (CI)")
    results_dir: str = setting("../results/shakespeare_char", "str", "where records go")
    scale_dirs: tuple = setting(("../results/lm_scale",), "list[str]", "records of the study "
                                "at other widths (the scale series), read by the report")
    budget_dir: str | None = setting("../results/lm_budget", "str|None", "records of the "
                                     "study at a longer budget, read by the report")
    img_dir: str = setting("../img", "str", "where figures go")
    data_root: str | None = setting(None, "str|None", "data root (default $LOWRANK_DATA or "
                                    "~/.cache/lowrank_helpers/data)")

    def __post_init__(self):
        if self.smoke:
            check_settings(self)
            refuse_smoke_overrides(self, LM_SMOKE)
            for k, v in LM_SMOKE.items():
                object.__setattr__(self, k, v)
            object.__setattr__(self, "results_dir", smoke_dir(self.results_dir))
            object.__setattr__(self, "img_dir", smoke_dir(self.img_dir))
        check_settings(self)
        LMShape(self.n_layer, self.n_head, self.d_model, self.block_size)  # checks the shape
        names = ["ranks", "narrow_ranks", "partial_rank"]
        if "svd" in self.phases:
            names.append("svd_ranks")
        if "teacher" in self.phases:
            from .distill import teacher_task
            for k in self.teacher_ranks:
                teacher_task(self.corpus, k)         # a registered teacher of that rank
            names.append("teacher_ranks")
        for name in names:
            for r in (getattr(self, name) if name != "partial_rank" else (self.partial_rank,)):
                check_lm_rank(r, self.d_model, name)

    def shape(self, vocab_size: int, d_model: int | None = None) -> LMShape:
        return LMShape(self.n_layer, self.n_head, d_model or self.d_model, self.block_size,
                       vocab_size)

    def protocol(self, lr: float, tune: bool = True):
        """The study's protocol at peak rate ``lr`` (min_lr = lr/10, nanoGPT's rule of thumb);
        ``tune=False``: trained on the whole training split (the anchor)."""
        return LMProtocol(steps=self.iters, batch_size=self.batch_size, lr=lr,
                          min_lr=min_lr_for(lr),
                          val_size=self.tune_chars if tune else 0, eval_every=self.eval_every,
                          eval_samples=self.eval_windows)


def narrow_width(target: int, shape: LMShape) -> int:
    """The d_model (a multiple of n_head) whose dense model's parameter count is closest to
    ``target``."""
    best = min(range(shape.n_head, shape.d_model + 1, shape.n_head),
               key=lambda d: abs(lm_parameters(LMShape(shape.n_layer, shape.n_head, d,
                                                       shape.block_size,
                                                       shape.vocab_size))["total"] - target))
    return best


def _models(cfg: LMStudyConfig, vocab: int, phase: str) -> list[RunConfig]:
    """Seed-0 runs at the first rate of every model of ``phase`` (lr is set by the search)."""
    shape, proto = cfg.shape(vocab), cfg.protocol(cfg.lrs[0])
    base = LMRun(cfg.corpus, shape, protocol=proto)
    if phase in ("search", "seeds"):
        return [base] + [base.replace(method="lora", targets="both", rank=r, init=i)
                         for r in cfg.ranks for i in cfg.inits]
    if phase == "narrow":
        out = []
        for r in cfg.narrow_ranks:
            target = lm_parameters(shape, "both", r)["total"]
            out.append(base.replace(shape=cfg.shape(vocab, narrow_width(target, shape))))
        return out
    if phase == "partial":
        return [base.replace(method="lora", targets=f, rank=cfg.partial_rank, init=cfg.inits[0])
                for f in ("attn", "mlp")]
    if phase == "inits":
        return [base.replace(method="lora", targets="both", rank=cfg.partial_rank, init=i)
                for i in cfg.extra_inits if i not in cfg.inits]
    raise ValueError(phase)


def load_lm_records(results_dir) -> pd.DataFrame:
    """The character tasks' records under ``results_dir``: the one loader's rows
    (:func:`~lowrank_helpers.core.results.load_records`) with the language-model study's columns
    beside them (:meth:`~lowrank_helpers.tasks.chars.CharLM.record_columns`)."""
    from ..tasks import TASKS
    runs = load_records(results_dir)
    if runs.empty:
        return runs
    return runs[runs.task.map(lambda t: TASKS[t].entry == "iter")].reset_index(drop=True)


def _train(runs: list[RunConfig], cfg: LMStudyConfig, bar, results_dir=None) -> None:
    """Train the runs without a record through the one runner
    (:func:`~lowrank_helpers.studies.reference.run_records`: stacked, resumed, one record
    schema) into ``results_dir`` (default the study's), each record holding its model's sample
    and, for a dense model, :func:`learned_analysis`; a dense model is also kept as a
    checkpoint (:mod:`~lowrank_helpers.core.checkpoints`) for the svd and teacher phases."""
    from .reference import run_records
    from ..core.checkpoints import save_checkpoint

    def finish(run, result, data):
        if cfg.sample_chars:
            result.final["sample"] = _sample(result.model, data, cfg.sample_chars, run.seed)
        if run.method == "full":
            result.analysis = learned_analysis(run, result.model)
            save_checkpoint(run, result.model, result.final)   # for the svd and teacher phases
    run_records(runs, results_dir or cfg.results_dir, data_root=cfg.data_root, device=cfg.device,
                progress=False, finish=finish, bar=bar, verbose=False)


#: How far (absolute, in singular value) a retrained dense model's spectrum may lie from its
#: record's before the retrained model is taken for another one (records round to 1e-6).
RETRAIN_TOLERANCE = 1e-4


def learned_analysis(run: RunConfig, model) -> dict:
    """A trained dense model's spectra: of W, and of the learned part W − γ·W₀ (γ: the init's
    shrinkage by weight decay, :meth:`Protocol.init_decay`; W₀ rebuilt from the seed)."""
    gamma = run.protocol.init_decay()
    return {"singular_values": spectra(model),
            "learned_singular_values": spectra(model, run.build(), gamma), "init_decay": gamma}


def complete_analysis(runs: list[RunConfig], cfg: LMStudyConfig, splits, bar=None) -> list[str]:
    """Dense records written before the learned part's spectrum was stored: retrain each run
    (on the same setup a run repeats to float rounding), check the retrained W's singular
    values against the stored ones, and add :func:`learned_analysis` with the size of that
    check. A run whose retrained spectrum differs by more than :data:`RETRAIN_TOLERANCE` is
    another model: its record is left as it is and its name returned."""
    from ..core.results import _write_atomic
    todo = []
    for run in runs:
        path = record_path(run, cfg.results_dir)
        if not path.exists():
            continue
        rec = read_record(path)
        analysis = rec.get("analysis") or {}
        if "singular_values" in analysis and "learned_singular_values" not in analysis:
            todo.append((run, path, rec))
    refused, found = [], {run.run_id: (path, rec) for run, path, rec in todo}
    for run, res in retrain([run for run, _, _ in todo], splits, resolve_device(cfg.device),
                            bar, "W − γW₀ of "):
        path, rec = found[run.run_id]
        stored, new = rec["analysis"]["singular_values"], learned_analysis(run, res.model)
        gap = max(abs(a - b) for k in stored
                  for a, b in zip(stored[k], new["singular_values"][k]))
        if another_model(path, "singular values", gap, RETRAIN_TOLERANCE,
                         "its learned part is not added"):
            refused.append(path.name)
            continue
        rec["analysis"] = {"singular_values": stored,
                           "learned_singular_values": new["learned_singular_values"],
                           "init_decay": new["init_decay"],
                           "learned_from_retraining": {
                               "max_singular_value_difference": gap,
                               "val_loss": res.final["val_loss"]}}
        _write_atomic(rec, path)
    return refused


def _refined(m: RunConfig, cfg: LMStudyConfig) -> bool:
    """Whether ``m``'s grid is refined around its choice: the dense model of the study's
    width, and all six projections factorized at ``refine_ranks`` with the study's ``inits``
    (not the ``inits`` phase's other inits, searched on the grid alone for the CPU budget)."""
    if not cfg.refine or m.shape.d_model != cfg.d_model:
        return False
    return m.method == "full" or (m.method == "lora" and m.targets == "both"
                                  and m.rank in cfg.refine_ranks and m.init in cfg.inits)


def _search_and_seeds(models, cfg, bar, seeds: int, lrs=None, results_dir=None,
                      refine: bool | float = True) -> dict:
    """The one search and seed rule
    (:func:`~lowrank_helpers.studies.search.search_and_seed`): seed 0 of ``models`` at every
    rate of ``lrs`` (default the study's), extended beyond an edge
    where the choice sits there and refined around it (:func:`_refined`); then
    seeds 1…``seeds``-1 at each one's chosen rate (records in ``results_dir``, default the
    study's; ``refine=False``: no refinement; a number: every model refined to that factor).
    Returns the choices by model key."""
    where = results_dir or cfg.results_dir

    def train(runs, what):
        todo = [r for r in runs if not has_record(r, where)]
        _train(todo, cfg, bar, where)
        return len(todo)
    return search_and_seed(models, {m.model_key: lrs or cfg.lrs for m in models}, train,
                           lambda: load_records(where), cfg.max_extend, range(1, seeds),
                           refine={m.model_key: (refine if not isinstance(refine, bool)
                                                 else cfg.refine) for m in models
                                   if (refine and not isinstance(refine, bool))
                                   or (refine is True and _refined(m, cfg))})


def _svd_phase(cfg: LMStudyConfig, splits, bar) -> None:
    """The SVD-started control (:mod:`.svd`): the dense model's choice and seeds (resumed),
    its checkpoints, the untrained truncations, then the SVD-started models' search and
    seeds."""
    from .svd import ensure_checkpoints, svd_run, truncation_losses
    dense = _models(cfg, splits.vocab_size, "search")[0]
    lr = _search_and_seeds([dense], cfg, bar, cfg.seeds)[dense.model_key].lr
    runs = [at_rate(dense, lr).replace(seed=s) for s in range(cfg.seeds)]
    device = resolve_device(cfg.device)
    ensure_checkpoints(runs, splits, cfg.results_dir, device, bar)
    if bar is not None:
        bar.set_postfix_str("SVD truncations")
    truncation_losses(runs, cfg.svd_ranks, splits, cfg.results_dir, device)
    _search_and_seeds([svd_run(runs[0], r) for r in cfg.svd_ranks], cfg, bar, cfg.seeds,
                      lrs=cfg.svd_lrs)


#: The phases each job of the batch runner runs (independent of each other).
JOB_PHASES = (("anchor", "teacher"), ("search", "seeds", "svd"), ("narrow",), ("partial",),
              ("inits",))


def plan_jobs(cfg: LMStudyConfig) -> list:
    """The study as jobs of the batch runner: the anchor, the search with its seeds, and each
    control (the phases of ``cfg.phases`` only)."""
    from dataclasses import replace
    from ..batch.plan import Job
    jobs = []
    for group in JOB_PHASES:
        phases = tuple(p for p in group if p in cfg.phases)
        if phases:
            jobs.append(Job("-".join(phases), replace(cfg, phases=phases)))
    return jobs


def run_lm_study(cfg: LMStudyConfig, progress: bool = True) -> pd.DataFrame:
    """Run the phases of ``cfg.phases`` in order (see the module doc) and return the records."""
    from tqdm.auto import tqdm
    check_writable(cfg.results_dir)   # before any training: an unwritable folder is one line
    text = read_corpus(cfg.corpus, cfg.data_root)
    splits = split_text(text, cfg.tune_chars, cfg.corpus)   # the study's runs
    full = split_text(text, 0, cfg.corpus)                   # the anchor's
    Path(cfg.results_dir).mkdir(parents=True, exist_ok=True)
    bar = tqdm(desc="LM study (model-steps)", unit="step", disable=not progress)
    try:
        for phase in cfg.phases:
            if phase == "anchor":
                run = LMRun(cfg.corpus, cfg.shape(full.vocab_size),
                            protocol=cfg.protocol(1e-3, tune=False))
                anchors = [run.replace(seed=s) for s in range(cfg.anchor_seeds)]
                _train(anchors, cfg, bar)
                complete_analysis(anchors, cfg, full, bar)
            elif phase == "svd":
                _svd_phase(cfg, splits, bar)
            elif phase == "teacher":
                from .distill import teacher_phase
                teacher_phase(cfg, full, full.vocab_size, bar)
            else:
                seeds = {"search": 1, "inits": cfg.extra_init_seeds}.get(phase, cfg.seeds)
                _search_and_seeds(_models(cfg, splits.vocab_size, phase), cfg, bar, seeds)
    finally:
        bar.close()
    return load_lm_records(cfg.results_dir)
