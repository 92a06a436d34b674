"""The `frb` command line."""

from __future__ import annotations

import logging
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click
import torch

from . import __version__
from .attacks.budgets import BUDGET_PARAMETER, AttackSpec
from .attacks.specs import build_spec, load_spec
from .cli_errors import reports_errors, resumes_on_rerun
from .cli_options import cache_dir_option, data_root_option, parse_folds
from .errors import FrbError
from .models.registry import MODELS, available_models, parse_model_names
from .paths import resolve_cache_dir, resolve_data_root

if TYPE_CHECKING:
    from .sweep.config import RunConfig

# LFW accuracy reported by Dammu et al. (PSTCI 2021) for MSN trained on VGGFace2.
PAPER_ACCURACY = {"msn": 98.5, "eyes": 80.8, "nose": 73.2, "mouth": 74.5, "rest": 78.3}


def _parse_weights(items: tuple[str, ...]) -> dict[str, Path]:
    weights: dict[str, Path] = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not path:
            raise FrbError(f"--weights {item!r} must be NAME=PATH, e.g. facenet=~/vggface2.pt")
        if name not in MODELS:
            raise FrbError(f"--weights {item!r} names unknown model {name!r}; choose from {', '.join(MODELS)}")
        if name in weights:
            raise FrbError(f"--weights gives {name} twice ({weights[name]} and {path}); give one path per model")
        weights[name] = Path(path).expanduser()
    return weights


def _default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _check_device(device: str) -> str:
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise FrbError(f"--device {device} requested but CUDA is not available; use --device cpu")
    if not (device == "cpu" or device.startswith("cuda")):
        raise FrbError(f"--device {device!r} is not supported; use cpu or cuda[:N]")
    return device


def _models_for(text: str | None, weights: dict[str, Path]) -> list[str]:
    if text is None and weights:
        # Models given weights explicitly count as available.
        return sorted(set(available_models()) | set(weights), key=list(MODELS).index)
    names = parse_model_names(text)
    unused = [name for name in weights if name not in names]
    if unused:
        raise FrbError(
            f"--weights {unused[0]}={weights[unused[0]]} is for a model not in --models {text}; "
            f"add {unused[0]} to --models or leave out its --weights"
        )
    return names


common_data_options = [
    data_root_option,
    cache_dir_option,
    click.option("--models", "models_text", default=None, metavar="NAME[,NAME]",
                 help=f"Models to benchmark: {', '.join(MODELS)} (default: those whose weights are on disk)."),
    click.option("--weights", "weights_items", multiple=True, metavar="NAME=PATH",
                 help="Weights file for a model, e.g. facenet=PATH; repeatable. A folder of per-fold files "
                      "(msn=DIR with DIR/msn-fold1.pt ..., from `frb train msn --cv --out DIR`) scores each "
                      "fold with the model that held it out."),
    click.option("--folds", "folds_text", default=None, metavar="LIST",
                 help="Folds to report, e.g. 1,2 or 1-10 (default: all ten)."),
    click.option("--pairs", "per_fold", type=click.IntRange(min=1), default=None,
                 help="Use at most N pairs of each fold, half matched and half mismatched (default: all 600)."),
    click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True,
                 help="Images per forward pass; results do not depend on it."),
    click.option("--device", default=None, help="cpu or cuda[:N] (default: cuda when available)."),
    click.option("--skip-missing", is_flag=True, help="Leave out pairs whose image file is missing instead of failing."),
    click.option("--no-progress", is_flag=True, help="Hide progress bars."),
]


def with_options(options):
    def decorate(function):
        for option in reversed(options):
            function = option(function)
        return function

    return decorate


def run_config(
    spec: AttackSpec,
    seed: int,
    jobs: int,
    data_root: Path | None,
    cache_dir: Path | None,
    models_text: str | None,
    weights_items: tuple[str, ...],
    folds_text: str | None,
    per_fold: int | None,
    batch_size: int,
    device: str | None,
    skip_missing: bool,
    no_progress: bool,
) -> RunConfig:
    """Build the `RunConfig` of a sweep from the values of the shared command-line options."""
    from .sweep.config import RunConfig

    weights = _parse_weights(weights_items)
    return RunConfig(
        spec=spec,
        models=_models_for(models_text, weights),
        data_root=resolve_data_root(data_root),
        cache_dir=resolve_cache_dir(cache_dir),
        folds=parse_folds(folds_text),
        per_fold=per_fold,
        batch_size=batch_size,
        seed=seed,
        skip_missing=skip_missing,
        weights=weights,
        device=_check_device(device or _default_device()),
        progress=not no_progress,
        jobs=jobs,
    )


