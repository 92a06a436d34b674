"""Regression checks: compare a run's curves with reference curves."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ..errors import FrbError
from .curves import CURVE_KEYS


@dataclass
class CheckResult:
    """The comparison of every baseline row with the run."""

    rows: pd.DataFrame  # keys, accuracy_baseline, accuracy_run, drop, passed

    @property
    def passed(self) -> bool:
        return bool(self.rows["passed"].all())


def _read_curves(path: Path, label: str) -> pd.DataFrame:
    try:
        frame = pd.read_csv(path)
    except FileNotFoundError:
        raise FrbError(f"{label} {path} not found; give a curves.csv written by `frb run`") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise FrbError(f"{label} {path} is not a readable CSV ({err}); give a curves.csv written by `frb run`") from None
    missing = [column for column in [*CURVE_KEYS, "accuracy"] if column not in frame.columns]
    if missing:
        raise FrbError(f"{label} {path} has no column {missing[0]!r}; give a curves.csv written by `frb run`")
    return frame[[*CURVE_KEYS, "accuracy"]]


def check_against_baseline(run_curves: Path, baseline: Path, tolerance: float) -> CheckResult:
    """Fail every baseline row whose accuracy the run undercuts by more than `tolerance`.

    Rows are matched on model, module, attacked score, attack, budget and
    fold. A baseline row that the run lacks raises FrbError, because a
    check that compares nothing would pass silently.
    """
    if not 0 <= tolerance <= 1:
        raise FrbError(f"--tolerance {tolerance:g} is outside [0, 1]; give an accuracy difference such as 0.02")
    run = _read_curves(run_curves, "run curves")
    reference = _read_curves(baseline, "baseline")
    # Budgets such as 0.03 must match whatever float formatting wrote them.
    for frame in (run, reference):
        frame["value"] = frame["value"].round(10)
    merged = reference.merge(run, on=CURVE_KEYS, how="left", suffixes=("_baseline", "_run"))
    absent = merged[merged["accuracy_run"].isna()]
    if not absent.empty:
        first = absent.iloc[0]
        raise FrbError(
            f"run {run_curves} has no row for {first['model']}/{first['module']} {first['attack']} "
            f"{first['param']}={first['value']:g} fold {first['fold']}; rerun with the baseline's settings"
        )
    merged["drop"] = merged["accuracy_baseline"] - merged["accuracy_run"]
    merged["passed"] = merged["drop"] <= tolerance + 1e-12
    return CheckResult(rows=merged)
