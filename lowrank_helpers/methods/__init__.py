"""The methods compared: one module each and one registration (see :mod:`.base`); every module
of this folder is imported, so a new method is one new file here.

Today's: :mod:`.dense` (``full``), :mod:`.lora` (``lora``, ``ae``), :mod:`.dense_he` (``full_he``),
:mod:`.densehead` (the dense-head control) and :mod:`.rescale` (the rescaling control, an
option of the factorized methods). :func:`~.apply.lowrank` puts a method's layers into a
model of one's own.
"""
from .base import (METHODS, OPTIONS, LayerSpec, Method, Option, Periodic, check_init_for,
                   check_method, check_options, init_methods, method_for_init,
                   optimizer_state_bytes, register_method, register_option, register_period)
from . import dense, lora, dense_he, densehead, rescale  # noqa: F401  (registrations, in table order)


def _discover() -> None:
    """Import every other module of this folder: a new method is one new file here, found
    without an edit anywhere else (in name order, after today's)."""
    import importlib
    import pkgutil
    known = {"base", "naming", "apply", "dense", "lora", "dense_he", "densehead", "rescale"}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        if info.name not in known and not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")


_discover()
from .apply import lowrank
from .naming import (INIT_COLORS, RANK_COLORS, family_label, init_color, linestyle, model_label,
                     model_order, rank_color)

#: The original study's methods: what a study compares unless told otherwise.
ORIGINAL_METHODS = ("full", "lora", "ae")

__all__ = ["METHODS", "OPTIONS", "LayerSpec", "Method", "Option", "Periodic", "check_init_for",
           "check_method", "check_options", "init_methods", "method_for_init",
           "optimizer_state_bytes", "register_method", "register_option", "register_period",
           "lowrank",
           "INIT_COLORS", "RANK_COLORS", "family_label", "init_color", "linestyle",
           "model_label", "model_order", "rank_color", "ORIGINAL_METHODS"]

from .. import submodules_on_use

__getattr__ = submodules_on_use(__name__)
