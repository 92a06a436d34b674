"""Regression checks of robustness curves against baselines."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from click.testing import CliRunner

from robustbench_face.cli import main
from tests.conftest import REPO_ROOT

CI_BASELINE = REPO_ROOT / "baselines" / "dlib-resnet-fgsm-ci.csv"


def write_run(folder: Path, accuracies: list[float]) -> Path:
    frame = pd.read_csv(CI_BASELINE)
    frame["accuracy"] = accuracies
    folder.mkdir()
    frame.to_csv(folder / "curves.csv", index=False)
    return folder


def check(run_dir: Path, *extra: str):
    return CliRunner().invoke(main, ["check", str(run_dir), "--baseline", str(CI_BASELINE), *extra])


def test_check_passes_within_tolerance(tmp_path: Path) -> None:
    baseline = pd.read_csv(CI_BASELINE)["accuracy"]
    result = check(write_run(tmp_path / "run", list(baseline - 0.01)))
    assert result.exit_code == 0, result.output
    assert "4 of 4 baseline rows within 0.02" in result.output


def test_check_fails_on_regression(tmp_path: Path) -> None:
    accuracies = list(pd.read_csv(CI_BASELINE)["accuracy"])
    accuracies[1] -= 0.1
    result = check(write_run(tmp_path / "run", accuracies))
    assert result.exit_code == 1
    assert "REGRESSION dlib-resnet/all fgsm eps=0.01 fold 1" in result.output
    assert "3 of 4 baseline rows" in result.output


def test_check_rejects_missing_rows(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    folder.mkdir()
    pd.read_csv(CI_BASELINE).iloc[:2].to_csv(folder / "curves.csv", index=False)
    result = check(folder)
    assert result.exit_code == 2
    assert "has no row for dlib-resnet/all fgsm eps=0.02 fold 1" in result.output


def test_check_rejects_bad_tolerance(tmp_path: Path) -> None:
    result = check(write_run(tmp_path / "run", list(pd.read_csv(CI_BASELINE)["accuracy"])), "--tolerance", "2")
    assert result.exit_code == 2
    assert "--tolerance 2 is outside [0, 1]" in result.output


def test_check_missing_run(tmp_path: Path) -> None:
    result = check(tmp_path / "nothing")
    assert result.exit_code == 2
    assert "curves.csv not found" in result.output


def test_real_run_meets_ci_baseline(data_root: Path, cache_dir: Path, tmp_path: Path) -> None:
    """The CI robustness check: a fresh small FGSM run against the stored baseline."""
    out = tmp_path / "run"
    args = [
        "run", "--attack", "fgsm", "--eps", "0:0.03:0.01", "--models", "dlib-resnet", "--folds", "1",
        "--pairs", "20", "--data-root", str(data_root), "--cache-dir", str(cache_dir), "--no-progress",
        "--out", str(out),
    ]
    assert CliRunner().invoke(main, args).exit_code == 0
    result = check(out, "--tolerance", "0")
    assert result.exit_code == 0, result.output
