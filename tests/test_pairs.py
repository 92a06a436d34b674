"""Parsing LFW pair files, fold ids and the handling of missing images."""

from __future__ import annotations

from pathlib import Path

import pytest

from robustbench_face.data.lfw import LFW, check_images, locate_lfw
from robustbench_face.data.pairs import image_relpath, parse_pairs, select_pairs
from robustbench_face.errors import FrbError
from robustbench_face.sweep.prepare import select_data


def write_pairs(tmp_path: Path, lines: list[str]) -> Path:
    path = tmp_path / "pairs.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


TWO_FOLDS = [
    "2 2",
    "Ann 1 2",
    "Bob 1 3",
    "Ann 1 Bob 2",
    "Cid 1 Dan 1",
    "Eve 1 2",
    "Fay 2 4",
    "Eve 1 Fay 1",
    "Gus 3 Hal 1",
]


def test_real_pairs_file_has_ten_folds(data_root: Path) -> None:
    pairs = parse_pairs(data_root / "lfw" / "pairs.txt")
    assert len(pairs) == 6000
    for fold in range(1, 11):
        in_fold = [pair for pair in pairs if pair.fold == fold]
        assert sum(pair.same for pair in in_fold) == 300
        assert sum(not pair.same for pair in in_fold) == 300
    assert pairs[0].probe == "Abel_Pacheco/Abel_Pacheco_0001.jpg"
    assert pairs[0].reference == "Abel_Pacheco/Abel_Pacheco_0004.jpg"
    assert pairs[300].reference == "Dean_Barker/Dean_Barker_0001.jpg"


def test_real_folds_are_person_disjoint(data_root: Path) -> None:
    pairs = parse_pairs(data_root / "lfw" / "pairs.txt")
    people_by_fold: dict[int, set[str]] = {}
    for pair in pairs:
        names = {pair.probe.split("/")[0], pair.reference.split("/")[0]}
        people_by_fold.setdefault(pair.fold, set()).update(names)
    folds = sorted(people_by_fold)
    for i, first in enumerate(folds):
        for second in folds[i + 1 :]:
            assert not people_by_fold[first] & people_by_fold[second]


def test_view1_single_number_header(data_root: Path) -> None:
    pairs = parse_pairs(data_root / "lfw" / "pairsDevTest.txt")
    assert len(pairs) == 1000
    assert {pair.fold for pair in pairs} == {1}
    assert sum(pair.same for pair in pairs) == 500


def test_parse_keeps_fold_and_order(tmp_path: Path) -> None:
    pairs = parse_pairs(write_pairs(tmp_path, TWO_FOLDS))
    assert [pair.fold for pair in pairs] == [1, 1, 1, 1, 2, 2, 2, 2]
    assert [pair.same for pair in pairs] == [True, True, False, False] * 2
    assert [pair.pair_id for pair in pairs] == list(range(8))
    assert pairs[2].probe == "Ann/Ann_0001.jpg"
    assert pairs[2].reference == "Bob/Bob_0002.jpg"


@pytest.mark.parametrize(
    ("bad_line", "message"),
    [
        ("Ann 1", "expected 3 fields"),
        ("Ann 1 2 3 4 5", "expected 3 fields"),
        ("Ann one 2", "'one' is not an integer"),
        ("Ann 0 2", "must be 1 or more"),
    ],
)
def test_malformed_line_names_file_and_line(tmp_path: Path, bad_line: str, message: str) -> None:
    lines = list(TWO_FOLDS)
    lines[2] = bad_line
    path = write_pairs(tmp_path, lines)
    with pytest.raises(FrbError, match=message) as caught:
        parse_pairs(path)
    assert f"{path}:3" in str(caught.value)


def test_mismatched_pair_in_matched_block(tmp_path: Path) -> None:
    lines = list(TWO_FOLDS)
    lines[1] = "Ann 1 Bob 2"
    with pytest.raises(FrbError, match=r"pairs.txt:2: fold 1 expects a matched pair"):
        parse_pairs(write_pairs(tmp_path, lines))


