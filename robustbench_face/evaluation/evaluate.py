"""`frb eval`: clean 10-fold verification accuracy."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..models.base import warn_if_trained_on
from ..models.folds import load_entry, needed, weights_by_fold
from ..sweep.clean import cached_clean
from ..sweep.prepare import Prepared, align_data, select_data
from .protocol import decide, fold_accuracies


@dataclass
class Evaluation:
    """Per-fold accuracies of each model and module, with the data they came from."""

    folds: pd.DataFrame  # model, module, fold, n_pairs, threshold, accuracy
    prepared: Prepared

    def summary(self) -> pd.DataFrame:
        """Mean and sample standard deviation of the fold accuracies, as LFW results are reported."""
        grouped = self.folds.groupby(["model", "module"], sort=False)
        return grouped.agg(
            folds=("fold", "count"),
            pairs=("n_pairs", "sum"),
            accuracy_mean=("accuracy", "mean"),
            accuracy_std=("accuracy", lambda values: float(np.std(values, ddof=1)) if len(values) > 1 else float("nan")),
        ).reset_index()


def evaluate(
    models: list[str],
    data_root: Path,
    cache_dir: Path,
    folds: list[int] | None = None,
    per_fold: int | None = None,
    batch_size: int = 64,
    device: str = "cpu",
    skip_missing: bool = False,
    weights: dict[str, Path] | None = None,
    progress: bool = True,
) -> Evaluation:
    """Score clean pairs and apply the LFW protocol's held-out thresholds."""
    weights = weights or {}
    selection = select_data(data_root, folds, per_fold, skip_missing)
    run_folds = {pair.fold for pair in selection.run_pairs}
    # Weights are found and loaded before the slow alignment, so that a bad file fails at once.
    loaded = {
        name: [
            (entry, load_entry(entry, device))
            for entry in needed(name, weights_by_fold(name, weights.get(name)), run_folds)
        ]
        for name in models
    }
    prepared = align_data(selection, cache_dir, progress)
    wanted = {pair.pair_id for pair in prepared.run_pairs}
    in_run = np.array([pair.pair_id in wanted for pair in prepared.threshold_pairs])
    labels = np.array([pair.same for pair in prepared.threshold_pairs])[in_run]
    pair_folds = np.array([pair.fold for pair in prepared.threshold_pairs])[in_run]

    rows = []
    for name in models:
        for entry, model in loaded[name]:
            served = np.array([entry.covers(fold) for fold in pair_folds])
            warn_if_trained_on(model, set(pair_folds[served].tolist()))
            _, clean = cached_clean(
                model, entry.sha256, prepared.data_hash, prepared.faces, prepared.threshold_pairs, cache_dir,
                batch_size, progress,
            )
            for module, scores in clean.scores.items():
                thresholds = np.array([clean.thresholds[module][fold] for fold in pair_folds[served]])
                decisions = decide(scores[in_run][served], thresholds)
                accuracies = fold_accuracies(decisions, labels[served], pair_folds[served])
                for fold, accuracy in accuracies.items():
                    rows.append(
                        {
                            "model": name,
                            "module": module,
                            "fold": fold,
                            "n_pairs": int((pair_folds == fold).sum()),
                            "threshold": clean.thresholds[module][fold],
                            "accuracy": accuracy,
                        }
                    )
    # With one model per fold the rows arrive fold by fold; list them model by model, then module by module.
    order = []
    for name in models:
        _, model = loaded[name][0]
        order += [(name, module) for module in model.score_names]
    rows.sort(key=lambda row: (order.index((row["model"], row["module"])), row["fold"]))
    return Evaluation(folds=pd.DataFrame(rows), prepared=prepared)
