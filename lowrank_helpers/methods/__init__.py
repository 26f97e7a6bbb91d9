"""The methods compared: one module each and one registration (see :mod:`.base`).

Today's: :mod:`.dense` (``full``), :mod:`.lora` (``lora``, ``ae``), :mod:`.dense_he` (``full_he``),
:mod:`.densehead` (the dense-head control) and :mod:`.rescale` (the rescaling control, an
option of the factorized methods). :func:`~.apply.lowrank` puts a method's layers into a
model of one's own.
"""
from .base import (METHODS, OPTIONS, LayerSpec, Method, Option, check_init_for, check_method,
                   check_options, init_methods, method_for_init, optimizer_state_bytes,
                   register_method, register_option)
from . import dense, lora, dense_he, densehead, rescale  # noqa: F401  (registrations, in table order)
from .apply import lowrank
from .naming import (INIT_COLORS, RANK_COLORS, family_label, init_color, linestyle, model_label,
                     model_order, rank_color)

#: The original study's methods: what a study compares unless told otherwise.
ORIGINAL_METHODS = ("full", "lora", "ae")

__all__ = ["METHODS", "OPTIONS", "LayerSpec", "Method", "Option", "check_init_for",
           "check_method", "check_options", "init_methods", "method_for_init",
           "optimizer_state_bytes", "register_method", "register_option", "lowrank",
           "INIT_COLORS", "RANK_COLORS", "family_label", "init_color", "linestyle",
           "model_label", "model_order", "rank_color", "ORIGINAL_METHODS"]
