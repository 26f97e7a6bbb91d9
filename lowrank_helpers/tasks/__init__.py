"""The tasks: one module each and one registration (see :mod:`.base`): :mod:`.images` (the MLP
on Fashion-MNIST and MNIST), :mod:`.chars` (nanoGPT's character transformer) and :mod:`.distill`
(its students learning a low-rank teacher's distributions) and :mod:`.linear` (students of a
linear teacher)."""
from .base import TASKS, Task, build_model, check_task, register_task, task_of_config
from . import images, chars, distill, linear  # noqa: F401  (registrations)
from .images import CLASSIFICATION_METRICS, ImageClassification
from .chars import CharLM, lm_protocol

__all__ = ["TASKS", "Task", "build_model", "check_task", "register_task", "task_of_config",
           "CLASSIFICATION_METRICS", "ImageClassification", "CharLM", "lm_protocol"]

from .. import submodules_on_use

__getattr__ = submodules_on_use(__name__)
