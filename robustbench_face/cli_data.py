"""The `frb data` command group: fetch the data sets the benchmark runs on."""

from __future__ import annotations

from pathlib import Path

import click

from .cli_errors import reports_errors, resumes_on_rerun
from .cli_options import data_root_option
from .data.download import ARCHIVE_NAME, OFFICIAL_BASE_URL, download_lfw, is_lfw_complete
from .paths import resolve_data_root

DATASETS = ("lfw",)


def _parse_md5(values: tuple[str, ...]) -> dict[str, str] | None:
    """Turn repeated ``NAME=HEX`` options into a checksum table, or None when none were given."""
    if not values:
        return None
    table: dict[str, str] = {}
    for value in values:
        name, sep, digest = value.partition("=")
        if not sep or not name or len(digest) != 32 or any(c not in "0123456789abcdefABCDEF" for c in digest):
            raise click.BadParameter(
                f"{value!r} is not NAME=HEX with a 32-digit MD5, e.g. pairs.txt=9f1ba174e4e1c508ff7cdf10ac338a7d",
                param_hint="--md5",
            )
        table[name] = digest.lower()
    return table


@click.group()
def data() -> None:
    """Download and manage the data sets."""


@data.command()
@click.argument("dataset", type=click.Choice(DATASETS))
@data_root_option
@click.option(
    "--base-url",
    default=OFFICIAL_BASE_URL,
    show_default=True,
    help="Folder URL of a mirror that serves the archive and the protocol text files.",
)
@click.option(
    "--archive",
    "archive_name",
    default=ARCHIVE_NAME,
    show_default=True,
    help="File name of the image archive at --base-url (.tgz, .tar.gz, .tar or .zip).",
)
@click.option(
    "--md5",
    "md5_values",
    multiple=True,
    metavar="NAME=HEX",
    help="Expected MD5 of a file at --base-url; repeat for each file. "
    "Without it, a mirror's files are checked by size only.",
)
@click.option("--force", is_flag=True, help="Download again and replace an existing lfw/ folder.")
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
@reports_errors
@resumes_on_rerun
def download(
    dataset: str,
    data_root: Path | None,
    base_url: str,
    archive_name: str,
    md5_values: tuple[str, ...],
    force: bool,
    no_progress: bool,
) -> None:
    """Download a data set (only lfw so far), verify it and unpack it into the data root."""
    root = resolve_data_root(data_root)
    checksums = _parse_md5(md5_values)
    already_complete = is_lfw_complete(root) and not force
    # reports_errors turns an FrbError from here into one line and exit status 2.
    target = download_lfw(
        root,
        base_url=base_url,
        checksums=checksums,
        archive_name=archive_name,
        force=force,
        progress=not no_progress,
    )
    if already_complete:
        click.echo(f"{dataset.upper()} is already complete in {target}; pass --force to download it again.")
    else:
        click.echo(f"{dataset.upper()} is ready in {target}.")
