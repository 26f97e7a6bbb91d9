"""Batches of jobs, locally or on a Dask cluster, and the command line."""
