"""The LFW verification protocol: per-fold thresholds and accuracy.

For each fold, the threshold is the one with the best accuracy on the
other folds' clean scores. It is then applied to the held-out fold and
stays fixed when that fold is attacked.
"""

from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger(__name__)


def best_threshold(scores: np.ndarray, labels: np.ndarray) -> float:
    """Return the threshold with the best accuracy for `score < threshold` means same.

    Every distinct accuracy is reached by a threshold between two adjacent
    sorted scores. So the midpoints, plus one point past each end, are an
    exhaustive candidate set, and no grid resolution is involved. Ties go to
    the smallest threshold.
    """
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels, dtype=bool)
    if scores.size == 0:
        raise ValueError("cannot choose a threshold from zero pairs")
    order = np.argsort(scores, kind="stable")
    sorted_scores = scores[order]
    sorted_labels = labels[order]

    unique = np.unique(sorted_scores)
    candidates = np.concatenate([[unique[0] - 1.0], (unique[:-1] + unique[1:]) / 2, [unique[-1] + 1.0]])
    # Pairs with score < t are called "same": count true positives below t
    # and true negatives at or above t for every candidate at once.
    below = np.searchsorted(sorted_scores, candidates, side="left")
    same_cumulative = np.concatenate([[0], np.cumsum(sorted_labels)])
    true_same = same_cumulative[below]
    total_diff = (~sorted_labels).sum()
    diff_below = below - true_same
    true_diff = total_diff - diff_below
    accuracy = (true_same + true_diff) / len(scores)
    return float(candidates[int(np.argmax(accuracy))])


def fold_thresholds(scores: np.ndarray, labels: np.ndarray, folds: np.ndarray) -> dict[int, float]:
    """Choose each fold's threshold on the clean scores of all other folds.

    With a single fold there is nothing to hold out, so its threshold is
    chosen on itself (and that accuracy is optimistic).
    """
    folds = np.asarray(folds)
    thresholds: dict[int, float] = {}
    unique_folds = sorted(int(fold) for fold in np.unique(folds))
    if len(unique_folds) == 1:
        log.warning("only fold %d is present, so its threshold is chosen on itself and accuracy is optimistic",
                    unique_folds[0])
    for fold in unique_folds:
        train = folds != fold if len(unique_folds) > 1 else np.ones_like(folds, dtype=bool)
        thresholds[fold] = best_threshold(np.asarray(scores)[train], np.asarray(labels)[train])
    return thresholds


def decide(scores: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Return True (same person) where the score is below its threshold."""
    return np.asarray(scores) < np.asarray(thresholds)


def fold_accuracies(decisions: np.ndarray, labels: np.ndarray, folds: np.ndarray) -> dict[int, float]:
    """Accuracy of the decisions in each fold."""
    correct = np.asarray(decisions, dtype=bool) == np.asarray(labels, dtype=bool)
    folds = np.asarray(folds)
    return {int(fold): float(correct[folds == fold].mean()) for fold in np.unique(folds)}
