"""Command-line options shared by several `frb` commands."""

from __future__ import annotations

from pathlib import Path

import click

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
