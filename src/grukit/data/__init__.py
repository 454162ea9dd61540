"""Generic data plumbing: named downloads with a checked cache (task data lives with its task)."""

from grukit.data.download import REGISTRY, DatasetEntry, default_cache_dir, fetch

__all__ = ["REGISTRY", "DatasetEntry", "default_cache_dir", "fetch"]
