"""The run record (`run.json`): how a result was made."""

from __future__ import annotations

import platform
import sys
import time
from importlib import metadata
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from ..sweep.config import RunConfig
    from ..sweep.prepare import Prepared

PACKAGES = ("robustbench-face", "torch", "torchvision", "torchattacks", "facenet-pytorch", "numpy", "pandas")


def package_versions() -> dict[str, str]:
    """Installed versions of the packages that shape the results."""
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def build_record(
    cfg: "RunConfig",
    command: str,
    identity: dict[str, Any],
    run_hash: str,
    prepared: "Prepared",
    started: float,
) -> dict[str, Any]:
    """Assemble the provenance record of a finished run."""
    return {
        "command": command,
        "argv": sys.argv,
        "run_id": run_hash,
        "settings": identity,
        "seed": cfg.seed,
        "batch_size": cfg.batch_size,
        "device": cfg.device,
        "versions": package_versions(),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.machine(),
            "torch_threads": torch.get_num_threads(),
        },
        "data": {
            "lfw_root": str(prepared.lfw.root.resolve()),
            "pairs_sha256_with_images": prepared.data_hash,
            "images": len(prepared.image_relpaths),
        },
        "counts": {
            "threshold_pairs": len(prepared.threshold_pairs),
            "attacked_pairs": len(prepared.run_pairs),
            "skipped_pairs": len(prepared.skipped),
            "skipped_pair_ids": [pair.pair_id for pair in prepared.skipped],
            "fallback_alignments": len(prepared.fallback_images),
            "fallback_images": prepared.fallback_images,
        },
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
