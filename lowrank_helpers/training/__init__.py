"""Training: the one loop, the stacked paths, the MLP's engine."""

from .. import submodules_on_use

__getattr__ = submodules_on_use(__name__)
