"""The studies: which runs each trains, the learning-rate search, the theory."""

from .. import submodules_on_use

__getattr__ = submodules_on_use(__name__)
