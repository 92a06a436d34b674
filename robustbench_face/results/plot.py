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
    frame = _labelled(curves)
    figure, axes = plt.subplots(figsize=(6, 4), layout="constrained")
    _draw(frame, axes, legend=True)
    written = save_figure(figure, stem)
    plt.close(figure)
    return written


def plot_panels(curves: pd.DataFrame, stem: Path) -> list[Path]:
    """Plot one panel per attack, side by side, as the paper's robustness figures do.

    Only scores attacked on their own are drawn, not the modules' decisions
    on images made by attacking the whole model, so that a panel stays
    readable. The curves.csv of each run contains the rest.
    """
    frame = _labelled(curves[curves["attacked"] == curves["module"]])
    attacks = list(dict.fromkeys(frame["attack"]))
    figure, axes = plt.subplots(1, len(attacks), figsize=(5 * len(attacks), 4), layout="constrained", squeeze=False)
    order = list(dict.fromkeys(frame["model / module"]))
    for index, (attack, panel) in enumerate(zip(attacks, axes[0])):
        _draw(frame[frame["attack"] == attack], panel, legend=index == len(attacks) - 1, hue_order=order)
        panel.set_title(attack.upper())
    written = save_figure(figure, stem)
    plt.close(figure)
    return written


def _labelled(curves: pd.DataFrame) -> pd.DataFrame:
    """Add the legend label: model / module, plus what was attacked when that is another score."""
    frame = curves.copy()
    label = frame["model"] + " / " + frame["module"]
    cross = frame["attacked"] != frame["module"]
    frame["model / module"] = label.where(~cross, label + " (attack on " + frame["attacked"] + ")")
    return frame


def _draw(frame: pd.DataFrame, axes: plt.Axes, legend: bool, hue_order: list[str] | None = None) -> None:
    attack = ", ".join(sorted(frame["attack"].unique()))
    param = ", ".join(sorted(frame["param"].unique()))
    sns.lineplot(
        data=frame,
        x="value",
        y="accuracy",
        hue="model / module",
        hue_order=hue_order,
        errorbar="sd" if frame["fold"].nunique() > 1 else None,
        marker="o",
        legend=legend,
        ax=axes,
    )
    axes.set_xlabel(f"{attack.upper()} {param}" + (" (pixel scale [0, 1], L-inf)" if param == "eps" else ""))
    axes.set_ylabel("verification accuracy")
    axes.set_ylim(0, 1)
    axes.grid(alpha=0.3)


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
