"""LFW pair lists (`pairs.txt`, `pairsDevTrain.txt`, ...) and their folds."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import FrbError


@dataclass(frozen=True)
class Pair:
    """One verification pair with its official fold.

    `pair_id` is the pair's 0-based position in the file, so it stays the
    same whatever subset of pairs a run uses. `fold` is 1-based.
    """

    pair_id: int
    fold: int
    same: bool
    probe: str  # image path relative to the image folder: "<Name>/<Name>_0001.jpg"
    reference: str

    @property
    def label(self) -> int:
        """1 for the same person, 0 for different people."""
        return int(self.same)


def image_relpath(name: str, number: int) -> str:
    """Return LFW's relative path of a person's n-th image."""
    return f"{name}/{name}_{number:04d}.jpg"


def _parse_number(token: str, path: Path, line_no: int) -> int:
    try:
        number = int(token)
    except ValueError:
        raise FrbError(f"{path}:{line_no}: image number {token!r} is not an integer; fix or restore the file") from None
    if number < 1:
        raise FrbError(f"{path}:{line_no}: image number {number} must be 1 or more; fix or restore the file")
    return number


def parse_pairs(path: str | Path) -> list[Pair]:
    """Parse an LFW pairs file into pairs tagged with their official fold.

    The header is either `<folds> <n>` (View 2: each fold contains n matched
    then n mismatched pairs) or a single `<n>` (View 1: n matched then n
    mismatched, one fold). Every other line must have 3 fields (matched:
    name n1 n2) or 4 (mismatched: name1 n1 name2 n2); anything else raises
    FrbError naming the file and line, because the common reference code
    silently repeats the previous pair on such a line.
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise FrbError(f"pairs file not found: {path}; check --data-root or run `frb data download lfw`") from None
    except (OSError, UnicodeDecodeError) as err:
        raise FrbError(f"cannot read pairs file {path}: {err}; restore it from the LFW release") from None

    if not lines:
        raise FrbError(f"{path}:1: pairs file is empty; restore it from the LFW release")
    header = lines[0].split()
    try:
        counts = [int(token) for token in header]
    except ValueError:
        counts = []
    if len(counts) == 2:
        n_folds, per_fold = counts
    elif len(counts) == 1:
        n_folds, per_fold = 1, counts[0]
    else:
        raise FrbError(f"{path}:1: header {lines[0]!r} must be '<folds> <pairs per class>' or '<pairs per class>'")
    if n_folds < 1 or per_fold < 1:
        raise FrbError(f"{path}:1: header {lines[0]!r} must hold positive counts")

    body = [(line_no, line) for line_no, line in enumerate(lines[1:], start=2) if line.strip()]
    expected = n_folds * 2 * per_fold
    if len(body) != expected:
        raise FrbError(
            f"{path}: header promises {expected} pairs ({n_folds} folds x 2 x {per_fold}) "
            f"but the file has {len(body)}; restore the file from the LFW release"
        )

    pairs: list[Pair] = []
    for index, (line_no, line) in enumerate(body):
        fold = index // (2 * per_fold) + 1
        should_match = index % (2 * per_fold) < per_fold
        fields = line.split()
        if len(fields) == 3:
            name, n1, n2 = fields
            probe = image_relpath(name, _parse_number(n1, path, line_no))
            reference = image_relpath(name, _parse_number(n2, path, line_no))
            same = True
        elif len(fields) == 4:
            name1, n1, name2, n2 = fields
            probe = image_relpath(name1, _parse_number(n1, path, line_no))
            reference = image_relpath(name2, _parse_number(n2, path, line_no))
            same = False
        else:
            raise FrbError(
                f"{path}:{line_no}: expected 3 fields (name n1 n2) or 4 (name1 n1 name2 n2), "
                f"got {len(fields)}: {line.strip()!r}"
            )
        if same != should_match:
            kind = "matched" if should_match else "mismatched"
            raise FrbError(f"{path}:{line_no}: fold {fold} expects a {kind} pair here, got {line.strip()!r}")
        pairs.append(Pair(pair_id=index, fold=fold, same=same, probe=probe, reference=reference))
    return pairs


def select_pairs(pairs: list[Pair], folds: list[int] | None = None, per_fold: int | None = None) -> list[Pair]:
    """Keep the pairs of `folds` (all when None), at most `per_fold` from each.

    A limited fold keeps its first `per_fold // 2` matched pairs and as many
    mismatched ones (one more matched pair when `per_fold` is odd), so that
    small runs stay balanced.
    """
    available = sorted({pair.fold for pair in pairs})
    if folds is not None:
        unknown = [fold for fold in folds if fold not in available]
        if unknown:
            raise FrbError(f"fold {unknown[0]} does not exist; choose folds from {available[0]} to {available[-1]}")
    wanted = set(folds) if folds is not None else set(available)

    chosen: list[Pair] = []
    for fold in available:
        if fold not in wanted:
            continue
        in_fold = [pair for pair in pairs if pair.fold == fold]
        if per_fold is not None:
            n_same = (per_fold + 1) // 2
            n_diff = per_fold // 2
            in_fold = [p for p in in_fold if p.same][:n_same] + [p for p in in_fold if not p.same][:n_diff]
        chosen.extend(in_fold)
    return sorted(chosen, key=lambda pair: pair.pair_id)
