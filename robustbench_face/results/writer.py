"""Atomic writes, so an interrupted run never leaves a half-written file."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd

from ..errors import FrbError

# Six significant digits keep the CSVs readable and stable across runs.
FLOAT_FORMAT = "%.6g"


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file and a rename."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as err:
        raise FrbError(f"cannot write {path} ({err.strerror}); choose another output path") from None
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
        # mkstemp creates the file as 0600; give it the usual permissions.
        os.chmod(temporary, 0o666 & ~_current_umask())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


def write_csv(path: Path, frame: pd.DataFrame) -> None:
    """Write a data frame as CSV atomically, with the suite's float format."""
    text = frame.to_csv(index=False, float_format=FLOAT_FORMAT, lineterminator="\n")
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: Path, record: dict[str, Any]) -> None:
    """Write a JSON record atomically."""
    atomic_write_bytes(path, (json.dumps(record, indent=2, sort_keys=False) + "\n").encode("utf-8"))
