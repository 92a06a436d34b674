"""Run settings, and the hash that identifies a run for resuming."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..attacks.budgets import AttackSpec


@dataclass
class RunConfig:
    """Settings of one `frb run`.

    `per_fold` limits every fold, including the folds that only supply
    thresholds, so a small run stays cheap and its thresholds still come
    from held-out folds.
    """

    spec: AttackSpec
    models: list[str]
    data_root: Path
    cache_dir: Path
    folds: list[int] | None = None
    per_fold: int | None = None
    batch_size: int = 32
    seed: int = 0
    skip_missing: bool = False
    weights: dict[str, Path] = field(default_factory=dict)
    device: str = "cpu"
    progress: bool = True
    jobs: int = 1

    def identity(self, data_hash: str, weights_hashes: dict[str, str]) -> dict:
        """Collect the settings that decide the results.

        Batch size, jobs, the device index and progress bars are left out because they do not.
        """
        return {
            "attack": asdict(self.spec),
            "models": self.models,
            "folds": self.folds,
            "per_fold": self.per_fold,
            "seed": self.seed,
            # CPU and GPU kernels round differently, so their results differ slightly.
            "device": self.device.split(":")[0],
            "skip_missing": self.skip_missing,
            "data": data_hash,
            "weights": weights_hashes,
        }


def identity_hash(identity: dict) -> str:
    """Hash a run's identity into a short stable id."""
    text = json.dumps(identity, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]
