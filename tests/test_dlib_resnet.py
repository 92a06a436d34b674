"""Tests of the dlib ResNet port: weight loading, model contract and LFW accuracy."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from robustbench_face.errors import FrbError
from robustbench_face.models.dlib_resnet import (
    DEFAULT_WEIGHTS_DIR,
    MANIFEST_NAME,
    DlibResNet,
    load_tfjs_weights,
    weights_sha256,
)

BIN_NAME = "face_recognition_model.bin"
# sha256 of face_recognition_model.bin from @vladmandic/face-api 1.7.15.
SHIPPED_BIN_SHA256 = "b413e420d6840b2775fba32008db6f3cddb07d485967fb42cfcf379c16a8c589"
REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model() -> DlibResNet:
    return DlibResNet.pretrained()


@pytest.fixture
def weights_copy(tmp_path: Path) -> Path:
    folder = tmp_path / "weights"
    folder.mkdir()
    for name in (MANIFEST_NAME, BIN_NAME):
        shutil.copy(DEFAULT_WEIGHTS_DIR / name, folder / name)
    return folder


# --- Shipped weights and the model contract ---------------------------------------


def test_shipped_weights_sha256() -> None:
    assert weights_sha256() == SHIPPED_BIN_SHA256


def test_shipped_weights_layout() -> None:
    tensors = load_tfjs_weights()
    assert len(tensors) == 117
    # HWIO [7, 7, 3, 32] in the manifest becomes OIHW in PyTorch.
    assert tuple(tensors["conv32_down/conv/filters"].shape) == (32, 3, 7, 7)
    # conv64_down/conv1 is one of the 8 tensors stored as float32, not uint8.
    assert tensors["conv64_down/conv1/conv/filters"].dtype == torch.float32


def test_embed_shape_and_parameters(model: DlibResNet) -> None:
    faces = torch.rand(3, 3, 160, 160, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        embeddings = model.embed(faces)

    assert embeddings.shape == (3, 128)
    assert torch.isfinite(embeddings).all()
    assert next(model.parameters()).dtype == torch.float32
    assert model(faces).shape == (3, 128)


def test_embed_deterministic_and_batch_independent(model: DlibResNet) -> None:
    faces = torch.rand(3, 3, 160, 160, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        first = model.embed(faces)
        second = model.embed(faces)
        alone = model.embed(faces[1:2])

    assert torch.equal(first, second)
    torch.testing.assert_close(alone[0], first[1], atol=1e-5, rtol=1e-5)


def test_embed_gradient_reaches_input(model: DlibResNet) -> None:
    faces = torch.rand(2, 3, 160, 160, generator=torch.Generator().manual_seed(2)).requires_grad_(True)
    distance = model.compare(*model.embed(faces).split(1))["all"]
    distance.sum().backward()

    assert faces.grad is not None
    assert torch.isfinite(faces.grad).all()
    assert faces.grad.abs().sum() > 0


def test_embed_rejects_wrong_shape(model: DlibResNet) -> None:
    with pytest.raises(ValueError, match="160"):
        model.embed(torch.rand(1, 3, 150, 150))


def test_folded_stem_matches_unfolded(model: DlibResNet) -> None:
    """The stem with its affine step folded equals conv, bias, scale, shift and ReLU applied in turn."""
    tensors = load_tfjs_weights()
    x = torch.randn(2, 3, 31, 31, generator=torch.Generator().manual_seed(3))
    reference = F.conv2d(x, tensors["conv32_down/conv/filters"], tensors["conv32_down/conv/bias"], stride=2)
    reference = reference * tensors["conv32_down/scale/weights"].view(1, -1, 1, 1)
    reference = F.relu(reference + tensors["conv32_down/scale/biases"].view(1, -1, 1, 1))

    with torch.no_grad():
        folded = model.backbone.stem(x)

    torch.testing.assert_close(folded, reference, atol=1e-5, rtol=1e-4)


# --- Corrupt weights ---------------------------------------------------------------


def _truncate_bin(folder: Path) -> None:
    path = folder / BIN_NAME
    path.write_bytes(path.read_bytes()[:-100])


def _extend_bin(folder: Path) -> None:
    with open(folder / BIN_NAME, "ab") as handle:
        handle.write(b"\0" * 4)


def _delete_bin(folder: Path) -> None:
    (folder / BIN_NAME).unlink()


def _delete_manifest(folder: Path) -> None:
    (folder / MANIFEST_NAME).unlink()


def _garble_manifest(folder: Path) -> None:
    (folder / MANIFEST_NAME).write_bytes(b"\x89PNG not json {")


def _manifest_as_object(folder: Path) -> None:
    (folder / MANIFEST_NAME).write_text(json.dumps({"weights": [], "paths": [BIN_NAME]}))


def _edit_manifest(folder: Path, edit: Callable[[list], None]) -> None:
    path = folder / MANIFEST_NAME
    groups = json.loads(path.read_text())
    edit(groups)
    path.write_text(json.dumps(groups))


def _unknown_quantization_dtype(folder: Path) -> None:
    _edit_manifest(folder, lambda groups: groups[0]["weights"][0]["quantization"].update(dtype="int4"))


def _unknown_float_dtype(folder: Path) -> None:
    # conv64_down/conv1/conv/filters is stored unquantized.
    _edit_manifest(folder, lambda groups: groups[0]["weights"][28].update(dtype="float64"))


def _string_shape(folder: Path) -> None:
    _edit_manifest(folder, lambda groups: groups[0]["weights"][0].update(shape="7x7x3x32"))


def _shard_outside_folder(folder: Path) -> None:
    _edit_manifest(folder, lambda groups: groups[0].update(paths=["../" + BIN_NAME]))


CORRUPTIONS = [
    (_truncate_bin, BIN_NAME, "bytes"),
    (_extend_bin, BIN_NAME, "bytes"),
    (_delete_bin, BIN_NAME, "not found"),
    (_delete_manifest, MANIFEST_NAME, "not found"),
    (_garble_manifest, MANIFEST_NAME, "not valid JSON"),
    (_manifest_as_object, MANIFEST_NAME, "list of groups"),
    (_unknown_quantization_dtype, MANIFEST_NAME, "int4"),
    (_unknown_float_dtype, MANIFEST_NAME, "float64"),
    (_string_shape, MANIFEST_NAME, "invalid shape"),
    (_shard_outside_folder, MANIFEST_NAME, "paths"),
]


@pytest.mark.parametrize(
    ("corrupt", "file_name", "reason"), CORRUPTIONS, ids=[c[0].__name__.lstrip("_") for c in CORRUPTIONS]
)
def test_corrupt_weights_raise(weights_copy: Path, corrupt: Callable[[Path], None], file_name: str, reason: str) -> None:
    corrupt(weights_copy)

    with pytest.raises(FrbError) as caught:
        DlibResNet.pretrained(weights_copy)

    message = str(caught.value)
    assert str(weights_copy / file_name) in message
    assert reason in message
    assert "\n" not in message
    assert "@vladmandic/face-api@1.7.15" in message


def test_renamed_tensor_raises(weights_copy: Path) -> None:
    _edit_manifest(weights_copy, lambda groups: groups[0]["weights"][-1].update(name="logits"))

    with pytest.raises(FrbError, match="not the dlib ResNet weights") as caught:
        DlibResNet.pretrained(weights_copy)

    assert str(weights_copy / MANIFEST_NAME) in str(caught.value)


def test_wrong_tensor_shape_raises(weights_copy: Path) -> None:
    # Swapping fc's shape keeps the byte count, so only the shape check catches it.
    _edit_manifest(weights_copy, lambda groups: groups[0]["weights"][-1].update(shape=[128, 256]))

    with pytest.raises(FrbError, match="'fc' has shape"):
        DlibResNet.pretrained(weights_copy)


# --- LFW accuracy ------------------------------------------------------------------


def _lfw_root() -> Path:
    data_root = os.environ.get("FRB_DATA_ROOT")
    base = Path(data_root) if data_root else REPO_ROOT.parent / "shared" / "data"
    return base / "lfw"


def _fold_one_pairs(pairs_path: Path, per_kind: int) -> list[tuple[str, int, str, int, bool]]:
    """Read the first `per_kind` matched and mismatched pairs of fold 1."""
    lines = pairs_path.read_text().splitlines()
    fold_size = int(lines[0].split()[1])
    matched = [line.split() for line in lines[1 : 1 + per_kind]]
    mismatched = [line.split() for line in lines[1 + fold_size : 1 + fold_size + per_kind]]
    pairs = [(name, int(first), name, int(second), True) for name, first, second in matched]
    pairs += [(name1, int(first), name2, int(second), False) for name1, first, name2, second in mismatched]
    return pairs


def _centre_chip(lfw: Path, name: str, number: int) -> torch.Tensor:
    """Crop the central 130 pixels of a 250 x 250 deep-funneled image and resize it to 150."""
    path = lfw / "lfw-deepfunneled" / name / f"{name}_{number:04d}.jpg"
    with Image.open(path) as image:
        chip = image.convert("RGB").crop((60, 60, 190, 190)).resize((150, 150), Image.BILINEAR)
    return torch.from_numpy(np.asarray(chip, dtype=np.float32) / 255.0).permute(2, 0, 1)


def test_lfw_centre_crop_accuracy(model: DlibResNet) -> None:
    """Verify 40 centre-cropped fold-1 pairs at dlib's 0.6 threshold.

    The check is independent of the suite's aligner, because a 130-pixel
    centre crop of the deep-funneled image lies close to dlib's own chip
    geometry. So the crop goes to `embed_chips` and skips the warp from the
    canonical crop. On all
    600 pairs of fold 1 this gives 95.2% (571 of 600), and these 40 pairs
    give 39 of 40. The bound of 37 catches gross porting errors and TF.js
    'same' max pooling (36 of 40). It misses subtler ones: swapped RGB order
    or a missing mean subtraction cost only one or two of these pairs.
    """
    lfw = _lfw_root()
    pairs_path = lfw / "pairs.txt"
    if not pairs_path.is_file() or not (lfw / "lfw-deepfunneled").is_dir():
        pytest.skip(f"LFW not found under {lfw}; set FRB_DATA_ROOT to the folder that contains lfw/")

    pairs = _fold_one_pairs(pairs_path, per_kind=20)
    chips = torch.stack([_centre_chip(lfw, name, number) for pair in pairs for name, number in (pair[:2], pair[2:4])])
    with torch.no_grad():
        embeddings = model.embed_chips(chips)
    distances = model.compare(embeddings[0::2], embeddings[1::2])["all"]
    same = torch.tensor([pair[4] for pair in pairs])
    correct = int(((distances < 0.6) == same).sum())

    assert len(pairs) == 40
    assert correct >= 37, f"{correct} of 40 pairs verified correctly at threshold 0.6"
