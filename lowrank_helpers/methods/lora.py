"""Factorized methods: every target layer a product B·A trained from scratch
(:class:`~lowrank_helpers.models.layers.LowRankLinear`; A ∈ R^{r×d_in}, B ∈ R^{d_out×r}).

``lora`` ("LoRA layers"): the init is chosen per run, the original study's rank-dependent
``lora`` init unless told otherwise. ``ae`` ("autoencoder layers"): always PyTorch's default
init, as two ``nn.Linear`` would draw it (the original study's second method).
"""
from .base import Method, register_method

register_method(Method("lora", "LoRA layers", factorized=True, default_init="lora"))
register_method(Method("ae", "autoencoder layers", factorized=True, init="default",
                       linestyle="--"))
