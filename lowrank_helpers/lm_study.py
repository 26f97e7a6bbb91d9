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
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from .charlm import LMShape, check_lm_rank, lm_parameters, spectra
from .config import NotebookParams, _not_empty, refuse_smoke_overrides, smoke_dir
from .devices import check_device, resolve_device
from .layers import INITS
from .lm_training import LMProtocol, LMRun, lm_record, stack_key, train_lms
from .tasks.chars import SMOKE_SIZES
from .protocol import RunConfig
from .results import check_writable, read_record, save_record
from .settings import all_of, check_settings, distinct, each, non_negative, positive, setting
from .text import CORPORA, read_corpus, split_text
from .search import next_rate, rungs_beyond

#: Where the teacher–student students are stored, under the study's results directory.
STUDENTS = "teacher_student/students.json"
PHASES = ("anchor", "search", "seeds", "narrow", "partial", "inits")
#: What ``smoke=True`` shrinks the study to (CI, tests): a text every Python has, a tiny model.
LM_SMOKE = {"corpus": "python_stdlib", **SMOKE_SIZES, "ranks": (2, 4), "seeds": 2,
            "lrs": (1e-3, 1e-2), "anchor_seeds": 2, "narrow_ranks": (2,), "partial_rank": 2,
            "sample_chars": 40, "extra_inits": ("he",)}


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
    device: str = setting("auto", "str", "cuda, mps or cpu; auto: the first available",
                          check=lambda name, v: check_device(v))
    phases: tuple = setting(PHASES, "list[str]", "which phases to run", choices=PHASES)
    smoke: bool = setting(False, "bool", "tiny sizes on a small text (CI)")
    results_dir: str = setting("../results/shakespeare_char", "str", "where records go")
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
        for name in ("ranks", "narrow_ranks", "partial_rank"):
            for r in (getattr(self, name) if name != "partial_rank" else (self.partial_rank,)):
                check_lm_rank(r, self.d_model, name)

    def shape(self, vocab_size: int, d_model: int | None = None) -> LMShape:
        return LMShape(self.n_layer, self.n_head, d_model or self.d_model, self.block_size,
                       vocab_size)

    def protocol(self, lr: float, tune: bool = True):
        """The study's protocol at peak rate ``lr`` (min_lr = lr/10, nanoGPT's rule of thumb);
        ``tune=False``: trained on the whole training split (the anchor)."""
        return LMProtocol(steps=self.iters, batch_size=self.batch_size, lr=lr, min_lr=lr / 10,
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


def record_file(run: RunConfig, results_dir) -> Path:
    return Path(results_dir) / f"{run.name}-{run.run_id}.json"


def load_lm_records(results_dir) -> pd.DataFrame:
    """One row per record: the config flat (shape fields, protocol fields), the final losses,
    parameters and cost."""
    import warnings
    rows = []
    for path in sorted(Path(results_dir).glob("*.json")):
        try:
            rec = read_record(path)
            if rec.get("schema") != "lm-1":
                continue
            run = RunConfig.from_dict(rec["config"])
            c = rec["config"]
            rows.append({**{k: v for k, v in c.items() if k != "protocol"}, **c["protocol"],
                         **rec["final"], "parameters": rec["parameters"]["total"],
                         "diverged_iter": rec["diverged_iter"], **rec["cost"],
                         "torch_threads": rec.get("torch_threads"),
                         "run_id": rec["run_id"], "model_key": run.model_key,
                         "group_id": run.group_id, "label": run.label, "path": str(path)})
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            warnings.warn(f"skipping corrupt record {path}: {type(exc).__name__}: {exc}",
                          stacklevel=2)
    return pd.DataFrame(rows)


def choose_lr(rows: pd.DataFrame) -> float | None:
    """The rate with the lowest final tuning-slice loss of seed 0 (diverged runs excluded;
    ties go to the lower rate); None if every rate failed."""
    ok = rows[(rows.seed == 0) & rows.diverged_iter.isna() & rows.tune_loss.notna()]
    if ok.empty:
        return None
    ok = ok.sort_values(["tune_loss", "lr"])
    return float(ok.lr.iloc[0])


def _train(runs: list[LMRun], cfg: LMStudyConfig, splits, bar) -> None:
    """Train the runs without a record, stack by stack, writing each record when done."""
    todo = [r for r in runs if not record_file(r, cfg.results_dir).exists()]
    stacks = defaultdict(list)
    for r in todo:
        stacks[stack_key(r)].append(r)
    for group in stacks.values():
        if bar is not None:
            bar.set_postfix_str(f"{group[0].label} ×{len(group)}")
        results = train_lms(group, splits, progress=(lambda n: bar.update(n * len(group)))
                            if bar is not None else None, sample_chars=cfg.sample_chars,
                            device=resolve_device(cfg.device))
        for run, res in zip(group, results):
            rec = lm_record(run, res)
            if run.method == "full":
                rec["analysis"] = learned_analysis(run, res.model)
            save_record(rec, cfg.results_dir)


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
    import warnings
    from .results import _write_atomic
    todo = []
    for run in runs:
        path = record_file(run, cfg.results_dir)
        if not path.exists():
            continue
        rec = read_record(path)
        analysis = rec.get("analysis") or {}
        if "singular_values" in analysis and "learned_singular_values" not in analysis:
            todo.append((run, path, rec))
    stacks, refused = defaultdict(list), []
    for item in todo:
        stacks[stack_key(item[0])].append(item)
    for group in stacks.values():
        if bar is not None:
            bar.set_postfix_str(f"W − γW₀ of {group[0][0].label} ×{len(group)}")
        results = train_lms([run for run, _, _ in group], splits,
                            progress=(lambda n: bar.update(n * len(group)))
                            if bar is not None else None, device=resolve_device(cfg.device))
        for (run, path, rec), res in zip(group, results):
            stored, new = rec["analysis"]["singular_values"], learned_analysis(run, res.model)
            gap = max(abs(a - b) for k in stored
                      for a, b in zip(stored[k], new["singular_values"][k]))
            if gap > RETRAIN_TOLERANCE:
                warnings.warn(f"{path.name}: retrained, its singular values differ from the "
                              f"record's by {gap:.2g} (> {RETRAIN_TOLERANCE:g}): another "
                              "model; its learned part is not added")
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


def extension(rows: pd.DataFrame, cfg: "LMStudyConfig") -> float | None:
    """The next rung of the 1–3–10 ladder beyond a choice that sits at the edge of the rates
    tried (a failed rate beyond it counts as tried), while fewer than ``max_extend`` rungs lie
    beyond the grid on that side; else None."""
    lr = choose_lr(rows)
    if lr is None:
        return None
    tried = sorted(rows[rows.seed == 0].lr.unique())
    if lr == tried[-1] and rungs_beyond(tried, max(cfg.lrs), +1) < cfg.max_extend:
        return next_rate(tried, +1)
    if lr == tried[0] and rungs_beyond(tried, min(cfg.lrs), -1) < cfg.max_extend:
        return next_rate(tried, -1)
    return None


def _rows(runs: pd.DataFrame, model: RunConfig) -> pd.DataFrame:
    return runs[runs.model_key == model.model_key] if len(runs) else runs


def _search_and_seeds(models, cfg, splits, bar, seeds: int) -> None:
    """Seed 0 of ``models`` at every rate of the grid, and beyond an edge where the choice
    sits there (:func:`extension`); then seeds 1…``seeds``-1 at each one's chosen rate."""
    _train([m.replace(lr=lr, min_lr=lr / 10) for m in models for lr in cfg.lrs], cfg, splits,
           bar)
    while True:
        runs = load_lm_records(cfg.results_dir)
        more = [(m, extension(_rows(runs, m), cfg)) for m in models if len(_rows(runs, m))]
        more = [m.replace(lr=lr, min_lr=lr / 10) for m, lr in more if lr is not None]
        if not more:
            break
        _train(more, cfg, splits, bar)
    if seeds < 2:
        return
    todo = []
    for m in models:
        rows = _rows(runs, m)
        lr = choose_lr(rows) if len(rows) else None
        if lr is not None:
            todo += [m.replace(lr=lr, min_lr=lr / 10, seed=s) for s in range(1, seeds)]
    _train(todo, cfg, splits, bar)


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
                _train(anchors, cfg, full, bar)
                complete_analysis(anchors, cfg, full, bar)
            else:
                seeds = {"search": 1, "inits": cfg.extra_init_seeds}.get(phase, cfg.seeds)
                _search_and_seeds(_models(cfg, splits.vocab_size, phase), cfg, splits, bar,
                                  seeds)
    finally:
        bar.close()
    return load_lm_records(cfg.results_dir)
