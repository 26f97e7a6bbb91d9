"""Batches of jobs, locally or on a Dask cluster, and the command line."""

from .. import submodules_on_use

__getattr__ = submodules_on_use(__name__)