@click.group()
@click.version_option(__version__, prog_name="frb")
@click.option("-v", "--verbose", count=True, help="Log more (-v: info, -vv: debug).")
def main(verbose: int) -> None:
    """robustbench-face: adversarial robustness of face verification on LFW."""
    levels = {0: logging.WARNING, 1: logging.INFO}
    level = levels.get(verbose, logging.DEBUG)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


@main.command("run")
@click.option("--attack", type=click.Choice(sorted(BUDGET_PARAMETER)), default=None,
              help="Attack to sweep (required unless --spec names it).")
@click.option("--spec", "spec_name", default=None, metavar="NAME|FILE",
              help="A sweep spec: a shipped name (fgsm, ffgsm, deepfool) or a .toml file; options override it.")
@click.option("--eps", "eps_text", default=None, metavar="START:STOP:STEP",
              help="L-inf radii in pixel scale [0, 1], stop included, for fgsm and ffgsm (default 0:0.1:0.01).")
@click.option("--steps", "steps_text", default=None, metavar="START:STOP:STEP",
              help="DeepFool step counts, stop included (default 0:10:1).")
@click.option("--alpha", type=float, default=None, help="FFGSM step size in pixel scale (default 10/255).")
@click.option("--overshoot", type=float, default=None, help="DeepFool overshoot (default 0.02).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for random starts.")
@click.option("--jobs", type=click.IntRange(min=1), default=1, show_default=True,
              help="Worker processes for chunks of pairs; results do not depend on it.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Output folder (default: results/<attack>-<run id>); rerunning resumes it.")
@with_options(common_data_options)
@reports_errors
@resumes_on_rerun
def run_command(attack, spec_name, eps_text, steps_text, alpha, overshoot, seed, jobs, out, data_root, cache_dir,
                models_text, weights_items, folds_text, per_fold, batch_size, device, skip_missing, no_progress):
    """Attack the probe image of LFW pairs over a budget sweep.

    Writes curves.csv, pairs.csv, timings.csv, run.json and curves.png/.pdf.
    """
    from .sweep.runner import run

    spec_values = load_spec(spec_name) if spec_name else {}
    spec = build_spec(spec_values, attack, eps_text, steps_text, alpha, overshoot)
    cfg = run_config(spec, seed, jobs, data_root, cache_dir, models_text, weights_items, folds_text, per_fold,
                     batch_size, device, skip_missing, no_progress)
    result = run(cfg, out, command=shlex.join(["frb", *sys.argv[1:]]))
    click.echo(f"results in {result.out} ({result.computed_chunks} chunks computed, {result.resumed_chunks} resumed)")
    keys = ["model", "module", "attacked", "value"]
    summary = result.curves.groupby(keys, sort=False)["accuracy"].mean().reset_index()
    click.echo(summary.to_string(index=False, float_format=lambda v: f"{v:.4f}"))


@main.command("eval")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the per-fold accuracies to this CSV file.")
@with_options(common_data_options)
@reports_errors
def eval_command(out, data_root, cache_dir, models_text, weights_items, folds_text, per_fold, batch_size, device,
                 skip_missing, no_progress):
    """Clean verification accuracy under the LFW 10-fold protocol."""
    from .evaluation.evaluate import evaluate
    from .results.writer import write_csv

    weights = _parse_weights(weights_items)
    evaluation = evaluate(
        models=_models_for(models_text, weights),
        data_root=resolve_data_root(data_root),
        cache_dir=resolve_cache_dir(cache_dir),
        folds=parse_folds(folds_text),
        per_fold=per_fold,
        batch_size=batch_size,
        device=_check_device(device or _default_device()),
        skip_missing=skip_missing,
        weights=weights,
        progress=not no_progress,
    )
    prepared = evaluation.prepared
    click.echo(
        f"LFW pairs: {len(prepared.run_pairs)} evaluated, {len(prepared.threshold_pairs)} for thresholds, "
        f"{len(prepared.skipped)} skipped; images without a detected face: {len(prepared.fallback_images)}"
    )
    paper = PAPER_ACCURACY if any(name == "msn" for name in evaluation.folds["model"]) else {}
    for row in evaluation.summary().itertuples():
        spread = f" +- {100 * row.accuracy_std:.2f}" if row.folds > 1 else ""
        folds = "1 fold" if row.folds == 1 else f"{row.folds} folds"
        reference = f"  (paper: {paper[row.module]:.1f}%)" if row.model == "msn" and row.module in paper else ""
        click.echo(
            f"{row.model:<12} {row.module:<6} {100 * row.accuracy_mean:6.2f}%{spread}  ({folds}, {row.pairs} pairs)"
            f"{reference}"
        )
    if out is not None:
        write_csv(out, evaluation.folds)
        click.echo(f"per-fold accuracies in {out}")


