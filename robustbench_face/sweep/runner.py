"""`frb run`: attack LFW pairs over a budget sweep and write the results.

The run is split into fixed chunks of pairs. Each finished chunk is
written to its own part file, so an interrupted run resumes from the
missing chunks, and the final CSVs are assembled from the parts in pair
order: no row is lost or written twice. Chunks are also the unit that
`--jobs` spreads over worker processes.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from joblib import Parallel, delayed
from tqdm import tqdm

from ..errors import FrbError
from ..models.base import Verifier, warn_if_trained_on
from ..models.folds import FoldWeights, identity_of, load_entry, needed, weights_by_fold
from ..results.curves import summarise_pairs, summarise_timings
from ..results.plot import plot_curves
from ..results.provenance import build_record
from ..results.writer import write_csv, write_json
from .chunks import PAIR_COLUMNS, ChunkTask, attack_chunk
from .clean import cached_clean
from .config import RunConfig, identity_hash
from .prepare import Prepared, align_data, select_data

log = logging.getLogger(__name__)

# Pairs per part file. Fixed, so that the parts (and resuming) do not
# depend on the batch size or the number of jobs.
CHUNK_PAIRS = 100
# Name of the file that marks a folder as a run. It contains the run id.
RUN_MARKER = ".frb-run"


@dataclass
class RunOutput:
    """The output folder of a finished run and its curves."""

    out: Path
    curves: pd.DataFrame
    resumed_chunks: int
    computed_chunks: int


def run(cfg: RunConfig, out: Path | None, command: str, memo: dict | None = None) -> RunOutput:
    """Run the sweep of `cfg` and write curves.csv, pairs.csv, timings.csv, run.json and plots.

    `memo` is passed to `align_data`, for callers that run many sweeps on the same images.
    """
    started = time.time()
    torch.manual_seed(cfg.seed)
    selection = select_data(cfg.data_root, cfg.folds, cfg.per_fold, cfg.skip_missing)
    run_folds = {pair.fold for pair in selection.run_pairs}
    entries = {name: needed(name, weights_by_fold(name, cfg.weights.get(name)), run_folds) for name in cfg.models}
    # Load every model before aligning faces (minutes on a cold cache) and
    # before touching the output folder, so that missing or corrupt weights
    # fail at once and leave no half-made run behind.
    models = {(name, entry.weights): load_entry(entry, cfg.device) for name in cfg.models for entry in entries[name]}
    prepared = align_data(selection, cfg.cache_dir, cfg.progress, memo)
    for name in cfg.models:
        for entry in entries[name]:
            warn_if_trained_on(models[name, entry.weights], {fold for fold in run_folds if entry.covers(fold)})
    identity = cfg.identity(prepared.data_hash, {name: identity_of(entries[name]) for name in cfg.models})
    run_hash = identity_hash(identity)
    out = out or Path("results") / f"{cfg.spec.attack}-{run_hash}"
    parts_dir = _claim_output(out, run_hash, identity)

    resumed = computed = 0
    for name in cfg.models:
        tasks = [
            task
            for entry in entries[name]
            for task in _chunk_tasks(cfg, name, models[name, entry.weights], entry, prepared)
        ]
        todo = {index: task for index, task in enumerate(tasks) if not _part_path(parts_dir, name, index).is_file()}
        resumed += len(tasks) - len(todo)
        bar = tqdm(total=len(tasks), initial=len(tasks) - len(todo), desc=f"{cfg.spec.attack} {name}",
                   unit="chunk", disable=not cfg.progress)
        for index, rows in _execute(todo, cfg.jobs, models):
            write_csv(_part_path(parts_dir, name, index), rows)
            computed += 1
            bar.update(1)
        bar.close()

    parts = _assemble_parts(parts_dir, cfg.models)
    curves = summarise_pairs(parts)
    write_csv(out / "pairs.csv", parts[PAIR_COLUMNS])
    write_csv(out / "curves.csv", curves)
    write_csv(out / "timings.csv", summarise_timings(parts))
    plot_curves(curves, out / "curves")
    write_json(out / "run.json", build_record(cfg, command, identity, run_hash, prepared, started=started))
    log.info("wrote %s (%d chunks computed, %d resumed)", out, computed, resumed)
    return RunOutput(out=out, curves=curves, resumed_chunks=resumed, computed_chunks=computed)


def _chunk_tasks(cfg: RunConfig, name: str, model: Verifier, entry: FoldWeights, prepared: Prepared) -> list[ChunkTask]:
    """Cut the attacked pairs that `entry` scores into chunks that carry their own inputs."""
    embeddings, clean = cached_clean(
        model, entry.sha256, prepared.data_hash, prepared.faces, prepared.threshold_pairs, cfg.cache_dir,
        cfg.batch_size, cfg.progress,
    )
    threads = max(1, (os.cpu_count() or 1) // cfg.jobs) if cfg.jobs > 1 else None
    pairs = [pair for pair in prepared.run_pairs if entry.covers(pair.fold)]
    tasks = []
    for start in range(0, len(pairs), CHUNK_PAIRS):
        chunk = pairs[start : start + CHUNK_PAIRS]
        tasks.append(
            ChunkTask(
                model_name=name,
                weights=entry.weights,
                spec=cfg.spec,
                seed=cfg.seed,
                batch_size=cfg.batch_size,
                device=cfg.device,
                pairs=chunk,
                probes=prepared.faces.crops_of([pair.probe for pair in chunk]),
                references=torch.stack([embeddings[pair.reference] for pair in chunk]),
                thresholds={
                    score: [clean.thresholds[score][pair.fold] for pair in chunk] for score in model.score_names
                },
                torch_threads=threads,
            )
        )
    return tasks


def _execute(todo: dict[int, ChunkTask], jobs: int, models: dict[tuple[str, Path | None], Verifier]):
    """Yield `(chunk index, rows)` as chunks finish, in this process or in `jobs` workers.

    `models` maps name and weights to the loaded models, which this
    process reuses; workers load their own.
    """
    if jobs == 1:
        for index, task in todo.items():
            yield index, attack_chunk(task, models[task.model_name, task.weights])
        return
    indices = list(todo)
    # Workers load their own copy of the model; results come back as they
    # finish so each part is written (and safe from interruption) at once.
    results = Parallel(n_jobs=jobs, return_as="generator_unordered")(
        delayed(_indexed)(index, todo[index]) for index in indices
    )
    yield from results


def _indexed(index: int, task: ChunkTask) -> tuple[int, pd.DataFrame]:
    return index, attack_chunk(task)


def _part_path(parts_dir: Path, model_name: str, index: int) -> Path:
    return parts_dir / f"{model_name}__{index:05d}.csv"


def check_output_folder(out: Path, marker: str, kind: str, key: str | None, settings: dict | None = None) -> None:
    """Raise FrbError unless `out` is missing or empty, or its `marker` file contains `key` (any key when None).

    `kind` names what the marker marks ("run", "reproduction") in the
    error. With `settings`, the error also names the settings that differ
    from those `mark_output_folder` recorded.
    """
    if not (out.exists() and any(out.iterdir())):
        return
    path = out / marker
    if not path.is_file():
        raise FrbError(f"output folder {out} is not empty and contains no frb {kind}; choose another --out")
    existing = path.read_text(encoding="utf-8").strip()
    if key is not None and existing != key:
        differing = _differing_settings(out / f"{marker}.json", settings)
        detail = f", differing in {', '.join(differing)}" if differing else ""
        raise FrbError(
            f"output folder {out} contains a {kind} with other settings ({kind} {existing}, this is {key}{detail}); "
            "choose another --out or delete that folder"
        )


def mark_output_folder(out: Path, marker: str, key: str, settings: dict) -> None:
    """Write the marker that `check_output_folder` reads, and the settings behind its key."""
    (out / marker).write_text(key + "\n", encoding="utf-8")
    write_json(out / f"{marker}.json", settings)


def _differing_settings(path: Path, settings: dict | None) -> list[str]:
    """Name the top-level settings that differ from those recorded in `path` (none if unknown)."""
    if settings is None or not path.is_file():
        return []
    try:
        recorded = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    # Compare as JSON, the form in which the settings were recorded.
    current = json.loads(json.dumps(settings, default=str))
    names = sorted(set(recorded) | set(current))
    return [name for name in names if recorded.get(name) != current.get(name)]


def _claim_output(out: Path, run_hash: str, identity: dict) -> Path:
    """Check that `out` is empty or contains this same run, and return its parts folder."""
    check_output_folder(out, RUN_MARKER, "run", run_hash, identity)
    try:
        out.mkdir(parents=True, exist_ok=True)
        mark_output_folder(out, RUN_MARKER, run_hash, identity)
        parts = out / ".parts"
        parts.mkdir(exist_ok=True)
    except OSError as err:
        raise FrbError(f"cannot create output folder {out} ({err.strerror}); choose another --out") from None
    return parts


def _assemble_parts(parts_dir: Path, models: list[str]) -> pd.DataFrame:
    frames = []
    for name in models:
        for part in sorted(parts_dir.glob(f"{name}__*.csv")):
            frames.append(pd.read_csv(part))
    pairs = pd.concat(frames, ignore_index=True)
    order = {name: i for i, name in enumerate(models)}
    pairs = pairs.sort_values(
        ["model", "attacked", "module", "value", "pair_id"],
        key=lambda column: column.map(order) if column.name == "model" else column,
        kind="stable",
    )
    return pairs.reset_index(drop=True)
