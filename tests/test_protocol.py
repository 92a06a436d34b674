"""Thresholds and accuracy under the LFW protocol."""

from __future__ import annotations

import numpy as np
import pytest

from robustbench_face.evaluation.protocol import best_threshold, decide, fold_accuracies, fold_thresholds


def brute_force_best_accuracy(scores: np.ndarray, labels: np.ndarray) -> float:
    grid = np.concatenate([scores - 1e-9, scores + 1e-9, [scores.min() - 1, scores.max() + 1]])
    return max(float(((scores < t) == labels).mean()) for t in grid)


@pytest.mark.parametrize("seed", range(5))
def test_best_threshold_matches_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.random(200) < 0.5
    scores = np.round(rng.normal(loc=np.where(labels, 0.4, 0.8), scale=0.2), 2)  # rounding creates ties
    threshold = best_threshold(scores, labels)
    accuracy = ((scores < threshold) == labels).mean()
    assert accuracy == pytest.approx(brute_force_best_accuracy(scores, labels))


def test_best_threshold_separable() -> None:
    scores = np.array([0.1, 0.2, 0.3, 0.7, 0.8])
    labels = np.array([True, True, True, False, False])
    assert best_threshold(scores, labels) == pytest.approx(0.5)


def test_fold_thresholds_hold_the_fold_out() -> None:
    # Fold 2's own scores would pick 10.5; its threshold must come from fold 1 only.
    scores = np.array([0.1, 0.9, 10.0, 11.0])
    labels = np.array([True, False, True, False])
    folds = np.array([1, 1, 2, 2])
    thresholds = fold_thresholds(scores, labels, folds)
    assert thresholds[2] == pytest.approx(0.5)
    assert thresholds[1] == pytest.approx(10.5)
    accuracies = fold_accuracies(decide(scores, [thresholds[f] for f in folds]), labels, folds)
    assert accuracies == {1: 0.5, 2: 0.5}


def test_decision_is_strictly_below() -> None:
    assert decide(np.array([0.5, 0.4]), np.array([0.5, 0.5])).tolist() == [False, True]


def test_empty_scores_rejected() -> None:
    with pytest.raises(ValueError, match="zero pairs"):
        best_threshold(np.array([]), np.array([], dtype=bool))
