"""The dense baseline: every target layer a full-rank ``nn.Linear`` with the task's own dense
init (PyTorch's default in the MLP, the original study's baseline; nanoGPT's N(0, 0.02) in the
transformer)."""
from .base import Method, register_method

register_method(Method("full", "full-rank", factorized=False, init="default"))
