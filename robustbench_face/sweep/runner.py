"""`frb run`: attack LFW pairs over a budget sweep and write the results.

The run is split into fixed chunks of pairs. Each finished chunk is
written to its own part file, so an interrupted run resumes from the first
missing chunk, and the final CSVs are assembled from the parts in pair
order: no row is lost or written twice.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from ..attacks.adapter import PairClassifier
from ..attacks.sweeps import run_sweep
from ..data.pairs import Pair
from ..errors import FrbError
from ..models.base import Verifier
from ..models.registry import load_model
from ..results.curves import summarise_pairs
from ..results.plot import plot_curves
from ..results.provenance import build_record
from ..results.writer import write_csv, write_json
from .clean import CleanResult, clean_result, embed_images
from .config import RunConfig, identity_hash
from .prepare import Prepared, prepare_data

log = logging.getLogger(__name__)

# Pairs per part file. Fixed, so that the parts (and resuming) do not
# depend on the batch size.
CHUNK_PAIRS = 100

PAIR_COLUMNS = [
    "model",
    "module",
    "attack",
    "param",
    "value",
    "pair_id",
    "fold",
    "label",
    "score",
    "threshold",
    "decision",
    "correct",
    "clean_correct",
    "linf",
    "l2",
    "seconds",
]


@dataclass
class RunOutput:
    """The output folder of a finished run and its curves."""

    out: Path
    curves: pd.DataFrame
    resumed_chunks: int
    computed_chunks: int


def run(cfg: RunConfig, out: Path | None, command: str) -> RunOutput:
    """Run the sweep of `cfg` and write curves.csv, pairs.csv, run.json and plots."""
    started = time.time()
    torch.manual_seed(cfg.seed)
    prepared = prepare_data(cfg.data_root, cfg.cache_dir, cfg.folds, cfg.per_fold, cfg.skip_missing, cfg.progress)
    models = {name: load_model(name, cfg.weights.get(name), cfg.device) for name in cfg.models}
    weights_hashes = {name: prepared_weights_hash(name, cfg) for name in cfg.models}
    identity = cfg.identity(prepared.data_hash, weights_hashes)
    run_hash = identity_hash(identity)
    out = out or Path("results") / f"{cfg.spec.attack}-{run_hash}"
    parts_dir = _claim_output(out, run_hash)

    resumed = computed = 0
    for name, model in models.items():
        embeddings = embed_images(model, prepared.faces, prepared.image_relpaths, cfg.batch_size, cfg.device, cfg.progress)
        clean = clean_result(model, prepared.threshold_pairs, embeddings)
        chunks = [prepared.run_pairs[i : i + CHUNK_PAIRS] for i in range(0, len(prepared.run_pairs), CHUNK_PAIRS)]
        for index, chunk in enumerate(tqdm(chunks, desc=f"{cfg.spec.attack} {name}", unit="chunk", disable=not cfg.progress)):
            part = parts_dir / f"{name}__{index:05d}.csv"
            if part.is_file():
                resumed += 1
                continue
            rows = _attack_chunk(cfg, model, chunk, prepared, embeddings, clean)
            write_csv(part, rows)
            computed += 1

    pairs = _assemble_parts(parts_dir, cfg.models)
    curves = summarise_pairs(pairs)
    write_csv(out / "pairs.csv", pairs)
    write_csv(out / "curves.csv", curves)
    plot_curves(curves, out / "curves")
    record = build_record(cfg, command, identity, run_hash, prepared, started=started)
    write_json(out / "run.json", record)
    log.info("wrote %s (%d chunks computed, %d resumed)", out, computed, resumed)
    return RunOutput(out=out, curves=curves, resumed_chunks=resumed, computed_chunks=computed)


def prepared_weights_hash(name: str, cfg: RunConfig) -> str:
    from ..models.registry import weights_sha256

    return weights_sha256(name, cfg.weights.get(name))


def _claim_output(out: Path, run_hash: str) -> Path:
    """Check that `out` is empty or contains this same run, and return its parts folder."""
    marker = out / ".frb-run"
    if out.exists() and any(out.iterdir()):
        if not marker.is_file():
            raise FrbError(f"output folder {out} is not empty and contains no frb run; choose another --out")
        existing = marker.read_text().strip()
        if existing != run_hash:
            raise FrbError(
                f"output folder {out} contains a run with other settings (run {existing}, this is {run_hash}); "
                "choose another --out or delete that folder"
            )
    out.mkdir(parents=True, exist_ok=True)
    marker.write_text(run_hash + "\n")
    parts = out / ".parts"
    parts.mkdir(exist_ok=True)
    return parts


def _attack_chunk(
    cfg: RunConfig,
    model: Verifier,
    chunk: list[Pair],
    prepared: Prepared,
    embeddings: dict[str, torch.Tensor],
    clean: CleanResult,
) -> pd.DataFrame:
    """Attack one chunk of pairs at every budget, for every score of the model."""
    frames = []
    for score_name in model.score_names:
        classifier = PairClassifier(model, score_name)
        for start in range(0, len(chunk), cfg.batch_size):
            batch = chunk[start : start + cfg.batch_size]
            frames.append(_attack_batch(cfg, model, classifier, batch, prepared, embeddings, clean))
    return pd.concat(frames, ignore_index=True).sort_values(["module", "value", "pair_id"], kind="stable")


def _attack_batch(
    cfg: RunConfig,
    model: Verifier,
    classifier: PairClassifier,
    batch: list[Pair],
    prepared: Prepared,
    embeddings: dict[str, torch.Tensor],
    clean: CleanResult,
) -> pd.DataFrame:
    device = cfg.device
    probes = prepared.faces.tensor([pair.probe for pair in batch]).to(device)
    references = torch.stack([embeddings[pair.reference] for pair in batch]).to(device)
    labels = torch.tensor([pair.label for pair in batch], device=device)
    thresholds = torch.tensor(
        [clean.thresholds[classifier.score_name][pair.fold] for pair in batch], dtype=torch.float32
    )
    pair_ids = [pair.pair_id for pair in batch]

    classifier.set_references(references, thresholds)
    with torch.no_grad():
        clean_scores = classifier.scores(probes).cpu().numpy()
    threshold_values = thresholds.numpy().astype(np.float64)
    clean_correct = (clean_scores < threshold_values) == labels.cpu().numpy().astype(bool)

    rows = []
    for value, adv, seconds in run_sweep(cfg.spec, classifier, probes, labels, references, thresholds, pair_ids, cfg.seed):
        classifier.set_references(references, thresholds)
        with torch.no_grad():
            scores = classifier.scores(adv).cpu().numpy()
        delta = (adv - probes).flatten(1)
        linf = delta.abs().amax(dim=1).cpu().numpy()
        l2 = torch.linalg.vector_norm(delta, dim=1).cpu().numpy()
        decision = scores < threshold_values
        for i, pair in enumerate(batch):
            rows.append(
                {
                    "model": model.name,
                    "module": classifier.score_name,
                    "attack": cfg.spec.attack,
                    "param": cfg.spec.param,
                    "value": value,
                    "pair_id": pair.pair_id,
                    "fold": pair.fold,
                    "label": pair.label,
                    "score": float(scores[i]),
                    "threshold": float(threshold_values[i]),
                    "decision": int(decision[i]),
                    "correct": int(decision[i] == pair.same),
                    "clean_correct": int(clean_correct[i]),
                    "linf": float(linf[i]),
                    "l2": float(l2[i]),
                    # The batch's attack time, shared equally by its pairs.
                    "seconds": seconds / len(batch),
                }
            )
    return pd.DataFrame(rows, columns=PAIR_COLUMNS)


def _assemble_parts(parts_dir: Path, models: list[str]) -> pd.DataFrame:
    frames = []
    for name in models:
        for part in sorted(parts_dir.glob(f"{name}__*.csv")):
            frames.append(pd.read_csv(part))
    pairs = pd.concat(frames, ignore_index=True)
    order = {name: i for i, name in enumerate(models)}
    pairs = pairs.sort_values(
        ["model", "module", "value", "pair_id"], key=lambda col: col.map(order) if col.name == "model" else col, kind="stable"
    )
    return pairs.reset_index(drop=True)