@main.command("check")
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--baseline", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Reference curves (a curves.csv, e.g. from baselines/).")
@click.option("--tolerance", type=float, default=0.02, show_default=True,
              help="Largest allowed accuracy drop below the baseline, as a fraction.")
@reports_errors
def check_command(run_dir: Path, baseline: Path, tolerance: float) -> None:
    """Compare a run's curves.csv with a baseline; exit 1 on a robustness regression."""
    from .results.check import check_against_baseline

    result = check_against_baseline(run_dir / "curves.csv", baseline, tolerance)
    failed = result.rows[~result.rows["passed"]]
    for row in failed.itertuples():
        click.echo(
            f"REGRESSION {row.model}/{row.module} {row.attack} {row.param}={row.value:g} fold {row.fold}: "
            f"accuracy {row.accuracy_run:.4f} < baseline {row.accuracy_baseline:.4f} - {tolerance:g}"
        )
    click.echo(f"{len(result.rows) - len(failed)} of {len(result.rows)} baseline rows within {tolerance:g} of {baseline}")
    if not result.passed:
        sys.exit(1)


@main.group("figures")
def figures_group() -> None:
    """Draw the figures of the MSN paper from the shipped model."""


@figures_group.command("reconstructions")
@data_root_option
@cache_dir_option
@click.option("--count", type=click.IntRange(1, 20), default=4, show_default=True,
              help="Number of faces, taken from the matched pairs of fold 10 (people MSN did not train on).")
@click.option("--weights", "weights_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="MSN checkpoint (default: the shipped one).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=Path("results/reconstructions.png"),
              show_default=True, help="Output file; a PDF is written beside the PNG.")
@reports_errors
def reconstructions_command(data_root, cache_dir, count, weights_path, out) -> None:
    """Input, masked targets and each MSN module's reconstruction for a few LFW faces."""
    from .data.faces import load_faces
    from .data.lfw import locate_lfw
    from .data.pairs import parse_pairs, select_pairs
    from .models.registry import load_model
    from .results.reconstructions import plot_reconstructions

    lfw = locate_lfw(resolve_data_root(data_root))
    all_pairs = parse_pairs(lfw.pairs_file)
    pairs = select_pairs(all_pairs, folds=[max(pair.fold for pair in all_pairs)])
    # One face per person, so that the rows show different people.
    first_probe_by_person = {pair.probe.split("/")[0]: pair.probe for pair in reversed(pairs) if pair.same}
    relpaths = list(reversed(first_probe_by_person.values()))[:count]
    faces = load_faces(lfw, relpaths, resolve_cache_dir(cache_dir), progress=False)
    model = load_model("msn", weights_path)
    written = plot_reconstructions(model, faces, relpaths, out.with_suffix(""))
    click.echo("wrote " + ", ".join(str(path) for path in written))


@main.command("models")
def models_command() -> None:
    """List the models and whether their weights are on disk."""
    for name, entry in MODELS.items():
        path = entry.default_weights()
        state = "available" if path.is_file() else f"weights missing ({path})"
        click.echo(f"{name:<12} {entry.description}; {state}")


def _add_command_groups() -> None:
    from .cli_data import data
    from .cli_reproduce import reproduce_command
    from .cli_train import train

    main.add_command(data)
    main.add_command(reproduce_command)
    main.add_command(train)


_add_command_groups()
