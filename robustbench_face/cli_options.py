"""Command-line options shared by several `frb` commands."""

from __future__ import annotations

from pathlib import Path

import click

from .errors import FrbError

data_root_option = click.option(
    "--data-root",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Folder that contains lfw/. Default: $FRB_DATA_ROOT, else ~/.cache/robustbench-face/data.",
)

cache_dir_option = click.option(
    "--cache-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Cache for aligned faces and embeddings. Default: $FRB_CACHE_DIR, else ~/.cache/robustbench-face/cache.",
)


def parse_folds(text: str | None, option: str = "--folds") -> list[int] | None:
    """Parse a fold list such as "1,3" or "1-10" into sorted fold numbers; None stays None."""
    if text is None:
        return None
    folds: list[int] = []
    for part in text.split(","):
        part = part.strip()
        try:
            if "-" in part:
                first, last = (int(x) for x in part.split("-", 1))
                folds.extend(range(first, last + 1))
            elif part:
                folds.append(int(part))
        except ValueError:
            raise FrbError(f"{option} {text!r} is not a list of fold numbers; use e.g. 1,2 or 1-10") from None
    if not folds:
        raise FrbError(f"{option} {text!r} names no fold; use e.g. 1,2 or 1-10")
    return sorted(set(folds))
