"""Clean embeddings, scores and per-fold thresholds of a model."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from ..data.faces import FaceStore
from ..data.pairs import Pair
from ..evaluation.protocol import fold_thresholds
from ..models.base import Verifier


@torch.no_grad()
def embed_images(
    model: Verifier, faces: FaceStore, relpaths: list[str], batch_size: int, device: str, progress: bool = False
) -> dict[str, torch.Tensor]:
    """Embed each image once; returns CPU embeddings keyed by relative path."""
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
