"""`frb reproduce`: the robustness sweeps of Dammu et al. (PSTCI 2021) for every model in one command."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import click

from .cli import common_data_options, run_config, with_options
from .cli_errors import reports_errors, resumes_on_rerun
from .errors import FrbError


@click.command("reproduce")
@click.option("--specs", "specs_text", default="fgsm,ffgsm,deepfool", show_default=True, metavar="NAME[,NAME]",
              help="Shipped sweep specs to run, in this order.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for random starts.")
@click.option("--jobs", type=click.IntRange(min=1), default=1, show_default=True,
              help="Worker processes for chunks of pairs; results do not depend on it.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("results/paper"),
              show_default=True, help="Output folder; rerunning resumes every run inside it.")
@with_options(common_data_options)
@reports_errors
@resumes_on_rerun
def reproduce_command(specs_text, seed, jobs, out, data_root, cache_dir, models_text, weights_items, folds_text,
                      per_fold, batch_size, device, skip_missing, no_progress):
    """Run the robustness sweeps of Dammu et al. (2021) for every model.

    FGSM and FFGSM over eps 0 to 0.1 and DeepFool over 0 to 10 steps, each
    as an ordinary run in OUT/<spec>/<model>/. A model trained on LFW (MSN)
    is attacked on its held-out fold only, unless --folds is given; with
    --weights msn=DIR of per-fold files, on every fold DIR has a file for. Writes
    OUT/reproduce.json with the wall time of every run and OUT/robustness.png.
    """
    from .attacks.budgets import AttackSpec
    from .attacks.specs import shipped_specs
    from .models.folds import describe_folds
    from .sweep.reproduce import reproduce

    # Each spec runs once, in the order first given, as --folds drops repeats too.
    specs = tuple(dict.fromkeys(part.strip() for part in specs_text.split(",") if part.strip()))
    unknown = [name for name in specs if name not in shipped_specs()]
    if unknown:
        raise FrbError(f"--specs names unknown spec {unknown[0]!r}; choose from {', '.join(shipped_specs())}")
    if not specs:
        raise FrbError(f"--specs {specs_text!r} names no spec; choose from {', '.join(shipped_specs())}")
    # The spec is a placeholder: each run takes its own from the shipped spec file.
    cfg = run_config(AttackSpec("fgsm", (0.0,)), seed, jobs, data_root, cache_dir, models_text, weights_items,
                     folds_text, per_fold, batch_size, device, skip_missing, no_progress)
    runs = reproduce(cfg, out, specs, command=shlex.join(["frb", *sys.argv[1:]]))
    total = 0.0
    for item in runs:
        total += item.seconds
        click.echo(f"{item.spec:<9} {item.model:<12} {describe_folds(item.folds):<10} {item.seconds:8.0f} s  {item.out}")
    click.echo(f"total {total:.0f} s; record in {out / 'reproduce.json'}, figure {out / 'robustness.png'}")

