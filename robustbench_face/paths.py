"""Locations of the data root and the cache folder."""

from __future__ import annotations

import os
from pathlib import Path

DATA_ROOT_ENV = "FRB_DATA_ROOT"
CACHE_DIR_ENV = "FRB_CACHE_DIR"


def user_cache_dir() -> Path:
    """Return the per-user cache folder, following XDG_CACHE_HOME."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "robustbench-face"


def resolve_data_root(data_root: str | os.PathLike | None = None) -> Path:
    """Pick the data root: the argument, else $FRB_DATA_ROOT, else the user cache."""
    if data_root is not None:
        return Path(data_root).expanduser()
    from_env = os.environ.get(DATA_ROOT_ENV)
    if from_env:
        return Path(from_env).expanduser()
    return user_cache_dir() / "data"


def resolve_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """Pick the cache folder for aligned faces and embeddings: the argument,
    else $FRB_CACHE_DIR, else the user cache."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    from_env = os.environ.get(CACHE_DIR_ENV)
    if from_env:
        return Path(from_env).expanduser()
    return user_cache_dir() / "cache"
