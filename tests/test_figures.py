"""The MSN reconstruction figure on real fold-10 faces."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner
from PIL import Image

from robustbench_face.cli import main


def test_reconstructions_figure(data_root: Path, cache_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "figure.png"
    args = [
        "figures", "reconstructions", "--data-root", str(data_root), "--cache-dir", str(cache_dir),
        "--count", "2", "--out", str(out),
    ]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert out.with_suffix(".pdf").is_file()
    width, height = Image.open(out).size
    # Nine panels per row (input, then target and output of four regions), two rows.
    assert width > 3 * height


def test_reconstructions_bad_checkpoint(data_root: Path, cache_dir: Path, tmp_path: Path) -> None:
    bad = tmp_path / "msn.pt"
    bad.write_bytes(b"not a checkpoint")
    args = [
        "figures", "reconstructions", "--data-root", str(data_root), "--cache-dir", str(cache_dir),
        "--count", "1", "--weights", str(bad), "--out", str(tmp_path / "figure.png"),
    ]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2
    assert "msn.pt" in result.output
    assert not (tmp_path / "figure.png").exists()
