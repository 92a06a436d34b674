"""`frb reproduce`: all paper sweeps in one command, on a few real LFW pairs per fold."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from .test_cli import invoke


def reproduce_args(data_root: Path, cache_dir: Path, out: Path, *extra: str) -> list[str]:
    return [
        "reproduce",
        "--models", "dlib-resnet,msn",
        "--data-root", str(data_root),
        "--cache-dir", str(cache_dir),
        "--pairs", "2",
        "--no-progress",
        "--out", str(out),
        *extra,
    ]


@pytest.fixture(scope="module")
def reproduction(data_root: Path, cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("reproduce") / "paper"
    result = invoke(*reproduce_args(data_root, cache_dir, out))
    assert result.exit_code == 0, result.output
    return out


def test_every_spec_and_model_has_a_run(reproduction: Path) -> None:
    record = json.loads((reproduction / "reproduce.json").read_text())
    assert [(run["spec"], run["model"]) for run in record["runs"]] == [
        (spec, model) for spec in ("fgsm", "ffgsm", "deepfool") for model in ("dlib-resnet", "msn")
    ]
    assert record["wall_seconds"] >= sum(run["wall_seconds"] for run in record["runs"]) - 1
    for run in record["runs"]:
        curves = pd.read_csv(reproduction / run["spec"] / run["model"] / "curves.csv")
        # Eleven budgets each: eps 0 to 0.1 by 0.01, DeepFool steps 0 to 10.
        assert curves["value"].nunique() == 11
        assert set(curves["attack"]) == {run["spec"]}
    for suffix in (".png", ".pdf"):
        assert (reproduction / f"robustness{suffix}").stat().st_size > 0


def test_msn_uses_held_out_fold(reproduction: Path) -> None:
    record = json.loads((reproduction / "reproduce.json").read_text())
    folds = {run["model"]: run["folds"] for run in record["runs"]}
    assert folds == {"dlib-resnet": "all", "msn": [10]}
    msn_pairs = pd.read_csv(reproduction / "fgsm" / "msn" / "pairs.csv")
    dlib_pairs = pd.read_csv(reproduction / "fgsm" / "dlib-resnet" / "pairs.csv")
    assert set(msn_pairs["fold"]) == {10}
    assert set(dlib_pairs["fold"]) == set(range(1, 11))
    # Each score attacked on its own, and each module scored on the images made by attacking MSN.
    scores = ("msn", "eyes", "nose", "mouth", "rest")
    own = {(score, score) for score in scores}
    under_msn = {(module, "msn") for module in scores[1:]}
    assert set(zip(msn_pairs["module"], msn_pairs["attacked"])) == own | under_msn


def test_rerun_resumes_every_run(reproduction: Path, data_root: Path, cache_dir: Path) -> None:
    before = {path: path.read_bytes() for path in sorted(reproduction.glob("*/*/pairs.csv"))}
    result = invoke(*reproduce_args(data_root, cache_dir, reproduction))
    assert result.exit_code == 0, result.output
    record = json.loads((reproduction / "reproduce.json").read_text())
    assert all(run["computed_chunks"] == 0 for run in record["runs"])
    assert {path: path.read_bytes() for path in before} == before


def test_folder_from_earlier_version_resumes(reproduction: Path, data_root: Path, cache_dir: Path,
                                             tmp_path: Path) -> None:
    from robustbench_face.sweep.config import identity_hash

    old = tmp_path / "old"
    shutil.copytree(reproduction, old)
    # Before per-fold weights, the id hashed each model's folds and the paths as given, and no JSON was kept.
    legacy = identity_hash({
        "specs": ["fgsm", "ffgsm", "deepfool"], "models": ["dlib-resnet", "msn"],
        "folds": {"dlib-resnet": None, "msn": [10]}, "per_fold": 2, "seed": 0, "device": "cpu",
        "skip_missing": False, "weights": {}, "data_root": str(data_root),
    })
    (old / ".frb-reproduce").write_text(legacy + "\n")
    (old / ".frb-reproduce.json").unlink()
    result = invoke(*reproduce_args(data_root, cache_dir, old))
    assert result.exit_code == 0, result.output
    record = json.loads((old / "reproduce.json").read_text())
    assert all(run["computed_chunks"] == 0 for run in record["runs"])
    # A marker that is neither the old nor the new id is still rejected.
    (old / ".frb-reproduce").write_text("0123456789ab\n")
    assert invoke(*reproduce_args(data_root, cache_dir, old)).exit_code == 2


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--specs", "fgsm,pgd"), "unknown spec 'pgd'"),
        (("--specs", ","), "names no spec"),
        (("--folds", "11"), "11"),
    ],
)
def test_bad_options_fail_cleanly(data_root: Path, cache_dir: Path, tmp_path: Path, extra, message) -> None:
    out = tmp_path / "paper"
    result = invoke(*reproduce_args(data_root, cache_dir, out, *extra))
    assert result.exit_code == 2
    assert message in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not out.exists()


def test_foreign_output_folder_is_rejected(data_root: Path, cache_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "paper"
    out.mkdir()
    (out / "notes.txt").write_text("mine\n")
    result = invoke(*reproduce_args(data_root, cache_dir, out, "--models", "dlib-resnet", "--specs", "fgsm"))
    assert result.exit_code == 2
    assert "contains no frb reproduction" in result.output
    assert sorted(path.name for path in out.iterdir()) == ["notes.txt"]


def test_foreign_run_folder_stops_before_any_sweep(data_root: Path, cache_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "paper"
    args = ("--models", "dlib-resnet", "--specs", "fgsm,ffgsm", "--folds", "10")
    assert invoke(*reproduce_args(data_root, cache_dir, out, *args)).exit_code == 0
    # The second run folder no longer contains a run, and the first lost its results.
    foreign = out / "ffgsm" / "dlib-resnet"
    (foreign / ".frb-run").unlink()
    (out / "fgsm" / "dlib-resnet" / "pairs.csv").unlink()
    result = invoke(*reproduce_args(data_root, cache_dir, out, *args))
    assert result.exit_code == 2
    assert f"{foreign} is not empty and contains no frb run" in result.output
    assert not (out / "fgsm" / "dlib-resnet" / "pairs.csv").exists()


def test_repeated_spec_runs_once(data_root: Path, cache_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "paper"
    args = ("--models", "dlib-resnet", "--specs", "fgsm,fgsm", "--folds", "10")
    result = invoke(*reproduce_args(data_root, cache_dir, out, *args))
    assert result.exit_code == 0, result.output
    record = json.loads((out / "reproduce.json").read_text())
    assert [(run["spec"], run["model"]) for run in record["runs"]] == [("fgsm", "dlib-resnet")]
    other = invoke(*reproduce_args(data_root, cache_dir, out, *args, "--seed", "1"))
    assert other.exit_code == 2
    assert "contains a reproduction with other settings" in other.output
    assert "differing in seed);" in other.output


@pytest.mark.parametrize(
    ("folds", "text"),
    [(None, "all folds"), ([10], "fold 10"), (list(range(1, 11)), "folds 1-10"), ([1, 3], "folds 1,3")],
)
def test_fold_lists_are_named_briefly(folds, text) -> None:
    from robustbench_face.models.folds import describe_folds

    assert describe_folds(folds) == text
