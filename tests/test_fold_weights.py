"""Cross-validation weights: a folder of per-fold MSN files scores each fold with the model that held it out."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
import pytest
import torch

from robustbench_face.errors import FrbError
from robustbench_face.models.folds import needed, weights_by_fold
from robustbench_face.models.msn.network import MSN
from robustbench_face.sweep.config import RunConfig
from robustbench_face.sweep.reproduce import folds_for

from .test_cli import invoke


def _write_fold_checkpoint(model: MSN, folder: Path, fold: int) -> Path:
    path = folder / f"msn-fold{fold}.pt"
    torch.save(model.checkpoint(metadata={**model.metadata, "test_fold": fold}, half=True), path)
    return path


@pytest.fixture(scope="module")
def cv_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folds 1 and 2 with different weights: the shipped ones, and a noisy copy of them."""
    folder = tmp_path_factory.mktemp("cv")
    model = MSN.pretrained()
    _write_fold_checkpoint(model, folder, 1)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.3 * parameter.abs().mean() * torch.randn(parameter.shape, generator=generator))
    _write_fold_checkpoint(model, folder, 2)
    # A file that names no fold is not part of the set.
    (folder / "notes.txt").write_text("trained for a test\n")
    return folder


def _run(data_root: Path, cache_dir: Path, out: Path, weights: Path, folds: str) -> pd.DataFrame:
    result = invoke(
        "run", "--models", "msn", "--weights", f"msn={weights}", "--folds", folds, "--pairs", "4",
        "--attack", "fgsm", "--eps", "0,0.02", "--data-root", str(data_root), "--cache-dir", str(cache_dir),
        "--no-progress", "--out", str(out),
    )
    assert result.exit_code == 0, result.output
    return pd.read_csv(out / "pairs.csv")


def test_folder_lists_one_weights_file_per_fold(cv_folder: Path) -> None:
    entries = weights_by_fold("msn", cv_folder)
    assert [(entry.folds, entry.weights.name) for entry in entries] == [((1,), "msn-fold1.pt"), ((2,), "msn-fold2.pt")]
    assert entries[0].sha256 != entries[1].sha256
    # A single file, or a folder without per-fold files, serves every fold.
    single = weights_by_fold("msn", cv_folder / "msn-fold1.pt")
    assert [(entry.folds, entry.weights) for entry in single] == [(None, cv_folder / "msn-fold1.pt")]
    assert weights_by_fold("dlib-resnet", None)[0].folds is None


def test_missing_fold_is_named(cv_folder: Path) -> None:
    entries = weights_by_fold("msn", cv_folder)
    assert needed("msn", entries, [2]) == entries[1:]
    with pytest.raises(FrbError, match=r"no msn-fold3\.pt .*--folds 3 --out"):
        needed("msn", entries, [1, 3])


def test_each_fold_is_scored_by_its_own_model(cv_folder: Path, data_root: Path, cache_dir: Path, tmp_path: Path,
                                              caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        both = _run(data_root, cache_dir, tmp_path / "cv", cv_folder, "1,2")
    # Each model held out the fold it scores, so nothing counts as a training fold.
    assert "not a test result" not in caplog.text
    assert set(both["fold"]) == {1, 2}
    for fold in (1, 2):
        alone = _run(data_root, cache_dir, tmp_path / f"fold{fold}", cv_folder / f"msn-fold{fold}.pt", str(fold))
        pd.testing.assert_frame_equal(both[both["fold"] == fold].reset_index(drop=True), alone)
    # The two models differ, so routing a fold to the wrong one would show.
    wrong = _run(data_root, cache_dir, tmp_path / "wrong", cv_folder / "msn-fold2.pt", "1")
    assert not both[both["fold"] == 1]["score"].reset_index(drop=True).equals(wrong["score"])


def test_missing_fold_fails_before_any_output(cv_folder: Path, data_root: Path, cache_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = invoke(
        "run", "--models", "msn", "--weights", f"msn={cv_folder}", "--folds", "1,3", "--pairs", "2",
        "--attack", "fgsm", "--eps", "0", "--data-root", str(data_root), "--cache-dir", str(cache_dir),
        "--no-progress", "--out", str(out),
    )
    assert result.exit_code == 2
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.output
    assert "msn-fold3.pt" in errors[0]
    assert not out.exists()


def test_eval_matches_single_fold_evaluations(cv_folder: Path, data_root: Path, cache_dir: Path, tmp_path: Path) -> None:
    def evaluate(weights: Path, folds: str) -> pd.DataFrame:
        out = tmp_path / f"eval-{weights.name}-{folds}.csv"
        result = invoke(
            "eval", "--models", "msn", "--weights", f"msn={weights}", "--folds", folds, "--pairs", "20",
            "--data-root", str(data_root), "--cache-dir", str(cache_dir), "--no-progress", "--out", str(out),
        )
        assert result.exit_code == 0, result.output
        return pd.read_csv(out)

    both = evaluate(cv_folder, "1,2")
    assert list(both["module"].unique()) == list(MSN.score_names)
    assert list(both["fold"]) == [1, 2] * len(MSN.score_names)
    for fold in (1, 2):
        alone = evaluate(cv_folder / f"msn-fold{fold}.pt", str(fold))
        pd.testing.assert_frame_equal(both[both["fold"] == fold].reset_index(drop=True), alone)


def test_reproduce_attacks_the_folds_with_weights(cv_folder: Path, data_root: Path, cache_dir: Path) -> None:
    cfg = RunConfig(spec=None, models=["msn"], data_root=data_root, cache_dir=cache_dir, weights={"msn": cv_folder})
    assert folds_for("msn", cfg) == [1, 2]
    # The shipped single file still gives its one held-out fold.
    assert folds_for("msn", RunConfig(spec=None, models=["msn"], data_root=data_root, cache_dir=cache_dir)) == [10]
