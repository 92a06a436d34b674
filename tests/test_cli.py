"""The `frb` command line: real runs at small sizes, resuming, and user errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from robustbench_face.cli import main
from robustbench_face.sweep import runner


def invoke(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def run_args(data_root: Path, cache_dir: Path, out: Path, *extra: str) -> list[str]:
    return [
        "run",
        "--models", "dlib-resnet",
        "--data-root", str(data_root),
        "--cache-dir", str(cache_dir),
        "--folds", "1",
        "--pairs", "6",
        "--no-progress",
        "--out", str(out),
        *extra,
    ]


@pytest.fixture(scope="module")
def fgsm_run(data_root: Path, cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "fgsm"
    result = invoke(*run_args(data_root, cache_dir, out, "--attack", "fgsm", "--eps", "0:0.02:0.01"))
    assert result.exit_code == 0, result.output
    return out


def test_run_writes_all_outputs(fgsm_run: Path) -> None:
    for name in ("curves.csv", "pairs.csv", "timings.csv", "run.json", "curves.png", "curves.pdf"):
        assert (fgsm_run / name).is_file(), name
    assert not list(fgsm_run.glob(".*.tmp"))


def test_curves_have_one_row_per_budget(fgsm_run: Path) -> None:
    curves = pd.read_csv(fgsm_run / "curves.csv")
    required = [
        "model", "module", "attacked", "attack", "param", "value", "fold", "n_pairs", "accuracy", "accuracy_matched",
        "accuracy_mismatched", "attack_success_rate", "linf_mean", "linf_max", "l2_mean",
    ]
    assert list(curves.columns[: len(required)]) == required
    assert curves["value"].tolist() == [0.0, 0.01, 0.02]
    assert (curves["n_pairs"] == 6).all()
    assert curves["linf_max"].tolist() == pytest.approx([0.0, 0.01, 0.02], abs=1e-6)
    assert curves.loc[0, "attack_success_rate"] == 0
    # Clean accuracy is at least the attacked accuracy.
    assert curves.loc[0, "accuracy"] >= curves["accuracy"].max()


def test_pairs_csv_rows_per_pair_and_budget(fgsm_run: Path) -> None:
    pairs = pd.read_csv(fgsm_run / "pairs.csv")
    assert len(pairs) == 6 * 3
    assert not pairs.duplicated(["model", "module", "attacked", "value", "pair_id"]).any()
    assert (pairs["attacked"] == pairs["module"]).all()
    assert set(pairs["fold"]) == {1}
    clean = pairs[pairs["value"] == 0]
    assert (clean["correct"] == clean["clean_correct"]).all()


def test_run_record(fgsm_run: Path) -> None:
    record = json.loads((fgsm_run / "run.json").read_text())
    assert record["command"].startswith("frb")
    assert record["seed"] == 0
    assert record["versions"]["torchattacks"] == "3.5.1"
    assert len(record["settings"]["weights"]["dlib-resnet"]) == 64
    assert record["counts"]["attacked_pairs"] == 6
    assert record["counts"]["threshold_pairs"] == 60
    assert record["counts"]["skipped_pairs"] == 0
    assert "fallback_alignments" in record["counts"]


def test_rerun_resumes_without_duplicates(fgsm_run: Path, data_root: Path, cache_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "copy"
    shutil.copytree(fgsm_run, out)
    before = (out / "pairs.csv").read_text()
    (out / "pairs.csv").unlink()
    (out / "curves.csv").unlink()
    result = invoke(*run_args(data_root, cache_dir, out, "--attack", "fgsm", "--eps", "0:0.02:0.01"))
    assert result.exit_code == 0, result.output
    assert "0 chunks computed, 1 resumed" in result.output
    assert (out / "pairs.csv").read_text() == before


def test_rerun_with_other_settings_names_them(fgsm_run: Path, data_root: Path, cache_dir: Path) -> None:
    result = invoke(*run_args(data_root, cache_dir, fgsm_run, "--attack", "fgsm", "--eps", "0:0.03:0.01", "--seed", "3"))
    assert result.exit_code == 2
    assert "contains a run with other settings" in result.output
    assert "differing in attack, seed);" in result.output


def test_interrupted_run_matches_uninterrupted(data_root: Path, cache_dir: Path, tmp_path: Path) -> None:
    args = ("--attack", "ffgsm", "--eps", "0.02", "--pairs", "4", "--folds", "1,2")
    full = tmp_path / "full"
    assert invoke(*run_args(data_root, cache_dir, full, *args)).exit_code == 0
    # An interrupted run has written some part files and no final CSV.
    partial = tmp_path / "partial"
    shutil.copytree(full, partial)
    for name in ("pairs.csv", "curves.csv", "run.json"):
        (partial / name).unlink()
    parts = sorted((partial / ".parts").glob("*.csv"))
    parts[-1].unlink()
    result = invoke(*run_args(data_root, cache_dir, partial, *args))
    assert result.exit_code == 0, result.output
    assert "1 chunks computed" in result.output
    for name in ("pairs.csv", "curves.csv"):
        assert (partial / name).read_bytes() == (full / name).read_bytes(), name


@pytest.mark.parametrize("attack", ["fgsm", "ffgsm", "deepfool"])
def test_csv_independent_of_batch_and_jobs(
    attack: str, data_root: Path, cache_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Small chunks, so that two jobs really share the work.
    monkeypatch.setattr(runner, "CHUNK_PAIRS", 5)
    budget = ("--steps", "0:3:1") if attack == "deepfool" else ("--eps", "0,0.01,0.03")
    common = ("--attack", attack, *budget, "--seed", "3", "--pairs", "6", "--folds", "1,2")
    variants = {
        "batch6": ("--batch-size", "6"),
        "batch4-jobs2": ("--batch-size", "4", "--jobs", "2"),
        "batch32": ("--batch-size", "32"),
    }
    for name, extra in variants.items():
        result = invoke(*run_args(data_root, cache_dir, tmp_path / name, *common, *extra))
        assert result.exit_code == 0, result.output
    for file in ("curves.csv", "pairs.csv"):
        expected = (tmp_path / "batch6" / file).read_bytes()
        for name in variants:
            assert (tmp_path / name / file).read_bytes() == expected, f"{name}/{file}"


def test_deepfool_run(data_root: Path, cache_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "deepfool"
    result = invoke(*run_args(data_root, cache_dir, out, "--attack", "deepfool", "--steps", "0:2:1", "--pairs", "2"))
    assert result.exit_code == 0, result.output
    curves = pd.read_csv(out / "curves.csv")
    assert curves["param"].unique().tolist() == ["steps"]
    assert curves["value"].tolist() == [0, 1, 2]
    assert curves.loc[0, "l2_mean"] == 0


def test_spec_file_is_used(data_root: Path, cache_dir: Path, tmp_path: Path) -> None:
    spec = tmp_path / "tiny.toml"
    spec.write_text('attack = "fgsm"\neps = "0,0.05"\n')
    out = tmp_path / "spec"
    result = invoke(*run_args(data_root, cache_dir, out, "--spec", str(spec), "--pairs", "2"))
    assert result.exit_code == 0, result.output
    assert pd.read_csv(out / "curves.csv")["value"].tolist() == [0.0, 0.05]


def test_eval_reports_accuracy(data_root: Path, cache_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval.csv"
    result = invoke(
        "eval", "--models", "dlib-resnet", "--data-root", str(data_root), "--cache-dir", str(cache_dir),
        "--pairs", "6", "--no-progress", "--out", str(out),
    )
    assert result.exit_code == 0, result.output
    assert "dlib-resnet" in result.output
    assert "10 folds, 60 pairs" in result.output
    folds = pd.read_csv(out)
    assert folds["fold"].tolist() == list(range(1, 11))
    assert folds["accuracy"].mean() >= 0.8


# --- User errors: one line, exit status 2, nothing written -------------------------------


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--attack", "fgsm", "--eps", "0:0.1:0"), "has step 0; give a positive step"),
        (("--attack", "fgsm", "--eps", "0:2:0.5"), "--eps value 1.5 is outside [0, 1]"),
        (("--attack", "fgsm", "--eps", "a:b:c"), "not a number range"),
        (("--attack", "fgsm", "--eps", "0.1:0:0.01"), "stops before it starts"),
        (("--attack", "deepfool", "--steps", "0:2:0.5"), "must hold whole numbers"),
        (("--attack", "deepfool", "--steps", ""), "--steps '' contains no values; use START:STOP:STEP or a list like 0,1,3"),
        (("--attack", "deepfool", "--steps", "0:3"), "must be START:STOP:STEP, e.g. 0:10:1"),
        (("--attack", "fgsm", "--steps", "0:2:1"), "--steps does not apply to fgsm; use --eps"),
        (("--attack", "ffgsm", "--alpha", "0"), "--alpha 0 is outside (0, 1]"),
        (("--attack", "fgsm", "--folds", "11"), "fold 11 does not exist; choose folds from 1 to 10"),
        (("--attack", "fgsm", "--folds", "x"), "--folds 'x' is not a list of fold numbers"),
        (("--attack", "fgsm", "--models", "vgg"), "unknown model 'vgg'"),
        (("--attack", "fgsm", "--weights", "facenet"), "must be NAME=PATH"),
        (("--attack", "fgsm", "--weights", "msn=/w/msn.pt"), "--weights msn=/w/msn.pt is for a model not in --models"),
        (("--attack", "fgsm", "--weights", "dlib-resnet=/a", "--weights", "dlib-resnet=/b"),
         "--weights gives dlib-resnet twice (/a and /b)"),
        (("--attack", "fgsm", "--device", "tpu"), "--device 'tpu' is not supported"),
        (("--spec", "nope"), "unknown spec 'nope'"),
        (("--attack", "deepfool", "--overshoot", "nan"), "--overshoot nan is invalid"),
        (("--attack", "fgsm", "--alpha", "0.01"), "--alpha 0.01 applies only to ffgsm, not fgsm"),
        (("--attack", "ffgsm", "--overshoot", "0.1"), "--overshoot 0.1 applies only to deepfool, not ffgsm"),
        (("--attack", "fgsm", "--eps", "0:1:0.0000001"), "gives 10000001 budgets; give at most 1000"),
        (("--attack", "deepfool", "--steps", "5000"), "--steps value 5000 is above 1000"),
        (("--attack", "fgsm", "--models", "facenet", "--weights", "facenet=/nonexistent/w.pt"),
         "FaceNet weights file /nonexistent/w.pt not found"),
        ((), "no attack given"),
    ],
)
def test_bad_options_fail_cleanly(data_root: Path, cache_dir: Path, tmp_path: Path, extra, message) -> None:
    out = tmp_path / "out"
    result = CliRunner().invoke(main, run_args(data_root, cache_dir, out, *extra))
    assert result.exit_code == 2
    assert message in result.output
    assert result.output.strip().count("\n") == 0
    assert not out.exists()


def test_interrupt_prints_resume_hint(data_root: Path, cache_dir: Path, tmp_path: Path, monkeypatch) -> None:
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "run", interrupted)
    result = CliRunner().invoke(main, run_args(data_root, cache_dir, tmp_path / "out", "--attack", "fgsm"))
    assert result.exit_code == 130
    assert "Interrupted. Run the same command again to resume" in result.output


def test_missing_data_root(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, run_args(tmp_path / "nowhere", tmp_path, tmp_path / "out", "--attack", "fgsm"))
    assert result.exit_code == 2
    assert "does not exist; run `frb data download lfw`" in result.output
    assert not (tmp_path / "out").exists()


def fake_lfw(data_root: Path, tmp_path: Path, pairs_text: str) -> Path:
    """A data root whose lfw/ links to the real images but has its own pairs.txt."""
    root = tmp_path / "data"
    (root / "lfw").mkdir(parents=True)
    (root / "lfw" / "lfw-deepfunneled").symlink_to((data_root / "lfw" / "lfw-deepfunneled").resolve())
    (root / "lfw" / "pairs.txt").write_text(pairs_text)
    return root


def real_pairs_lines(data_root: Path) -> list[str]:
    return (data_root / "lfw" / "pairs.txt").read_text().splitlines()


def test_malformed_pairs_file(data_root: Path, cache_dir: Path, tmp_path: Path) -> None:
    lines = real_pairs_lines(data_root)
    lines[5] = "Only_Name 1"
    root = fake_lfw(data_root, tmp_path, "\n".join(lines) + "\n")
    result = CliRunner().invoke(main, run_args(root, cache_dir, tmp_path / "out", "--attack", "fgsm"))
    assert result.exit_code == 2
    assert "pairs.txt:6: expected 3 fields" in result.output
    assert not (tmp_path / "out").exists()


def test_missing_image_fails_or_is_skipped(data_root: Path, cache_dir: Path, tmp_path: Path) -> None:
    lines = real_pairs_lines(data_root)
    lines[1] = "Abel_Pacheco 1 99"  # there is no image 99
    root = fake_lfw(data_root, tmp_path, "\n".join(lines) + "\n")
    args = run_args(root, cache_dir, tmp_path / "out", "--attack", "fgsm", "--eps", "0", "--pairs", "4")
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2
    assert "Abel_Pacheco_0099.jpg of pair 0 (fold 1) not found" in result.output
    assert not (tmp_path / "out").exists()

    result = CliRunner().invoke(main, [*args, "--skip-missing"])
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "out" / "run.json").read_text())
    assert record["counts"]["skipped_pair_ids"] == [0]
    pairs = pd.read_csv(tmp_path / "out" / "pairs.csv")
    assert 0 not in pairs["pair_id"].tolist()
    assert set(pairs["fold"]) == {1}


def test_foreign_output_folder_is_refused(data_root: Path, cache_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    result = CliRunner().invoke(main, run_args(data_root, cache_dir, out, "--attack", "fgsm", "--eps", "0"))
    assert result.exit_code == 2
    assert "is not empty and contains no frb run" in result.output
    assert sorted(path.name for path in out.iterdir()) == ["notes.txt"]


def test_unwritable_output_folder(data_root: Path, cache_dir: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    result = CliRunner().invoke(main, run_args(data_root, cache_dir, blocker / "out", "--attack", "fgsm", "--eps", "0"))
    assert result.exit_code == 2
    assert "cannot create output folder" in result.output
    assert result.output.strip().count("\n") == 0
