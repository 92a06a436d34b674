"""Turning per-pair results into one row per model, module, budget and fold."""

from __future__ import annotations

import numpy as np
import pandas as pd

# `module` is whose decision is scored and `attacked` is the score the
# attack targeted. They differ for a module scored on images made by
# attacking its whole model.
CURVE_KEYS = ["model", "module", "attacked", "attack", "param", "value", "fold"]
CURVE_COLUMNS = CURVE_KEYS + [
    "n_pairs",
    "accuracy",
    "accuracy_matched",
    "accuracy_mismatched",
    "attack_success_rate",
    "linf_mean",
    "linf_max",
    "l2_mean",
]


def _summarise(group: pd.DataFrame) -> pd.Series:
    correct = group["correct"].astype(bool)
    matched = group["label"] == 1
    clean_correct = group["clean_correct"].astype(bool)
    return pd.Series(
        {
            "n_pairs": len(group),
            "accuracy": correct.mean(),
            "accuracy_matched": correct[matched].mean() if matched.any() else np.nan,
            "accuracy_mismatched": correct[~matched].mean() if (~matched).any() else np.nan,
            # Among the pairs decided correctly on clean images, the share
            # the attack turned into errors.
            "attack_success_rate": (~correct[clean_correct]).mean() if clean_correct.any() else np.nan,
            "linf_mean": group["linf"].mean(),
            "linf_max": group["linf"].max(),
            "l2_mean": group["l2"].mean(),
        }
    )


def summarise_pairs(pairs: pd.DataFrame) -> pd.DataFrame:
    """Aggregate `pairs.csv` rows into `curves.csv` rows."""
    rows = [
        {**dict(zip(CURVE_KEYS, key)), **_summarise(group).to_dict()}
        for key, group in pairs.groupby(CURVE_KEYS, sort=True)
    ]
    frame = pd.DataFrame(rows, columns=CURVE_COLUMNS)
    frame["n_pairs"] = frame["n_pairs"].astype(int)
    return frame


def summarise_timings(pairs: pd.DataFrame) -> pd.DataFrame:
    """Attack seconds per model, module, budget and fold.

    Timings live in their own file because they change from run to run,
    while curves.csv and pairs.csv are byte-identical for the same seed.
    """
    timings = pairs.groupby(CURVE_KEYS, sort=True)["seconds"].sum().reset_index()
    return timings
