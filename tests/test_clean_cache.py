"""The on-disk cache of clean embeddings, scores and thresholds."""

from __future__ import annotations

from pathlib import Path

import torch

from robustbench_face.data.lfw import locate_lfw
from robustbench_face.models.msn.network import MSN
from robustbench_face.sweep.clean import cached_clean
from robustbench_face.sweep.prepare import data_hash


def _noisy_msn() -> MSN:
    model = MSN.pretrained()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.3 * parameter.abs().mean() * torch.randn(parameter.shape, generator=generator))
    return model


def test_cache_key_includes_image_bytes(fold1_faces, tmp_path: Path) -> None:
    pairs, faces = fold1_faces
    shipped, noisy = MSN.pretrained(), _noisy_msn()

    first, _ = cached_clean(shipped, "weights", "images-v1", faces, pairs, tmp_path, batch_size=8)
    # Same key: the cached result comes back although another model is passed.
    again, _ = cached_clean(noisy, "weights", "images-v1", faces, pairs, tmp_path, batch_size=8)
    # Other image bytes: computed again, here by the other model.
    changed, _ = cached_clean(noisy, "weights", "images-v2", faces, pairs, tmp_path, batch_size=8)

    rel = faces.relpaths[0]
    assert torch.equal(again[rel], first[rel])
    assert not torch.equal(changed[rel], first[rel])


def test_data_hash_reuses_alignment_digests(fold1_faces, data_root: Path) -> None:
    _, faces = fold1_faces
    lfw = locate_lfw(data_root)

    from_disk = data_hash(lfw, faces.relpaths)
    assert all(faces.source_sha256)
    assert data_hash(lfw, faces.relpaths, faces.source_sha256) == from_disk
    # A digest that disagrees with the bytes on disk must change the hash,
    # or the digests were ignored.
    other = [faces.source_sha256[1], *faces.source_sha256[1:]]
    assert data_hash(lfw, faces.relpaths, other) != from_disk
