"""Whole collections of videos and photos: ``emolens batch``, in-process or on a Ray cluster.

inputs (find files) -> worker (one model per worker, whole files) -> runner (tasks, Ray actors, retries)
-> store (atomic parts, merged Parquet/CSV tables).
"""

from .runner import BatchOptions, run_batch

__all__ = ["BatchOptions", "run_batch"]
