"""Attacking one chunk of pairs: the unit of work, of resuming and of parallelism.

A chunk task carries everything it needs (probe crops, reference
embeddings, thresholds), so joblib can run it in another process without
the whole data set.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..attacks.adapter import PairClassifier
from ..attacks.budgets import AttackSpec
from ..attacks.sweeps import run_sweep
from ..data.pairs import Pair
from ..models.base import Verifier
from ..models.registry import load_model

PAIR_COLUMNS = [
    "model",
    "module",
    "attacked",
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
]


@dataclass
class ChunkTask:
    """One chunk of pairs to attack with one model, at every budget."""

    model_name: str
    weights: Path | None
    spec: AttackSpec
    seed: int
    batch_size: int
    device: str
    pairs: list[Pair]
    probes: torch.Tensor  # uint8 (N, 3, 160, 160)
    references: torch.Tensor  # reference embeddings (N, D)
    thresholds: dict[str, list[float]]  # score name -> one threshold per pair
    torch_threads: int | None = None


_MODELS: dict[tuple[str, str, str], Verifier] = {}


def _model_for(task: ChunkTask) -> Verifier:
    """Load a model once per process, because workers receive many chunks."""
    key = (task.model_name, str(task.weights), task.device)
    if key not in _MODELS:
        _MODELS[key] = load_model(task.model_name, task.weights, task.device)
    return _MODELS[key]


def attack_chunk(task: ChunkTask, model: Verifier | None = None) -> pd.DataFrame:
    """Attack every pair of the chunk at every budget, for every score of the model.

    Returns the pair rows plus a `seconds` column: the batch's attack time
    shared equally by its pairs.
    """
    if task.torch_threads is not None:
        torch.set_num_threads(task.torch_threads)
    model = model or _model_for(task)
    frames = []
    for score_name in model.score_names:
        classifier = PairClassifier(model, score_name)
        for start in range(0, len(task.pairs), task.batch_size):
            rows = slice(start, start + task.batch_size)
            frames.append(_attack_batch(task, model, classifier, rows))
    frame = pd.concat(frames, ignore_index=True)
    return frame.sort_values(["attacked", "module", "value", "pair_id"], kind="stable").reset_index(drop=True)


def _attack_batch(task: ChunkTask, model: Verifier, classifier: PairClassifier, rows: slice) -> pd.DataFrame:
    device = task.device
    batch = task.pairs[rows]
    probes = task.probes[rows].to(device).float().div_(255.0)
    references = task.references[rows].to(device)
    labels = torch.tensor([pair.label for pair in batch], device=device)
    thresholds = torch.tensor(task.thresholds[classifier.score_name][rows], dtype=torch.float32)
    pair_ids = [pair.pair_id for pair in batch]

    # Whose decisions are scored: the attacked score itself and, when the
    # whole model is attacked, each of its modules too.
    scored = [classifier.score_name]
    if classifier.score_name == model.score_names[0]:
        scored += list(model.score_names[1:])
    score_thresholds = {
        name: np.asarray(task.thresholds[name][rows], dtype=np.float64) for name in scored
    }
    truth = np.array([pair.same for pair in batch])

    classifier.set_references(references, thresholds)
    with torch.no_grad():
        clean_scores = {name: value.cpu().numpy() for name, value in classifier.all_scores(probes).items()}
    clean_correct = {name: (clean_scores[name] < score_thresholds[name]) == truth for name in scored}

    records = []
    sweep = run_sweep(task.spec, classifier, probes, labels, references, thresholds, pair_ids, task.seed)
    for value, adv, seconds, known_scores in sweep:
        if known_scores is None:
            classifier.set_references(references, thresholds)
            with torch.no_grad():
                known_scores = classifier.all_scores(adv)
        all_scores = {name: score.detach().cpu().numpy() for name, score in known_scores.items()}
        delta = (adv - probes).flatten(1)
        linf = delta.abs().amax(dim=1).cpu().numpy()
        l2 = torch.linalg.vector_norm(delta, dim=1).cpu().numpy()
        for name in scored:
            scores = all_scores[name]
            decision = scores < score_thresholds[name]
            for i, pair in enumerate(batch):
                records.append(
                    {
                        "model": model.name,
                        "module": name,
                        "attacked": classifier.score_name,
                        "attack": task.spec.attack,
                        "param": task.spec.param,
                        "value": value,
                        "pair_id": pair.pair_id,
                        "fold": pair.fold,
                        "label": pair.label,
                        "score": float(scores[i]),
                        "threshold": float(score_thresholds[name][i]),
                        "decision": int(decision[i]),
                        "correct": int(decision[i] == pair.same),
                        "clean_correct": int(clean_correct[name][i]),
                        "linf": float(linf[i]),
                        "l2": float(l2[i]),
                        "seconds": seconds / len(batch),
                    }
                )
    return pd.DataFrame(records, columns=[*PAIR_COLUMNS, "seconds"])
