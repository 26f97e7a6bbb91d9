"""A run and its settings, records, statistics."""

from .. import submodules_on_use

__getattr__ = submodules_on_use(__name__)
