"""Helpers for the low-rank layers study: can W be a product B·A trained from scratch?

One module per concept: layers (and inits), models, data, training (the plain loop), engine (many
models stacked in lockstep), steps (a step, eager or a CUDA graph), workers (stacks in CPU worker
processes), results (records), study (runs with resume), theory (signal at init, predicted and
measured), plots, report (tables and computed prose), config (typed configs), explorer (widgets),
cli (batches).
"""
from .config import (OPTIMIZERS, SMOKE, ExplorerConfig, RunConfig, StudyConfig, SummaryConfig,
                     TheoryConfig,
                     TrainConfig)
from .data import DATASETS, Data, DataNotFoundError, load_data
from .layers import INITS, LowRankLinear, register_init
from .models import METHODS, MLP, count_parameters, parameter_counts, parameter_table
from .plots import plot_curves, plot_final_vs, save_figures, study_figures
from .report import ORIGINAL, comparison_table, cost_table, discussion
from .results import (ResultsDirError, epochs_frame, load_records, make_record, read_record,
                      save_record)
from .study import init_study_records, run_one, run_study, summary_records
from .engine import StackedMLP, plan_stacks, train_many
from .training import TrainResult, build_model, evaluate, resolve_device, train

__version__ = "0.1.0"

__all__ = [
    "OPTIMIZERS", "SMOKE", "ExplorerConfig", "RunConfig", "StudyConfig", "SummaryConfig", "TheoryConfig",
    "TrainConfig", "DATASETS", "Data", "DataNotFoundError", "load_data",
    "INITS", "LowRankLinear", "register_init",
    "METHODS", "MLP", "count_parameters", "parameter_counts", "parameter_table",
    "plot_curves", "plot_final_vs", "save_figures", "study_figures",
    "ORIGINAL", "comparison_table", "cost_table", "discussion",
    "ResultsDirError", "epochs_frame", "load_records", "make_record", "read_record",
    "save_record", "init_study_records", "run_one", "run_study", "summary_records",
    "StackedMLP", "plan_stacks", "train_many",
    "TrainResult", "build_model", "evaluate", "resolve_device", "train",
]
