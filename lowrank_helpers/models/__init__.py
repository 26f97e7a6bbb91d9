"""Layers and networks: the low-rank layer, the MLP, the character transformer."""

from .. import submodules_on_use

__getattr__ = submodules_on_use(__name__)
