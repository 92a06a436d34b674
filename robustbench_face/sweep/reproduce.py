"""`frb reproduce`: every robustness sweep of Dammu et al. (PSTCI 2021) in one command.

Runs each shipped sweep spec (FGSM and FFGSM over eps, DeepFool over
steps) for each model, one ordinary run per (spec, model) under
`OUT/<spec>/<model>/`, so each resumes on its own like `frb run`. A model
trained on LFW (MSN) is attacked only on the folds it held out unless
`--folds` says otherwise, because its accuracy on its training people is
not a test result. With per-fold weights (one file per held-out fold) a
model gets one run per fold, in `OUT/<spec>/<model>/fold-01/` and so on,
and its folder holds their merged `curves.csv` and `pairs.csv`. The wall
time of every run, and of the whole command, goes into
`OUT/reproduce.json`; `OUT/robustness.png` and `.pdf` draw all curves
side by side.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd

from ..attacks.budgets import AttackSpec
from ..attacks.specs import build_spec, load_spec
from ..data.lfw import locate_lfw
from ..data.pairs import parse_pairs
from ..errors import FrbError
from ..models.folds import describe_folds, fold_list, load_entry, needed, weights_by_fold
from ..results.curves import CURVE_KEYS
from ..results.plot import plot_panels
from ..results.writer import write_csv, write_json
from .config import RunConfig, identity_hash
from .runner import RUN_MARKER, RunOutput, check_output_folder, mark_output_folder, run

log = logging.getLogger(__name__)

# Name of the file that marks a folder as a reproduction. It contains the hash of its settings.
MARKER = ".frb-reproduce"


@dataclass(frozen=True)
class RunPart:
    """One ordinary run of a model within a spec: its folds, its weights and its subfolder (None: none)."""

    folds: list[int] | None
    weights: Path | None
    subfolder: str | None


@dataclass
class ReproducedRun:
    """The result of one (spec, model): one run, or one run per fold for per-fold weights."""

    spec: str
    model: str
    out: Path
    folds: list[int] | None
    seconds: float
    computed_chunks: int
    resumed_chunks: int
    curves: pd.DataFrame


def plan_model(model_name: str, cfg: RunConfig, lfw_folds: set[int]) -> list[RunPart]:
    """Load and check the weights of `model_name` and return the runs that reproduce it.

    Per-fold weights (a folder of `<name>-fold<k>.pt`) give one run per
    fold, in subfolders `fold-01` and so on, so that a fold file added
    later only adds a run. A single weights file gives one run, on
    `cfg.folds` when given, else on the folds it held out. A model not
    trained on LFW has no held-out folds and runs on all folds, and so
    does an LFW-trained one without a training record (its runs warn
    about that). `lfw_folds` are the folds of the pairs file.
    """
    unknown = sorted(set(cfg.folds or ()) - lfw_folds)
    if unknown:
        raise FrbError(f"fold {unknown[0]} does not exist; choose folds from {fold_list(lfw_folds)}")
    entries = weights_by_fold(model_name, cfg.weights.get(model_name))
    if entries[0].folds is None:
        held_out = load_entry(entries[0], cfg.device).lfw_test_folds()
        folds = cfg.folds
        if folds is None and held_out:
            folds = sorted(held_out)
        return [RunPart(folds, entries[0].weights, None)]
    if cfg.folds is not None:
        entries = needed(model_name, entries, cfg.folds)
    for entry in entries:
        if entry.folds[0] not in lfw_folds:
            raise FrbError(
                f"{entry.weights} is for fold {entry.folds[0]}, but the pairs file has {describe_folds(lfw_folds)}; "
                "remove or rename that file, or pass --folds"
            )
    covered = {entry.folds[0] for entry in entries}
    if cfg.folds is None and covered != lfw_folds:
        log.warning(
            "%s has per-fold weights for %s only, so it is reproduced there while models with one weights file "
            "run on every fold; train the others with `frb train %s --folds %s`",
            model_name, describe_folds(covered), model_name, fold_list(lfw_folds - covered),
        )
    for entry in entries:
        load_entry(entry, cfg.device)  # checks the file and its held-out fold before any sweep
    return [RunPart([entry.folds[0]], entry.weights, f"fold-{entry.folds[0]:02d}") for entry in entries]


def reproduce(cfg: RunConfig, out: Path, specs: tuple[str, ...], command: str) -> list[ReproducedRun]:
    """Run every spec in `specs` for every model of `cfg` under `out`; write reproduce.json and the figure.

    `cfg.spec` is ignored: each run takes its attack and budgets from its
    shipped spec. Everything else (data, folds, pairs, seed, batch size,
    jobs, device) applies to every run.
    """
    started = time.time()
    lfw_folds = {pair.fold for pair in parse_pairs(locate_lfw(cfg.data_root).pairs_file)}
    # Loading every model first also checks its weights before any output exists.
    plans = {model_name: plan_model(model_name, cfg, lfw_folds) for model_name in cfg.models}
    built = [(spec_name, build_spec(load_spec(spec_name))) for spec_name in specs]
    created = _claim_output(out, cfg, plans, specs)
    runs: list[ReproducedRun] = []
    memo: dict = {}  # every run reads the same images, so they are loaded and hashed once
    try:
        for spec_name, spec in built:
            for model_name in cfg.models:
                runs.append(_reproduce_model(cfg, spec_name, spec, model_name, plans[model_name], out, command, memo))
    except FrbError:
        # Bad input (a missing image, a malformed pairs file) shows up in the
        # first run before it writes anything, so the claim is withdrawn.
        if created and not any(path.is_dir() for path in out.iterdir()):
            shutil.rmtree(out)
        raise
    curves = pd.concat([item.curves for item in runs], ignore_index=True)
    plot_panels(curves, out / "robustness")
    record = {
        "command": command,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
        # Wall time of this invocation; a resumed reproduction counts only what it computed.
        "wall_seconds": round(time.time() - started, 1),
        "runs": [
            {
                "spec": item.spec,
                "model": item.model,
                "folds": item.folds if item.folds is not None else "all",
                "out": str(item.out),
                "wall_seconds": round(item.seconds, 1),
                "computed_chunks": item.computed_chunks,
                "resumed_chunks": item.resumed_chunks,
            }
            for item in runs
        ],
    }
    write_json(out / "reproduce.json", record)
    return runs


def _reproduce_model(
    cfg: RunConfig,
    spec_name: str,
    spec: AttackSpec,
    model_name: str,
    parts: list[RunPart],
    out: Path,
    command: str,
    memo: dict,
) -> ReproducedRun:
    """Run every part of one model for one spec; per-fold runs are merged into the model folder's CSVs."""
    model_dir = out / spec_name / model_name
    began = time.perf_counter()
    results: list[RunOutput] = []
    for part in parts:
        weights = dict(cfg.weights)
        if part.weights is not None:
            weights[model_name] = part.weights
        run_cfg = replace(cfg, spec=spec, models=[model_name], folds=part.folds, weights=weights)
        run_dir = model_dir / part.subfolder if part.subfolder else model_dir
        results.append(run(run_cfg, run_dir, command=command, memo=memo))
    seconds = time.perf_counter() - began
    computed = sum(result.computed_chunks for result in results)
    resumed = sum(result.resumed_chunks for result in results)
    log.info("%s on %s: %.0f s (%d chunks computed)", spec_name, model_name, seconds, computed)
    if parts[0].subfolder is None:
        return ReproducedRun(spec_name, model_name, model_dir, parts[0].folds, seconds, computed, resumed, results[0].curves)

    # Each fold's run has its own folder; the model folder gets their union, ordered as a single run orders rows.
    curves = pd.concat([result.curves for result in results], ignore_index=True)
    curves = curves.sort_values(CURVE_KEYS, kind="stable").reset_index(drop=True)
    pairs = pd.concat([pd.read_csv(result.out / "pairs.csv") for result in results], ignore_index=True)
    pairs = pairs.sort_values(["attacked", "module", "value", "pair_id"], kind="stable")
    write_csv(model_dir / "curves.csv", curves)
    write_csv(model_dir / "pairs.csv", pairs)
    folds = [part.folds[0] for part in parts if part.folds]
    return ReproducedRun(spec_name, model_name, model_dir, folds, seconds, computed, resumed, curves)


