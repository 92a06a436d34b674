"""Aligned faces of a run, held in memory as one uint8 tensor."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .align import AlignerSettings, align_paths
from .lfw import LFW


@dataclass
class FaceStore:
    """Canonical aligned crops keyed by LFW relative path ("<Name>/<Name>_0001.jpg").

    Crops stay uint8 (N, 3, 160, 160) in memory, 77 KB each; `tensor`
    converts the requested ones to float in [0, 1].
    """

    relpaths: list[str]
    crops: torch.Tensor
    landmarks: np.ndarray  # (N, 5, 2) in crop pixels
    fallbacks: list[str] = field(default_factory=list)
    # Digest of the aligner settings, so caches of derived values can key on it.
    settings_digest: str = ""
    # Hex sha256 of each source image, in `relpaths` order. Alignment checks
    # its cache with them, so the data hash reuses them instead of reading again.
    source_sha256: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._index = {rel: i for i, rel in enumerate(self.relpaths)}

    def tensor(self, relpaths: list[str]) -> torch.Tensor:
        """Float crops (len(relpaths), 3, 160, 160) in [0, 1]."""
        rows = torch.tensor([self._index[rel] for rel in relpaths], dtype=torch.long)
        return self.crops.index_select(0, rows).float().div_(255.0)

    def crops_of(self, relpaths: list[str]) -> torch.Tensor:
        """Return the stored uint8 crops (len(relpaths), 3, 160, 160)."""
        rows = torch.tensor([self._index[rel] for rel in relpaths], dtype=torch.long)
        return self.crops.index_select(0, rows)

    def landmarks_of(self, relpaths: list[str]) -> np.ndarray:
        return self.landmarks[[self._index[rel] for rel in relpaths]]


def load_faces(lfw: LFW, relpaths: list[str], cache_dir: Path, progress: bool = True) -> FaceStore:
    """Align (or read from the cache) every image in `relpaths`.

    Cache keys are paths relative to the folder that contains pairs.txt, for
    example "lfw-deepfunneled/Name/Name_0001.jpg", so a cache stays valid
    wherever that folder is moved.
    """
    folder = lfw.images.relative_to(lfw.root).as_posix()
    faces = align_paths([f"{folder}/{rel}" for rel in relpaths], data_root=lfw.root, cache_dir=cache_dir, progress=progress)
    crops = torch.from_numpy(np.stack([face.crop for face in faces])).permute(0, 3, 1, 2).contiguous()
    landmarks = np.stack([face.landmarks for face in faces]).astype(np.float32)
    fallbacks = [rel for rel, face in zip(relpaths, faces) if face.fallback]
    return FaceStore(
        relpaths=list(relpaths),
        crops=crops,
        landmarks=landmarks,
        fallbacks=fallbacks,
        settings_digest=AlignerSettings().digest(),
        source_sha256=[face.source_sha256 or "" for face in faces],
    )
