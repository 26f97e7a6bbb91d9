"""Helpers for the low-rank layers study: can W be a product B·A trained from scratch?

One module per concept. What a run is: settings (typed, declared fields), protocol (how to
train; the run and its ids), tasks (data, model family, metrics: a registry), methods (layer
kinds as plug-ins, one module each, and how models are named, ordered and coloured), layers (LowRankLinear and
its inits), models (the MLP and its costs), data. Training: training (the plain loop), stacked
(stacked layers, forward and written-out backward), engine (many models in lockstep), planning
(which models train together), steps (eager or CUDA-graph step), workers (CPU processes),
devices. Results: results (records, replicate keys), study (runs with resume), config (the
notebooks' parameters), report (tables, computed prose), readme (README's generated blocks),
plots (study figures). The fair comparison: tuning (learning rates chosen on a validation
split, seeds, controls), stats (Welch intervals), tuned_report (its tables and prose),
tuned_plots (its figures). Theory: theory (signal and gradients at init, predicted and
measured), theory_plots. Panels: explorer (records), init_panel (an init and a rank). Batches: batch (jobs, one job
in a child process, the local runner), cluster (the same jobs on Dask), cli.
The language-model study: text (character corpora, split as nanoGPT splits them), charlm
(nanoGPT's transformer with dense or B·A projections), lm_training (its protocol, a run, many
runs at once through torch.func), lm_study (the phases, with resume), lm_report (tables,
computed prose), lm_plots (figures), teacher (the teacher–student control).
"""
from .studies import theory
from .core.config import (SMOKE, ExplorerConfig, StudyConfig, SummaryConfig, TheoryConfig)
from .tasks.images_data import DATASETS, Data, DataNotFoundError, load_data
from .core.devices import resolve_device
from .training.engine import train_group, train_many
from .models.charlm import CharTransformer, LMShape
from .models.layers import INITS, LowRankLinear, register_init
from .reports.lm_plots import lm_figures
from .reports.lm import anchor_summary, lm_answer, lm_table, lm_tables_markdown
from .studies.lm import LMStudyConfig, load_lm_records, run_lm_study
from .training.lm import LMProtocol, LMRun, train_lm_eager, train_lms
from .methods import (METHODS, LayerSpec, Method, lowrank, method_for_init, model_label,
                      register_method)
from .models.mlp import MLP, count_parameters, parameter_counts, parameter_table
from .training.planning import plan_stacks
from .reports.plots import plot_curves, plot_final_vs, save_figures, study_figures
from .core.protocol import OPTIMIZERS, REFERENCE, SCHEDULES, Protocol, RunConfig
from .readme import update_readme
from .reports import answers
from .reports.answers import discussion
from .reports.reference import ORIGINAL, comparison_table, cost_table
from .core.results import (ResultsDirError, epochs_frame, load_records, make_record, read_record,
                      replicates, save_record)
from .training.stacked import StackedMLP
from .studies.reference import (init_study_records, run_one, run_records, run_study, spectra_records,
                    summary_records)
from .studies.teacher import TeacherConfig, best_students, teacher_results
from .tasks import TASKS, Task, build_model, register_task
from .training.loop import TrainResult, evaluate, train
from .reports.tuned_plots import tuned_figures
from .reports.tuned import tuned_answer, tuned_summary
from .studies.tuned import TUNED_PROTOCOLS, TunedConfig, run_tuning, tuned_table

__version__ = "0.1.0"

__all__ = [
    "theory", "answers", "SMOKE", "ExplorerConfig", "StudyConfig", "SummaryConfig",
    "TheoryConfig",
    "DATASETS", "Data", "DataNotFoundError", "load_data", "resolve_device",
    "train_group", "train_many", "INITS", "LowRankLinear", "register_init",
    "METHODS", "LayerSpec", "Method", "lowrank", "method_for_init", "model_label",
    "register_method",
    "MLP", "count_parameters", "parameter_counts", "parameter_table", "plan_stacks",
    "plot_curves", "plot_final_vs", "save_figures", "study_figures",
    "OPTIMIZERS", "REFERENCE", "SCHEDULES", "Protocol", "RunConfig", "update_readme",
    "ORIGINAL", "comparison_table", "cost_table", "discussion",
    "ResultsDirError", "epochs_frame", "load_records", "make_record", "read_record",
    "replicates", "save_record", "StackedMLP",
    "init_study_records", "run_one", "run_records", "run_study", "spectra_records",
    "summary_records", "TASKS", "Task", "build_model", "register_task",
    "TrainResult", "evaluate", "train", "tuned_figures", "tuned_answer", "tuned_summary",
    "TUNED_PROTOCOLS", "TunedConfig", "run_tuning", "tuned_table",
    "CharTransformer", "LMShape", "lm_figures", "anchor_summary", "lm_answer", "lm_table",
    "lm_tables_markdown", "LMStudyConfig", "load_lm_records", "run_lm_study", "LMProtocol",
    "LMRun", "train_lm_eager", "train_lms", "TeacherConfig", "best_students",
    "teacher_results",
]
