"""The `frb train` command group: train the suite's own models."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import click

from .cli_errors import reports_errors, resumes_on_rerun
from .cli_options import cache_dir_option, data_root_option, parse_folds
from .errors import FrbError
from .paths import resolve_cache_dir, resolve_data_root


@click.group()
def train() -> None:
    """Train the models the suite ships weights for."""


@train.command("msn")
@data_root_option
@cache_dir_option
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("msn-train"),
    show_default=True,
    help="Folder for weights, JSON records, loss CSVs and the per-epoch state a rerun resumes from.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the initial weights and every random draw.")
@click.option(
    "--epochs-scale",
    type=click.FloatRange(min=0, min_open=True),
    default=1.0,
    show_default=True,
    help="Multiply the epochs of all three phases by this factor (each phase keeps at least 1 epoch).",
)
@click.option(
    "--max-people",
    type=click.IntRange(min=2),
    default=None,
    help="Train on only this many people (those with two or more images), for quick trial runs.",
)
@click.option(
    "--cv",
    is_flag=True,
    help="Train one model per held-out fold 1-10 instead of only fold 10 (ten times as long); same as --folds 1-10.",
)
@click.option(
    "--folds",
    "folds_text",
    default=None,
    metavar="LIST",
    help="Held-out folds to train one model each for, e.g. 1-9 or 3,4 (default: 10).",
)
@click.option("--threads", type=click.IntRange(min=1), default=None, help="CPU threads for PyTorch (default: its own choice).")
@click.option("--no-progress", is_flag=True, help="Hide progress bars.")
@reports_errors
@resumes_on_rerun
def msn_command(
    data_root: Path | None,
    cache_dir: Path | None,
    out: Path,
    seed: int,
    epochs_scale: float,
    max_people: int | None,
    cv: bool,
    folds_text: str | None,
    threads: int | None,
    no_progress: bool,
) -> None:
    """Train the Modular Siamese Network on LFW (unrestricted protocol, no outside data).

    Trains on every image of the people of nine folds of people.txt and
    reports accuracy on the pairs of the held-out fold, with thresholds
    chosen on the other folds' pairs. A rerun with the same --out and
    settings resumes from the last finished epoch.
    """
    import torch

    from .models.msn.train import MSNHyperparameters, train_lfw

    if cv and folds_text is not None:
        raise FrbError(f"--cv and --folds {folds_text!r} both choose folds; give only one of them")
    folds = [10] if folds_text is None else parse_folds(folds_text)
    if cv:
        folds = list(range(1, 11))
    if threads is not None:
        torch.set_num_threads(threads)
    hp = MSNHyperparameters(seed=seed, max_people=max_people).scaled(epochs_scale)
    records = train_lfw(
        resolve_data_root(data_root),
        resolve_cache_dir(cache_dir),
        out,
        hp,
        test_folds=folds,
        command=shlex.join(["frb", *sys.argv[1:]]),
        progress=not no_progress,
    )
    for record in records:
        accuracies = ", ".join(f"{name} {100 * value:.1f}%" for name, value in record["fold_accuracy"].items())
        click.echo(f"fold {record['test_fold']}: {accuracies}")
    if len(records) > 1:
        names = records[0]["fold_accuracy"]
        means = ", ".join(
            f"{name} {100 * sum(r['fold_accuracy'][name] for r in records) / len(records):.1f}%" for name in names
        )
        click.echo(f"mean over {len(records)} folds: {means}")
    click.echo(f"weights and records in {out}")
