"""The robustness curve: accuracy against the attack budget."""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display is needed or assumed

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from .writer import atomic_write_bytes  # noqa: E402


def plot_curves(curves: pd.DataFrame, stem: Path) -> list[Path]:
    """Plot accuracy against the budget, one line per model and module.

    The band is one standard deviation over folds (none for a single
    fold). Writes `<stem>.png` and `<stem>.pdf` and returns their paths.
    """
    frame = curves.copy()
    label = frame["model"] + " / " + frame["module"]
    cross = frame["attacked"] != frame["module"]
    frame["model / module"] = label.where(~cross, label + " (attack on " + frame["attacked"] + ")")
    attack = ", ".join(sorted(frame["attack"].unique()))
    param = ", ".join(sorted(frame["param"].unique()))

    figure, axes = plt.subplots(figsize=(6, 4), layout="constrained")
    sns.lineplot(
        data=frame,
        x="value",
        y="accuracy",
        hue="model / module",
        errorbar="sd" if frame["fold"].nunique() > 1 else None,
        marker="o",
        ax=axes,
    )
    axes.set_xlabel(f"{attack.upper()} {param}" + (" (pixel scale [0, 1], L-inf)" if param == "eps" else ""))
    axes.set_ylabel("verification accuracy")
    axes.set_ylim(0, 1)
    axes.grid(alpha=0.3)

    written = save_figure(figure, stem)
    plt.close(figure)
    return written


def save_figure(figure: plt.Figure, stem: Path) -> list[Path]:
    """Write `<stem>.png` and `<stem>.pdf` atomically and return their paths."""
    written = []
    for suffix in (".png", ".pdf"):
        buffer = io.BytesIO()
        # Without creation dates the files are identical across reruns.
        metadata = {"CreationDate": None} if suffix == ".pdf" else {"Software": None}
        figure.savefig(buffer, format=suffix[1:], dpi=150, metadata=metadata)
        path = stem.with_suffix(suffix)
        atomic_write_bytes(path, buffer.getvalue())
        written.append(path)
    return written
