"""The weights a model runs with: one file for every fold, or one per held-out fold.

A model trained on LFW itself can only be tested on people it never saw,
so covering all 6,000 pairs takes ten models, each trained with one fold
held out (`frb train msn --cv` writes them as `msn-fold1.pt` ...
`msn-fold10.pt` into one folder). Passing that folder as the model's
weights makes runs and evaluations score each pair with the model that
held out the pair's fold.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from ..errors import FrbError
from .registry import weights_sha256


@dataclass(frozen=True)
class FoldWeights:
    """One weights file of model `name` and the LFW folds it scores (None: every fold)."""

    name: str
    weights: Path | None
    folds: tuple[int, ...] | None

    @cached_property
    def sha256(self) -> str:
        # Hashed on first use, after loading has checked that the file exists.
        return weights_sha256(self.name, self.weights)

    def covers(self, fold: int) -> bool:
        return self.folds is None or fold in self.folds


def fold_checkpoints(name: str, folder: Path) -> dict[int, Path]:
    """Find `<name>-fold<k>.pt` files in `folder`, by fold number; empty when there are none."""
    pattern = re.compile(rf"{re.escape(name)}-fold(\d+)\.pt")
    found = {}
    for path in folder.iterdir():
        match = pattern.fullmatch(path.name)
        if match:
            found[int(match.group(1))] = path
    return dict(sorted(found.items()))


def weights_by_fold(name: str, weights: Path | None) -> list[FoldWeights]:
    """Return the weights of model `name`: a single entry, or one per fold for a cross-validation folder.

    A folder counts as cross-validation weights when it contains
    `<name>-fold<k>.pt` files. Anything else is one weights file (or, for
    dlib-resnet, one weights folder) used for every fold.
    """
    if weights is not None and weights.is_dir():
        per_fold = fold_checkpoints(name, weights)
        if per_fold:
            return [FoldWeights(name, path, (fold,)) for fold, path in per_fold.items()]
    return [FoldWeights(name, weights, None)]


def identity_of(entries: list[FoldWeights]) -> str | dict[str, str]:
    """Describe the weights for a run's identity: the file's hash, or one hash per fold."""
    if len(entries) == 1 and entries[0].folds is None:
        return entries[0].sha256
    return {f"fold{entry.folds[0]}": entry.sha256 for entry in entries if entry.folds}


def needed(name: str, entries: list[FoldWeights], folds: Iterable[int]) -> list[FoldWeights]:
    """Return the entries that score some fold in `folds`; raise FrbError if a fold has no weights."""
    folds = sorted(set(folds))
    missing = [fold for fold in folds if not any(entry.covers(fold) for entry in entries)]
    if missing:
        folder = entries[0].weights.parent if entries[0].weights is not None else "the folder"
        have = ",".join(str(entry.folds[0]) for entry in entries if entry.folds)
        raise FrbError(
            f"--weights for {name} has no {name}-fold{missing[0]}.pt in {folder} (it has folds {have}); "
            f"train it with `frb train {name} --folds {missing[0]} --out {folder}` or pass --folds {have}"
        )
    return [entry for entry in entries if any(entry.covers(fold) for fold in folds)]