def _settings(cfg: RunConfig, specs: tuple[str, ...], folds: object, absolute: bool) -> dict:
    """Collect the settings that identify a reproduction; `absolute` makes its paths absolute."""

    def path_text(path: Path) -> str:
        return str(Path(path).absolute()) if absolute else str(path)

    return {
        "specs": list(specs),
        "models": cfg.models,
        "folds": folds,
        "per_fold": cfg.per_fold,
        "seed": cfg.seed,
        "device": cfg.device.split(":")[0],
        "skip_missing": cfg.skip_missing,
        "weights": {name: path_text(path) for name, path in cfg.weights.items()},
        "data_root": path_text(cfg.data_root),
    }


def _marker(out: Path) -> str | None:
    path = out / MARKER
    return path.read_text(encoding="utf-8").strip() if path.is_file() else None


def _legacy_key(cfg: RunConfig, plans: dict[str, list[RunPart]], specs: tuple[str, ...]) -> str | None:
    """Return the id that reproduce gave before per-fold weights existed, or None where it could not have made it.

    That version hashed the folds of each model, as worked out from its
    weights, and the paths as given.
    """
    if any(parts[0].subfolder is not None for parts in plans.values()):
        return None
    folds = {name: parts[0].folds for name, parts in plans.items()}
    return identity_hash(_settings(cfg, specs, folds, absolute=False))


def _claim_output(out: Path, cfg: RunConfig, plans: dict[str, list[RunPart]], specs: tuple[str, ...]) -> bool:
    """Check that `out` is new or contains this same reproduction, then mark it; return whether `out` was created.

    A reproduction is identified by its options, with paths made absolute.
    The folds a weights folder contains are left out, so that a fold file
    added later resumes the reproduction with one more run. Every run
    folder inside is checked too, so that a conflict stops the command
    before any sweep runs.
    """
    settings = _settings(cfg, specs, cfg.folds, absolute=True)
    key = identity_hash(settings)
    existing = _marker(out)
    if existing is not None and existing == _legacy_key(cfg, plans, specs):
        # Made by an earlier version, which hashed other settings: adopt it, so that its runs resume.
        log.info("%s was made by an earlier version of frb reproduce; resuming it", out)
    else:
        check_output_folder(out, MARKER, "reproduction", key, settings)
    for spec_name in specs:
        for model_name, parts in plans.items():
            model_dir = out / spec_name / model_name
            if parts[0].subfolder is not None and (model_dir / RUN_MARKER).is_file():
                raise FrbError(
                    f"{model_dir} contains a run with one weights file, but {model_name} now has per-fold weights; "
                    "choose another --out or delete that folder"
                )
            for part in parts:
                # Each run checks its own settings when it starts, so any run id passes here.
                check_output_folder(model_dir / part.subfolder if part.subfolder else model_dir, RUN_MARKER, "run", None)
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
        mark_output_folder(out, MARKER, key, settings)
    except OSError as err:
        raise FrbError(f"cannot create output folder {out} ({err.strerror}); choose another --out") from None
    return created