def test_wrong_pair_count(tmp_path: Path) -> None:
    with pytest.raises(FrbError, match="promises 8 pairs .* has 7"):
        parse_pairs(write_pairs(tmp_path, TWO_FOLDS[:-1]))


@pytest.mark.parametrize("header", ["", "ten 300", "0 300", "1 2 3"])
def test_bad_header(tmp_path: Path, header: str) -> None:
    with pytest.raises(FrbError, match="pairs.txt:1"):
        parse_pairs(write_pairs(tmp_path, [header] + TWO_FOLDS[1:]))


def test_missing_pairs_file(tmp_path: Path) -> None:
    with pytest.raises(FrbError, match="pairs file not found"):
        parse_pairs(tmp_path / "pairs.txt")


def test_select_balances_and_limits(tmp_path: Path) -> None:
    pairs = parse_pairs(write_pairs(tmp_path, TWO_FOLDS))
    chosen = select_pairs(pairs, folds=[2], per_fold=2)
    assert [pair.pair_id for pair in chosen] == [4, 6]
    assert select_pairs(pairs, per_fold=3) == [pairs[i] for i in (0, 1, 2, 4, 5, 6)]


def test_select_unknown_fold(tmp_path: Path) -> None:
    pairs = parse_pairs(write_pairs(tmp_path, TWO_FOLDS))
    with pytest.raises(FrbError, match="fold 3 does not exist; choose folds from 1 to 2"):
        select_pairs(pairs, folds=[3])


def make_lfw(tmp_path: Path, missing: set[str]) -> LFW:
    pairs_path = write_pairs(tmp_path, TWO_FOLDS)
    images = tmp_path / "lfw-deepfunneled"
    for pair in parse_pairs(pairs_path):
        for rel in (pair.probe, pair.reference):
            if rel not in missing:
                (images / rel).parent.mkdir(parents=True, exist_ok=True)
                (images / rel).write_bytes(b"jpeg")
    return LFW(root=tmp_path, images=images)


def test_missing_image_is_an_error(tmp_path: Path) -> None:
    lfw = make_lfw(tmp_path, missing={image_relpath("Bob", 3)})
    with pytest.raises(FrbError, match=r"Bob_0003.jpg of pair 1 \(fold 1\) not found.*--skip-missing"):
        check_images(lfw, parse_pairs(lfw.pairs_file))


def test_skipped_pair_keeps_other_folds(tmp_path: Path) -> None:
    lfw = make_lfw(tmp_path, missing={image_relpath("Bob", 3)})
    result = check_images(lfw, parse_pairs(lfw.pairs_file), skip_missing=True)
    assert [pair.pair_id for pair in result.skipped] == [1]
    assert [pair.pair_id for pair in result.pairs] == [0, 2, 3, 4, 5, 6, 7]
    assert [pair.fold for pair in result.pairs] == [1, 1, 1, 2, 2, 2, 2]


def test_no_pair_left_is_an_error(tmp_path: Path) -> None:
    everything = {rel for pair in parse_pairs(write_pairs(tmp_path, TWO_FOLDS)) for rel in (pair.probe, pair.reference)}
    make_lfw(tmp_path, missing=everything)
    (tmp_path / "lfw-deepfunneled").mkdir()
    with pytest.raises(FrbError, match=r"every pair of the chosen folds lacks an image \(--skip-missing left out 8\)"):
        select_data(tmp_path, skip_missing=True)


def test_locate_prefers_deepfunneled(tmp_path: Path) -> None:
    (tmp_path / "lfw" / "lfw").mkdir(parents=True)
    (tmp_path / "lfw" / "lfw-deepfunneled").mkdir()
    (tmp_path / "lfw" / "pairs.txt").write_text("1 1\n")
    assert locate_lfw(tmp_path).images == tmp_path / "lfw" / "lfw-deepfunneled"


def test_locate_reports_missing_data(tmp_path: Path) -> None:
    with pytest.raises(FrbError, match="no LFW found under .*frb data download lfw"):
        locate_lfw(tmp_path)
