"""Cross-validation weights: a folder of per-fold MSN files scores each fold with the model that held it out."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch

from robustbench_face.errors import FrbError
from robustbench_face.models.folds import (
    FoldWeights,
    load_entry,
    needed,
    weights_by_fold,
)
from robustbench_face.models.msn.network import DEFAULT_WEIGHTS as MSN_WEIGHTS
from robustbench_face.models.msn.network import MSN
from robustbench_face.sweep.config import RunConfig
from robustbench_face.sweep.reproduce import plan_model

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


def test_missing_folds_are_named_together(cv_folder: Path) -> None:
    entries = weights_by_fold("msn", cv_folder)
    assert needed("msn", entries, [2]) == entries[1:]
    with pytest.raises(FrbError, match=r"lacks msn-fold<k>\.pt for folds 3-5 \(it has folds 1-2\); "
                                       r"train them with `frb train msn --folds 3-5 --out .*` or pass --folds 1"):
        needed("msn", entries, [1, 3, 4, 5])


def test_odd_file_names_are_left_out(cv_folder: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    folder = tmp_path / "odd"
    folder.mkdir()
    for name in ("msn-fold1.pt", "msn-fold01.pt", "msn-fold0.pt", "msn-fold2.json", "state-fold3.pt"):
        (folder / name).write_bytes(b"")
    with caplog.at_level(logging.WARNING):
        entries = weights_by_fold("msn", folder)
    assert [entry.folds for entry in entries] == [(1,)]
    assert "msn-fold01.pt" in caplog.text
    assert "msn-fold0.pt" in caplog.text
    # Training writes a JSON record and a state file beside each checkpoint; they are not weights.
    assert "msn-fold2.json" not in caplog.text
    assert "state-fold3.pt" not in caplog.text


def test_folder_without_fold_files_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(FrbError, match=r"is a folder without msn-fold<k>\.pt files"):
        weights_by_fold("msn", tmp_path)


def test_mislabelled_fold_file_is_rejected(cv_folder: Path, tmp_path: Path) -> None:
    # A file trained with one fold held out cannot stand for another.
    shutil.copyfile(cv_folder / "msn-fold1.pt", tmp_path / "msn-fold3.pt")
    shutil.copyfile(MSN_WEIGHTS, tmp_path / "msn-fold4.pt")
    assert load_entry(FoldWeights("msn", cv_folder / "msn-fold1.pt", (1,))).lfw_test_folds() == (1,)
    with pytest.raises(FrbError, match=r"msn-fold3\.pt held out fold 1 in training, not fold 3"):
        load_entry(FoldWeights("msn", tmp_path / "msn-fold3.pt", (3,)))
    with pytest.raises(FrbError, match=r"msn-fold4\.pt held out fold 10 in training, not fold 4"):
        load_entry(FoldWeights("msn", tmp_path / "msn-fold4.pt", (4,)))


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
    assert "msn-fold<k>.pt for fold 3" in errors[0]
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


def test_plan_has_one_run_per_fold_file(cv_folder: Path, data_root: Path, cache_dir: Path,
                                        caplog: pytest.LogCaptureFixture) -> None:
    cfg = RunConfig(spec=None, models=["msn"], data_root=data_root, cache_dir=cache_dir, weights={"msn": cv_folder})
    with caplog.at_level(logging.WARNING):
        plan = plan_model("msn", cfg, set(range(1, 11)))
    assert "per-fold weights for folds 1-2 only" in caplog.text
    assert "frb train msn --folds 3-10" in caplog.text
    assert [(part.folds, part.weights.name, part.subfolder) for part in plan] == [
        ([1], "msn-fold1.pt", "fold-01"),
        ([2], "msn-fold2.pt", "fold-02"),
    ]
    with pytest.raises(FrbError, match=r"msn-fold2\.pt is for fold 2, but the pairs file has fold 1"):
        plan_model("msn", cfg, {1})
    # Folds left out by --folds are not checked, and unknown --folds are named as such.
    only_one = RunConfig(spec=None, models=["msn"], data_root=data_root, cache_dir=cache_dir,
                         weights={"msn": cv_folder}, folds=[1])
    assert [part.folds for part in plan_model("msn", only_one, {1})] == [[1]]
    with pytest.raises(FrbError, match=r"fold 11 does not exist; choose folds from 1-10"):
        plan_model("msn", RunConfig(spec=None, models=["msn"], data_root=data_root, cache_dir=cache_dir,
                                    weights={"msn": cv_folder}, folds=[11]), set(range(1, 11)))
    # The shipped single file runs once, on the fold it held out.
    shipped = RunConfig(spec=None, models=["msn"], data_root=data_root, cache_dir=cache_dir)
    assert [(part.folds, part.subfolder) for part in plan_model("msn", shipped, set(range(1, 11)))] == [([10], None)]


def test_weights_fail_before_alignment(cv_folder: Path, data_root: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    result = invoke(
        "eval", "--models", "msn", "--weights", f"msn={cv_folder}", "--folds", "3", "--pairs", "2",
        "--data-root", str(data_root), "--cache-dir", str(cache), "--no-progress",
    )
    assert result.exit_code == 2
    assert "msn-fold<k>.pt for fold 3" in result.output
    assert not (cache / "aligned").exists()


def _reproduce(data_root: Path, cache_dir: Path, out: Path, weights: Path):
    return invoke(
        "reproduce", "--models", "msn", "--weights", f"msn={weights}", "--specs", "fgsm", "--pairs", "2",
        "--data-root", str(data_root), "--cache-dir", str(cache_dir), "--no-progress", "--out", str(out),
    )


def test_reproduce_resumes_when_a_fold_is_added(cv_folder: Path, data_root: Path, cache_dir: Path,
                                                tmp_path: Path) -> None:
    folder = tmp_path / "weights"
    folder.mkdir()
    shutil.copyfile(cv_folder / "msn-fold1.pt", folder / "msn-fold1.pt")
    out = tmp_path / "paper"
    assert _reproduce(data_root, cache_dir, out, folder).exit_code == 0
    first = (out / "fgsm" / "msn" / "fold-01" / "pairs.csv").read_bytes()

    shutil.copyfile(cv_folder / "msn-fold2.pt", folder / "msn-fold2.pt")
    result = _reproduce(data_root, cache_dir, out, folder)
    assert result.exit_code == 0, result.output

    record = json.loads((out / "reproduce.json").read_text())
    (run,) = record["runs"]
    assert run["folds"] == [1, 2]
    # Fold 1's run was resumed, not computed again; only fold 2's chunk ran.
    assert (run["computed_chunks"], run["resumed_chunks"]) == (1, 1)
    assert (out / "fgsm" / "msn" / "fold-01" / "pairs.csv").read_bytes() == first
    merged = pd.read_csv(out / "fgsm" / "msn" / "pairs.csv")
    assert sorted(set(merged["fold"])) == [1, 2]
    parts = [pd.read_csv(out / "fgsm" / "msn" / f"fold-0{fold}" / "pairs.csv") for fold in (1, 2)]
    assert len(merged) == sum(len(part) for part in parts)
    curves = pd.read_csv(out / "fgsm" / "msn" / "curves.csv")
    assert sorted(set(curves["fold"])) == [1, 2]


def test_untrainable_model_gets_no_train_hint(tmp_path: Path) -> None:
    with pytest.raises(FrbError, match=r"facenet-fold<k>\.pt files; give a weights file$"):
        weights_by_fold("facenet", tmp_path)
    (tmp_path / "facenet-fold1.pt").write_bytes(b"")
    with pytest.raises(FrbError, match=r"for fold 2 \(it has fold 1\); pass --folds 1$"):
        needed("facenet", weights_by_fold("facenet", tmp_path), [1, 2])


def test_reproduce_rejects_foreign_folder(cv_folder: Path, data_root: Path, cache_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("not a reproduction\n")
    result = _reproduce(data_root, cache_dir, out, cv_folder)
    assert result.exit_code == 2
    assert "contains no frb reproduction" in result.output
    assert sorted(path.name for path in out.iterdir()) == ["notes.txt"]
