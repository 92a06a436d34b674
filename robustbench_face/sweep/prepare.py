"""Loading the pairs and aligned faces a run or an evaluation needs."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

from ..data.align import file_sha256
from ..data.faces import FaceStore, load_faces
from ..data.lfw import LFW, check_images, locate_lfw
from ..data.pairs import Pair, parse_pairs, select_pairs
from ..errors import FrbError

log = logging.getLogger(__name__)


@dataclass
class Selection:
    """The pairs of a run or an evaluation, checked but not yet aligned."""

    lfw: LFW
    threshold_pairs: list[Pair]  # every fold, for the protocol's thresholds
    run_pairs: list[Pair]  # the folds that are attacked or evaluated
    skipped: list[Pair]


@dataclass
class Prepared:
    """A selection with its aligned faces and data hash, shared by every model of a run."""

    selection: Selection
    faces: FaceStore
    data_hash: str

    @property
    def lfw(self) -> LFW:
        return self.selection.lfw

    @property
    def threshold_pairs(self) -> list[Pair]:
        return self.selection.threshold_pairs

    @property
    def run_pairs(self) -> list[Pair]:
        return self.selection.run_pairs

    @property
    def skipped(self) -> list[Pair]:
        return self.selection.skipped

    @property
    def image_relpaths(self) -> list[str]:
        return self.faces.relpaths

    @property
    def fallback_images(self) -> list[str]:
        return self.faces.fallbacks


def select_data(
    data_root: Path,
    folds: list[int] | None = None,
    per_fold: int | None = None,
    skip_missing: bool = False,
) -> Selection:
    """Parse and select pairs and check that their images exist; fast, so callers can check models next.

    Thresholds need every fold, so all folds are selected (each limited to
    `per_fold` pairs); `folds` picks the folds to attack or report.
    """
    lfw = locate_lfw(data_root)
    all_pairs = parse_pairs(lfw.pairs_file)
    selected = select_pairs(all_pairs, folds=None, per_fold=per_fold)
    if folds is not None:
        select_pairs(all_pairs, folds=folds)  # validates the fold ids
    checked = check_images(lfw, selected, skip_missing=skip_missing)
    wanted = set(folds) if folds is not None else None
    run_pairs = [pair for pair in checked.pairs if wanted is None or pair.fold in wanted]
    if not run_pairs:
        raise FrbError(
            f"every pair of the chosen folds lacks an image (--skip-missing left out {len(checked.skipped)}); "
            f"restore the images under {lfw.images}"
        )
    return Selection(lfw=lfw, threshold_pairs=checked.pairs, run_pairs=run_pairs, skipped=checked.skipped)


def align_data(
    selection: Selection, cache_dir: Path, progress: bool = True, memo: dict | None = None
) -> Prepared:
    """Align the faces of every selected pair (the slow part, cached on disk) and hash the data.

    `memo` is a dict that the caller keeps across calls. The faces and
    hash of a call are stored in it, so that the many runs of one
    reproduction read and hash the images once.
    """
    lfw = selection.lfw
    relpaths = sorted({rel for pair in selection.threshold_pairs for rel in (pair.probe, pair.reference)})
    key = (str(lfw.root), str(lfw.images), str(cache_dir), tuple(relpaths))
    if memo is not None and key in memo:
        faces, digest = memo[key]
    else:
        faces = load_faces(lfw, relpaths, cache_dir, progress=progress)
        if faces.fallbacks:
            log.warning(
                "%d of %d images had no detected face and use the fallback alignment", len(faces.fallbacks), len(relpaths)
            )
        digest = data_hash(lfw, relpaths, faces.source_sha256)
        if memo is not None:
            memo[key] = (faces, digest)
    return Prepared(selection=selection, faces=faces, data_hash=digest)


def prepare_data(
    data_root: Path,
    cache_dir: Path,
    folds: list[int] | None = None,
    per_fold: int | None = None,
    skip_missing: bool = False,
    progress: bool = True,
) -> Prepared:
    """Select the pairs and align their faces: `select_data` then `align_data`."""
    return align_data(select_data(data_root, folds, per_fold, skip_missing), cache_dir, progress)


def data_hash(lfw: LFW, relpaths: list[str], image_sha256: list[str] | None = None) -> str:
    """sha256 over pairs.txt and the bytes of every image used, in path order.

    `image_sha256` gives the hex digests of the images in `relpaths` order
    when the caller has them already. An image with an empty entry is read
    from disk.
    """
    known = image_sha256 if image_sha256 else [""] * len(relpaths)
    if len(known) != len(relpaths):
        raise ValueError(f"got {len(known)} image digests for {len(relpaths)} paths")
    digest = hashlib.sha256()
    digest.update(lfw.pairs_file.read_bytes())
    for rel, hex_digest in zip(relpaths, known):
        digest.update(rel.encode("utf-8"))
        digest.update(bytes.fromhex(hex_digest or file_sha256(lfw.image_path(rel))))
    return digest.hexdigest()
