"""Shared fixtures: the real LFW copy, a per-session alignment cache, real faces."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def lfw_data_root() -> Path | None:
    """$FRB_DATA_ROOT, else ../shared/data beside the repository, if it contains LFW."""
    candidates = [os.environ.get("FRB_DATA_ROOT"), REPO_ROOT.parent / "shared" / "data"]
    for candidate in candidates:
        if candidate and (Path(candidate) / "lfw" / "pairs.txt").is_file():
            return Path(candidate)
    return None


@pytest.fixture(scope="session")
def data_root() -> Path:
    root = lfw_data_root()
    if root is None:
        if os.environ.get("FRB_REQUIRE_LFW") == "1":
            pytest.fail("FRB_REQUIRE_LFW=1 but no LFW found; set FRB_DATA_ROOT to a folder containing lfw/pairs.txt")
        pytest.skip("no LFW copy found; set FRB_DATA_ROOT to a folder containing lfw/pairs.txt")
    return root


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One alignment cache for the whole session, so each face is aligned once.

    FRB_TEST_CACHE_DIR points it at a persistent folder to speed up reruns.
    """
    persistent = os.environ.get("FRB_TEST_CACHE_DIR")
    return Path(persistent) if persistent else tmp_path_factory.mktemp("frb-cache")


@pytest.fixture(scope="session")
def dlib_model():
    from robustbench_face.models.registry import load_model

    return load_model("dlib-resnet")


@pytest.fixture(scope="session")
def fold1_faces(data_root: Path, cache_dir: Path):
    """Eight real fold-1 pairs (four matched, four mismatched) with aligned faces."""
    from robustbench_face.data.faces import load_faces
    from robustbench_face.data.lfw import locate_lfw
    from robustbench_face.data.pairs import parse_pairs, select_pairs

    lfw = locate_lfw(data_root)
    pairs = select_pairs(parse_pairs(lfw.pairs_file), folds=[1], per_fold=8)
    relpaths = sorted({rel for pair in pairs for rel in (pair.probe, pair.reference)})
    return pairs, load_faces(lfw, relpaths, cache_dir, progress=False)
