"""The weights a model runs with: one file for every fold, or one per held-out fold.

A model trained on LFW itself can only be tested on people it never saw,
so covering all 6,000 pairs takes ten models, each trained with one fold
held out (`frb train msn --cv` writes them as `msn-fold1.pt` ...
`msn-fold10.pt` into one folder). Passing that folder as the model's
weights makes runs and evaluations score each pair with the model that
held out the pair's fold.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from ..errors import FrbError
from .base import Verifier
from .registry import MODELS, load_model, weights_sha256

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FoldWeights:
    """One weights file of model `name` and the LFW folds it scores (None: every fold)."""

    name: str
    weights: Path | None
    folds: tuple[int, ...] | None

    @cached_property
    def sha256(self) -> str:
        # Hashed on first use: `load_entry` loads first, so that a missing
        # file gets the model's own error.
        return weights_sha256(self.name, self.weights)

    def covers(self, fold: int) -> bool:
        return self.folds is None or fold in self.folds


def describe_folds(folds: Iterable[int] | None) -> str:
    """Name a fold list briefly: "all folds", "fold 10", "folds 1-10" or "folds 1,3"."""
    if folds is None:
        return "all folds"
    folds = sorted(set(folds))
    if len(folds) == 1:
        return f"fold {folds[0]}"
    if folds == list(range(folds[0], folds[-1] + 1)):
        return f"folds {folds[0]}-{folds[-1]}"
    return "folds " + ",".join(map(str, folds))


def fold_list(folds: Iterable[int]) -> str:
    """Write folds as a --folds value: "1-9" or "1,3"."""
    return describe_folds(folds).split(" ", 1)[1]


def fold_checkpoints(name: str, folder: Path) -> dict[int, Path]:
    """Find `<name>-fold<k>.pt` files in `folder`, by fold number; empty when there are none.

    A file that starts like one but is named otherwise (`msn-fold01.pt`,
    `msn-fold3.pth`) is left out with a warning, so that no two files can
    claim the same fold.
    """
    pattern = re.compile(rf"{re.escape(name)}-fold([1-9][0-9]*)\.pt")
    found = {}
    for path in sorted(folder.iterdir()):
        match = pattern.fullmatch(path.name)
        if match:
            found[int(match.group(1))] = path
        elif path.name.startswith(f"{name}-fold") and path.suffix in (".pt", ".pth"):
            log.warning("ignoring %s: per-fold weights are named %s-fold<k>.pt, e.g. %s-fold1.pt", path, name, name)
    return dict(sorted(found.items()))


def weights_by_fold(name: str, weights: Path | None) -> list[FoldWeights]:
    """Return the weights of model `name`: a single entry, or one per fold for a cross-validation folder.

    A folder counts as cross-validation weights when it contains
    `<name>-fold<k>.pt` files. A folder without them is an error, unless
    the model's own weights come as a folder (dlib-resnet).
    """
    if weights is not None and weights.is_dir():
        per_fold = fold_checkpoints(name, weights)
        if per_fold:
            return [FoldWeights(name, path, (fold,)) for fold, path in per_fold.items()]
        if not MODELS[name].weights_folder:
            fix = "give a weights file"
            if MODELS[name].trainable:
                fix += f", or a folder written by `frb train {name} --cv --out {weights}`"
            raise FrbError(f"--weights {name}={weights} is a folder without {name}-fold<k>.pt files; {fix}")
    return [FoldWeights(name, weights, None)]


def identity_of(entries: list[FoldWeights]) -> str | dict[str, str]:
    """Describe the weights for a run's identity: the file's hash, or one hash per fold."""
    if len(entries) == 1 and entries[0].folds is None:
        return entries[0].sha256
    return {f"fold{entry.folds[0]}": entry.sha256 for entry in entries if entry.folds}


def needed(name: str, entries: list[FoldWeights], folds: Iterable[int]) -> list[FoldWeights]:
    """Return the entries that score some fold in `folds`; raise FrbError naming every fold without weights."""
    folds = sorted(set(folds))
    missing = [fold for fold in folds if not any(entry.covers(fold) for entry in entries)]
    if missing:
        folder = entries[0].weights.parent if entries[0].weights is not None else "the folder"
        have = [fold for entry in entries for fold in entry.folds or ()]
        covered = [fold for fold in folds if fold not in missing]
        fixes = []
        if MODELS[name].trainable:
            them = "it" if len(missing) == 1 else "them"
            fixes.append(f"train {them} with `frb train {name} --folds {fold_list(missing)} --out {folder}`")
        if covered:
            fixes.append(f"pass --folds {fold_list(covered)}")
        fix = " or ".join(fixes) or f"add the missing {name}-fold<k>.pt files"
        raise FrbError(
            f"--weights {name}={folder} lacks {name}-fold<k>.pt for {describe_folds(missing)} "
            f"(it has {describe_folds(have)}); {fix}"
        )
    return [entry for entry in entries if any(entry.covers(fold) for fold in folds)]


def load_entry(entry: FoldWeights, device: str = "cpu") -> Verifier:
    """Load the model of `entry`; a per-fold file must have held out the fold its name gives."""
    model = load_model(entry.name, entry.weights, device)
    # Hashed now, right after loading, so that the id of a run names the
    # file it loaded even if the file is replaced while the run aligns faces.
    _ = entry.sha256
    if entry.folds is not None:
        held_out = model.lfw_test_folds()
        if held_out is not None and tuple(held_out) != entry.folds:
            record = describe_folds(held_out) if held_out else "no fold"
            raise FrbError(
                f"{entry.weights} held out {record} in training, not fold {entry.folds[0]}; "
                f"replace it with a model trained with fold {entry.folds[0]} held out"
            )
    return model
