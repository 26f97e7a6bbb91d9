"""Helpers for the low-rank layers study: can W be a product B·A trained from scratch?

Subpackages, one module per concept (README's "Layout" says what lives where): ``core`` (what
a run is: settings, protocol and run ids, records, statistics, notebook configs), ``tasks``
(data, the model for a shape, the loss and metrics: the image MLP, the character transformer,
the teacher–student control), ``models`` (the layers and their inits, the MLP, the
transformer), ``methods`` (plug-ins: how a method builds, trains and counts a model),
``training`` (the one trainer, alone or stacked), ``studies`` (which runs each study trains,
the one learning-rate search), ``reports`` (tables, computed prose, figures, panels),
``batch`` (jobs, locally or on Dask, and the command line), ``readme`` (README's generated
blocks).

The names below are imported on first use, so that ``import lowrank_helpers`` loads nothing
heavy, and the command line, a batch job's child and a notebook's kernel load scipy, matplotlib
and the reports only where they use them.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

#: Public name -> the module that defines it (imported when the name is first used).
_EXPORTS = {
    "core.config": ("SMOKE", "ExplorerConfig", "StudyConfig", "SummaryConfig", "TheoryConfig"),
    "tasks.images_data": ("DATASETS", "Data", "DataNotFoundError", "load_data"),
    "core.devices": ("resolve_device",),
    "training.engine": ("train_group", "train_many"),
    "models.charlm": ("CharTransformer", "LMShape"),
    "models.layers": ("INITS", "LowRankLinear", "register_init"),
    "reports.lm_plots": ("lm_figures",),
    "reports.lm": ("anchor_summary", "lm_answer", "lm_table", "lm_tables_markdown"),
    "studies.lm": ("LMStudyConfig", "load_lm_records", "run_lm_study"),
    "training.lm": ("LMProtocol", "LMRun", "train_lm_eager", "train_lms"),
    "methods": ("METHODS", "LayerSpec", "Method", "lowrank", "method_for_init", "model_label",
                "register_method"),
    "models.mlp": ("MLP", "count_parameters", "parameter_counts", "parameter_table"),
    "training.planning": ("plan_stacks",),
    "reports.plots": ("plot_curves", "plot_final_vs", "save_figures", "study_figures"),
    "core.protocol": ("OPTIMIZERS", "REFERENCE", "SCHEDULES", "Protocol", "RunConfig"),
    "readme": ("update_readme",),
    "reports.answers": ("discussion",),
    "reports.reference": ("ORIGINAL", "comparison_table", "cost_table"),
    "core.results": ("ResultsDirError", "epochs_frame", "load_records", "make_record",
                     "read_record", "replicates", "save_record"),
    "training.stacked": ("StackedMLP",),
    "studies.reference": ("init_study_records", "run_one", "run_records", "run_study",
                          "spectra_records", "summary_records"),
    "studies.teacher": ("TeacherConfig", "best_students", "teacher_results"),
    "tasks": ("TASKS", "Task", "build_model", "register_task"),
    "training.loop": ("TrainResult", "evaluate", "train"),
    "training.trainer": ("fit",),
    "reports.tuned_plots": ("tuned_figures",),
    "reports.tuned": ("tuned_answer", "tuned_summary"),
    "reports.tuned_compare": ("lr_theory_fit",),
    "studies.tuned": ("TUNED_PROTOCOLS", "TunedConfig", "run_tuning", "tuned_table"),
}
#: Modules exported under a short name (``lh.theory``); every subpackage is one by its own.
_SUBMODULES = {"theory": "studies.theory", "answers": "reports.answers"}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = [*_SUBMODULES, *_WHERE]


def __getattr__(name: str):
    if name in _SUBMODULES:
        value = importlib.import_module(f".{_SUBMODULES[name]}", __name__)
    elif name in _WHERE:
        value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    else:
        value = _subpackage(name)       # lh.core, lh.studies, ...
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__():
    return sorted({*globals(), *__all__})


def submodules_on_use(package: str):
    """A subpackage's module ``__getattr__``: ``lh.studies.lm`` imports ``studies.lm`` when
    first used, as ``import lowrank_helpers.studies.lm`` would."""
    def __getattr__(name: str):
        try:
            return importlib.import_module(f"{package}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{package}.{name}":
                raise
            raise AttributeError(f"module {package!r} has no attribute {name!r}") from None
    return __getattr__


_subpackage = submodules_on_use(__name__)
