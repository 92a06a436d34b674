"""Clean embeddings, scores and per-fold thresholds of a model, cached on disk."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import joblib
import numpy as np
import torch
from tqdm import tqdm

from ..data.faces import FaceStore
from ..data.pairs import Pair
from ..evaluation.protocol import fold_thresholds
from ..models.base import Verifier

log = logging.getLogger(__name__)


@torch.no_grad()
def embed_images(
    model: Verifier, faces: FaceStore, relpaths: list[str], batch_size: int, device: str, progress: bool = False
) -> dict[str, torch.Tensor]:
    """Embed each image once and return CPU embeddings keyed by relative path."""
    embeddings: dict[str, torch.Tensor] = {}
    starts = range(0, len(relpaths), batch_size)
    for start in tqdm(starts, desc=f"embed {model.name}", unit="batch", disable=not progress, leave=False):
        batch = relpaths[start : start + batch_size]
        out = model.embed_stable(faces.tensor(batch).to(device)).cpu()
        embeddings.update(zip(batch, out))
    return embeddings


@dataclass
class CleanResult:
    """A model's clean scores on a set of pairs and the thresholds they give."""

    scores: dict[str, np.ndarray]  # score name -> one score per pair
    thresholds: dict[str, dict[int, float]]  # score name -> fold -> threshold


@torch.no_grad()
def clean_result(model: Verifier, pairs: list[Pair], embeddings: dict[str, torch.Tensor]) -> CleanResult:
    """Score every pair and choose each fold's threshold on the other folds."""
    probe = torch.stack([embeddings[pair.probe] for pair in pairs])
    reference = torch.stack([embeddings[pair.reference] for pair in pairs])
    scores = {name: value.numpy().astype(np.float64) for name, value in model.compare(probe, reference).items()}
    labels = np.array([pair.same for pair in pairs])
    folds = np.array([pair.fold for pair in pairs])
    thresholds = {name: fold_thresholds(values, labels, folds) for name, values in scores.items()}
    return CleanResult(scores=scores, thresholds=thresholds)


def _compute_clean(
    model_name: str,
    weights_sha256: str,
    data_sha256: str,
    settings_digest: str,
    relpaths: tuple[str, ...],
    pair_keys: tuple[tuple[int, int, bool, str, str], ...],
    device_type: str,
    *,
    model: Verifier,
    faces: FaceStore,
    pairs: list[Pair],
    batch_size: int,
    progress: bool,
) -> tuple[dict[str, torch.Tensor], CleanResult]:
    # Only the positional arguments form the cache key: they name the model,
    # its weights, the image bytes, the aligned images and the pairs.
    # Embeddings do not depend on the batch size (see
    # models.base.STABLE_BATCH) but may on the device.
    del model_name, weights_sha256, data_sha256, settings_digest, relpaths, pair_keys, device_type
    embeddings = embed_images(model, faces, faces.relpaths, batch_size, str(next(model.parameters()).device), progress)
    return embeddings, clean_result(model, pairs, embeddings)


def cached_clean(
    model: Verifier,
    weights_sha256: str,
    data_sha256: str,
    faces: FaceStore,
    pairs: list[Pair],
    cache_dir: Path | None,
    batch_size: int,
    progress: bool = False,
) -> tuple[dict[str, torch.Tensor], CleanResult]:
    """Return embeddings of every image and the clean result, from the disk cache when present.

    With `cache_dir` None nothing is cached. The cache lives in
    `<cache_dir>/joblib` and is shared by runs, attacks and `frb eval`.
    `data_sha256` (`Prepared.data_hash`) ties it to the bytes of the pairs
    file and images, so an image replaced in place is embedded again.
    """
    device_type = next(model.parameters()).device.type
    key = (
        model.name,
        weights_sha256,
        data_sha256,
        faces.settings_digest,
        tuple(faces.relpaths),
        tuple((pair.pair_id, pair.fold, pair.same, pair.probe, pair.reference) for pair in pairs),
        device_type,
    )
    extra = {"model": model, "faces": faces, "pairs": pairs, "batch_size": batch_size, "progress": progress}
    if cache_dir is None:
        return _compute_clean(*key, **extra)
    memory = joblib.Memory(Path(cache_dir) / "joblib", verbose=0)
    cached = memory.cache(_compute_clean, ignore=["model", "faces", "pairs", "batch_size", "progress"])
    return cached(*key, **extra)
