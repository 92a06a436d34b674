"""`frb reproduce`: every robustness sweep of Dammu et al. (PSTCI 2021) in one command.

Runs each shipped sweep spec (FGSM and FFGSM over eps, DeepFool over
steps) for each model, one ordinary run per (spec, model) under
`OUT/<spec>/<model>/`, so each resumes on its own like `frb run`. A model
trained on LFW (MSN) is attacked only on the folds it held out unless
`--folds` says otherwise, because its accuracy on its training people is
not a test result. The wall time of every run, and of the whole command,
goes into `OUT/reproduce.json`; `OUT/robustness.png` and `.pdf` draw all
curves side by side.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd

from ..attacks.specs import build_spec, load_spec
from ..errors import FrbError
from ..models.folds import weights_by_fold
from ..models.registry import load_model
from ..results.plot import plot_panels
from ..results.writer import write_json
from .config import RunConfig, identity_hash
from .runner import RUN_MARKER, check_output_folder, run

log = logging.getLogger(__name__)

# Name of the file that marks a folder as a reproduction. It contains the hash of its settings.
MARKER = ".frb-reproduce"


@dataclass
class ReproducedRun:
    """One (spec, model) run of a reproduction."""

    spec: str
    model: str
    out: Path
    folds: list[int] | None
    seconds: float
    computed_chunks: int
    resumed_chunks: int
    curves: pd.DataFrame


def folds_for(model_name: str, cfg: RunConfig) -> list[int] | None:
    """Return the folds to attack `model_name` on: `cfg.folds` when given, else its held-out folds (None: all).

    Cross-validation weights (one file per held-out fold) give the folds
    they have files for. A model that trained on LFW without recording a
    held-out fold gets all folds, and the run warns that they include its
    training people.
    """
    if cfg.folds is not None:
        return cfg.folds
    entries = weights_by_fold(model_name, cfg.weights.get(model_name))
    if entries[0].folds is not None:
        return sorted(fold for entry in entries for fold in entry.folds or ())
    held_out = load_model(model_name, entries[0].weights, cfg.device).lfw_test_folds()
    return sorted(held_out) if held_out else None


def reproduce(cfg: RunConfig, out: Path, specs: tuple[str, ...], command: str) -> list[ReproducedRun]:
    """Run every spec in `specs` for every model of `cfg` under `out`; write reproduce.json and the figure.

    `cfg.spec` is ignored: each run takes its attack and budgets from its
    shipped spec. Everything else (data, folds, pairs, seed, batch size,
    jobs, device) applies to every run.
    """
    started = time.time()
    # Loading every model first also checks its weights before any output exists.
    folds = {model_name: folds_for(model_name, cfg) for model_name in cfg.models}
    plan = [(spec_name, build_spec(load_spec(spec_name))) for spec_name in specs]
    created = _claim_output(out, cfg, folds, specs)
    runs: list[ReproducedRun] = []
    try:
        for spec_name, spec in plan:
            for model_name in cfg.models:
                run_cfg = replace(cfg, spec=spec, models=[model_name], folds=folds[model_name])
                run_dir = out / spec_name / model_name
                began = time.perf_counter()
                result = run(run_cfg, run_dir, command=command)
                seconds = time.perf_counter() - began
                log.info("%s on %s: %.0f s (%d chunks computed)", spec_name, model_name, seconds, result.computed_chunks)
                runs.append(
                    ReproducedRun(
                        spec_name, model_name, run_dir, folds[model_name], seconds, result.computed_chunks,
                        result.resumed_chunks, result.curves,
                    )
                )
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


def _claim_output(out: Path, cfg: RunConfig, folds: dict[str, list[int] | None], specs: tuple[str, ...]) -> bool:
    """Check that `out` is new or contains this same reproduction, then mark it; return whether `out` was created.

    Every run folder inside is checked too, so that a conflict stops the
    command before any sweep runs.
    """
    settings = {
        "specs": list(specs),
        "models": cfg.models,
        "folds": folds,
        "per_fold": cfg.per_fold,
        "seed": cfg.seed,
        "device": cfg.device.split(":")[0],
        "skip_missing": cfg.skip_missing,
        "weights": {name: str(path) for name, path in cfg.weights.items()},
        "data_root": str(cfg.data_root),
    }
    key = identity_hash(settings)
    check_output_folder(out, MARKER, "reproduction", key)
    for spec_name in specs:
        for model_name in cfg.models:
            # Each run checks its own settings when it starts, so any run id passes here.
            check_output_folder(out / spec_name / model_name, RUN_MARKER, "run", None)
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / MARKER).write_text(key + "\n", encoding="utf-8")
    except OSError as err:
        raise FrbError(f"cannot create output folder {out} ({err.strerror}); choose another --out") from None
    return created
