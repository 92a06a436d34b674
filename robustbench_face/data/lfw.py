"""Locating LFW under a data root and checking that its images exist."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import FrbError
from .pairs import Pair

log = logging.getLogger(__name__)

IMAGE_FOLDERS = ("lfw-deepfunneled", "lfw")


@dataclass
class LFW:
    """An LFW copy: its image folder and protocol files."""

    root: Path  # the folder that contains pairs.txt
    images: Path  # the folder that contains <Name>/<Name>_NNNN.jpg

    @property
    def pairs_file(self) -> Path:
        return self.root / "pairs.txt"

    def image_path(self, relpath: str) -> Path:
        return self.images / relpath


def locate_lfw(data_root: Path) -> LFW:
    """Find LFW under `data_root` (as `lfw/` or the root itself).

    The image folder is `lfw-deepfunneled/` if present, else `lfw/`.
    """
    data_root = Path(data_root)
    hint = (
        "run `frb data download lfw`, or point --data-root / FRB_DATA_ROOT at a folder "
        "that contains lfw/pairs.txt and lfw/lfw-deepfunneled/"
    )
    if not data_root.is_dir():
        raise FrbError(f"data root {data_root} does not exist; {hint}")
    for root in (data_root / "lfw", data_root):
        if not (root / "pairs.txt").is_file():
            continue
        for name in IMAGE_FOLDERS:
            images = root / name
            # The original release nests images one level deeper in its own
            # lfw/ folder; accept a root whose image folder is that folder.
            if images.is_dir() and not (images / "pairs.txt").exists():
                return LFW(root=root, images=images)
        raise FrbError(f"no LFW image folder ({' or '.join(IMAGE_FOLDERS)}) beside {root / 'pairs.txt'}; {hint}")
    raise FrbError(f"no LFW found under {data_root} (looked for lfw/pairs.txt); {hint}")


@dataclass
class PairSet:
    """The pairs of a run after missing images were handled."""

    pairs: list[Pair]
    skipped: list[Pair] = field(default_factory=list)


def check_images(lfw: LFW, pairs: list[Pair], skip_missing: bool = False) -> PairSet:
    """Check that the images of `pairs` exist.

    A missing image is an error unless `skip_missing` is set, in which case
    its pair is left out and listed in `skipped`. Pairs keep their official
    fold id, so a skipped pair never moves another pair to another fold.
    """
    kept: list[Pair] = []
    skipped: list[Pair] = []
    for pair in pairs:
        missing = [rel for rel in (pair.probe, pair.reference) if not lfw.image_path(rel).is_file()]
        if not missing:
            kept.append(pair)
        elif skip_missing:
            log.warning("skipping pair %d (fold %d): image %s not found", pair.pair_id, pair.fold, missing[0])
            skipped.append(pair)
        else:
            raise FrbError(
                f"image {lfw.image_path(missing[0])} of pair {pair.pair_id} (fold {pair.fold}) not found; "
                "restore it, or pass --skip-missing to leave such pairs out"
            )
    return PairSet(pairs=kept, skipped=skipped)
