"""dlib's ResNet face-embedding network, ported from its TensorFlow.js weights.

The network maps an aligned 150 x 150 RGB face chip to a 128-d embedding.
Two faces are judged the same person when the Euclidean distance of their
embeddings is below about 0.6, dlib's own threshold. The weights ship with
the package in the TF.js layout of the face-api.js family of libraries
(npm `@vladmandic/face-api` 1.7.15, folder `model/`, MIT licence).

The layer layout follows face-api.js's FaceRecognitionNet. Every pooling
and strided convolution is unpadded ('valid'). A downsampling block adds a
2 x 2 average-pooled shortcut to its convolution branch, and zero-pads that
branch at the bottom and right where it comes out a pixel smaller.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import FrbError
from ..geometry import CROP_SIZE, DLIB_TEMPLATE_150
from .base import Verifier

logger = logging.getLogger(__name__)

DEFAULT_WEIGHTS_DIR = Path(__file__).resolve().parent / "weights" / "dlib-resnet"
MANIFEST_NAME = "face_recognition_model-weights_manifest.json"

_RESTORE_HINT = (
    "reinstall robustbench-face, or restore face_recognition_model.bin and its manifest "
    "from the npm package @vladmandic/face-api@1.7.15, folder model/"
)

# Per-channel RGB mean on the 0..255 scale, subtracted before the first
# convolution. face-api.js divides the result by 256, and some of its forks
# divide by 255, a difference of 0.4% in scale.
MEAN_RGB_255 = (122.782, 117.001, 104.298)
INPUT_DIVISOR = 256.0


# --- Reading the TF.js weights ----------------------------------------------


def _resolve_dir(weights_dir: str | os.PathLike[str] | None) -> Path:
    return DEFAULT_WEIGHTS_DIR if weights_dir is None else Path(weights_dir)


def _validate_entry(entry: Any, manifest_path: Path) -> None:
    """Raise FrbError unless `entry` is one well-formed tensor description."""
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
        raise FrbError(f"{manifest_path}: a weights entry has no string 'name': {entry!r:.80}; {_RESTORE_HINT}")
    name = entry["name"]
    shape = entry.get("shape")
    if not isinstance(shape, list) or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape):
        raise FrbError(
            f"{manifest_path}: tensor {name!r} has invalid shape {shape!r} (expected a list of sizes); {_RESTORE_HINT}"
        )
    quantization = entry.get("quantization")
    if quantization is None:
        return
    if not isinstance(quantization, dict):
        raise FrbError(f"{manifest_path}: tensor {name!r} has invalid quantization {quantization!r}; {_RESTORE_HINT}")
    for key in ("scale", "min"):
        value = quantization.get(key)
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise FrbError(
                f"{manifest_path}: tensor {name!r} has invalid quantization {key} {value!r}; {_RESTORE_HINT}"
            )


def _read_manifest(manifest_path: Path) -> list[dict[str, Any]]:
    """Parse a TF.js weights manifest and validate its structure.

    A manifest is a JSON list of groups. Each group names its shard files in
    `paths` and describes in `weights` the tensors stored back to back in
    the concatenation of those shards.
    """
    if not manifest_path.is_file():
        raise FrbError(f"{manifest_path}: weights manifest not found; {_RESTORE_HINT}")
    try:
        groups = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise FrbError(f"{manifest_path}: weights manifest is not valid JSON ({error}); {_RESTORE_HINT}") from error

    if not isinstance(groups, list) or not groups:
        raise FrbError(f"{manifest_path}: weights manifest must be a non-empty JSON list of groups; {_RESTORE_HINT}")
    for group in groups:
        if not isinstance(group, dict):
            raise FrbError(f"{manifest_path}: a manifest group is not a JSON object; {_RESTORE_HINT}")
        paths = group.get("paths")
        # Shards must be plain file names beside the manifest, so a manifest
        # cannot make us read files elsewhere on disk.
        if (
            not isinstance(paths, list)
            or not paths
            or not all(isinstance(p, str) and p and Path(p).name == p for p in paths)
        ):
            raise FrbError(
                f"{manifest_path}: a group's 'paths' must list shard file names in the same folder, "
                f"got {paths!r:.80}; {_RESTORE_HINT}"
            )
        entries = group.get("weights")
        if not isinstance(entries, list):
            raise FrbError(f"{manifest_path}: a group has no 'weights' list; {_RESTORE_HINT}")
        for entry in entries:
            _validate_entry(entry, manifest_path)
    return groups


def _stored_dtype(entry: dict[str, Any], manifest_path: Path) -> np.dtype:
    """Return the NumPy dtype in which a tensor's values are stored in the shard bytes."""
    # Quantized tensors name their decoded dtype here too. This loader
    # returns float32 tensors only.
    if entry.get("dtype") != "float32":
        raise FrbError(
            f"{manifest_path}: tensor {entry['name']!r} has unsupported dtype {entry.get('dtype')!r} "
            f"(supported: float32); {_RESTORE_HINT}"
        )
    quantization = entry.get("quantization")
    if quantization is not None:
        # TF.js also writes uint16 and float16 quantization. These weights use
        # only uint8, so the others are rejected rather than guessed at.
        if quantization.get("dtype") != "uint8":
            raise FrbError(
                f"{manifest_path}: tensor {entry['name']!r} has unsupported quantization dtype "
                f"{quantization.get('dtype')!r} (supported: uint8); {_RESTORE_HINT}"
            )
        return np.dtype(np.uint8)
    return np.dtype("<f4")


def _read_group_bytes(folder: Path, group: dict[str, Any]) -> tuple[bytes, Path]:
    """Concatenate a group's shard files and return the bytes and the path of the last shard."""
    chunks = []
    shard_path = folder
    for name in group["paths"]:
        shard_path = folder / name
        if not shard_path.is_file():
            raise FrbError(f"{shard_path}: weights file not found; {_RESTORE_HINT}")
        chunks.append(shard_path.read_bytes())
    return b"".join(chunks), shard_path


def load_tfjs_weights(weights_dir: str | os.PathLike[str] | None = None) -> dict[str, torch.Tensor]:
    """Read a TF.js weights manifest and its shard files into float32 tensors.

    Quantized tensors are stored as one unsigned byte per value and decoded
    as `byte * scale + min`. The others are little-endian float32. Rank-4
    tensors are convolution filters, stored [height, width, in, out] and
    returned in PyTorch's [out, in, height, width] order. Every other tensor
    keeps its stored shape.

    Raises FrbError, naming the file, when a file is missing, the manifest
    is not valid JSON or not a list of groups, a dtype is unsupported, or a
    shard's size differs from the sum of the sizes of its tensors.
    """
    folder = _resolve_dir(weights_dir)
    manifest_path = folder / MANIFEST_NAME
    groups = _read_manifest(manifest_path)

    tensors: dict[str, torch.Tensor] = {}
    for group in groups:
        data, shard_path = _read_group_bytes(folder, group)
        entries = group["weights"]
        dtypes = [_stored_dtype(entry, manifest_path) for entry in entries]
        counts = [int(np.prod(entry["shape"], dtype=np.int64)) for entry in entries]
        expected = sum(count * dtype.itemsize for count, dtype in zip(counts, dtypes))
        # A size check before decoding catches truncated downloads and
        # mismatched manifests, which would otherwise decode as garbage.
        if len(data) != expected:
            raise FrbError(
                f"{shard_path}: weights file has {len(data)} bytes but {manifest_path.name} describes "
                f"{expected}; the file is truncated or belongs to another model, so {_RESTORE_HINT}"
            )

        offset = 0
        for entry, dtype, count in zip(entries, dtypes, counts):
            name = entry["name"]
            if name in tensors:
                raise FrbError(f"{manifest_path}: tensor {name!r} is listed twice; {_RESTORE_HINT}")
            stored = np.frombuffer(data, dtype=dtype, count=count, offset=offset)
            offset += count * dtype.itemsize
            quantization = entry.get("quantization")
            if quantization is not None:
                # Dequantize in float64 and round once to float32, as TF.js does.
                values = (stored * float(quantization["scale"]) + float(quantization["min"])).astype(np.float32)
            else:
                values = stored.astype(np.float32)
            tensor = torch.from_numpy(values.reshape(entry["shape"]))
            if tensor.ndim == 4:
                tensor = tensor.permute(3, 2, 0, 1)
            tensors[name] = tensor.contiguous()

    logger.debug("Read %d tensors from %s", len(tensors), manifest_path)
    return tensors


def weights_sha256(weights_dir: str | os.PathLike[str] | None = None) -> str:
    """Return the sha256 hex digest of the weight bytes, for provenance records.

    The digest covers the shard files named by the manifest, concatenated in
    manifest order. For the shipped weights that is the single file
    face_recognition_model.bin, so the digest equals `sha256sum` of it.
    """
    folder = _resolve_dir(weights_dir)
    digest = hashlib.sha256()
    for group in _read_manifest(folder / MANIFEST_NAME):
        data, _ = _read_group_bytes(folder, group)
        digest.update(data)
    return digest.hexdigest()


# --- The network --------------------------------------------------------------


class _ConvUnit(nn.Module):
    """Convolution with bias, then dlib's per-channel affine step, then an optional ReLU.

    The affine step (`y * scale/weights + scale/biases`, a batch norm folded
    at training time) is folded into the convolution when the weights are
    loaded, which saves one pass over the activations per convolution.
    """

    def __init__(
        self, prefix: str, in_channels: int, out_channels: int, kernel_size: int, stride: int, padding: int, relu: bool
    ) -> None:
        super().__init__()
        self.prefix = prefix
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=True)
        self.relu = relu

    def tfjs_shapes(self) -> dict[str, tuple[int, ...]]:
        """Map each TF.js tensor name this unit needs to its shape in PyTorch order."""
        out_channels = self.conv.out_channels
        return {
            f"{self.prefix}/conv/filters": tuple(self.conv.weight.shape),
            f"{self.prefix}/conv/bias": (out_channels,),
            f"{self.prefix}/scale/weights": (out_channels,),
            f"{self.prefix}/scale/biases": (out_channels,),
        }

    @torch.no_grad()
    def load_tfjs(self, tensors: Mapping[str, torch.Tensor]) -> None:
        scale = tensors[f"{self.prefix}/scale/weights"]
        shift = tensors[f"{self.prefix}/scale/biases"]
        filters = tensors[f"{self.prefix}/conv/filters"]
        bias = tensors[f"{self.prefix}/conv/bias"]
        # (conv(x, W) + b) * s + t == conv(x, W * s) + (b * s + t), per output channel.
        self.conv.weight.copy_(filters * scale.view(-1, 1, 1, 1))
        self.conv.bias.copy_(bias * scale + shift)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return F.relu(out) if self.relu else out


class _ResidualBlock(nn.Module):
    """Two 3 x 3 convolution units with a shortcut, then ReLU of their sum.

    A plain block keeps the size and uses the identity shortcut. A
    downsampling block has an unpadded stride-2 first convolution and a
    2 x 2 average-pooled shortcut, zero-padded in channels up to the
    block's width.
    """

    def __init__(self, name: str, in_channels: int, out_channels: int, downsample: bool) -> None:
        super().__init__()
        if not downsample and in_channels != out_channels:
            raise ValueError(f"block {name}: a plain block needs in_channels == out_channels")
        self.downsample = downsample
        self.extra_channels = out_channels - in_channels
        stride, padding = (2, 0) if downsample else (1, 1)
        self.conv1 = _ConvUnit(f"{name}/conv1", in_channels, out_channels, 3, stride, padding, relu=True)
        self.conv2 = _ConvUnit(f"{name}/conv2", out_channels, out_channels, 3, 1, 1, relu=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2(self.conv1(x))
        if not self.downsample:
            return F.relu(out + x)

        shortcut = F.avg_pool2d(x, kernel_size=2, stride=2)
        # An unpadded 3 x 3 stride-2 convolution on an even size comes out
        # one pixel smaller than the pooled shortcut (8 -> 3 against 4, and
        # 4 -> 1 against 2 in this network). face-api.js fills the missing
        # bottom row and right column with zeros.
        pad_bottom = shortcut.shape[-2] - out.shape[-2]
        pad_right = shortcut.shape[-1] - out.shape[-1]
        if pad_bottom or pad_right:
            out = F.pad(out, (0, pad_right, 0, pad_bottom))
        if self.extra_channels:
            shortcut = F.pad(shortcut, (0, 0, 0, 0, 0, self.extra_channels))
        return F.relu(out + shortcut)


# (name, input channels, output channels, downsampling) of each residual
# block, in order, as the TF.js tensor names spell them.
_BLOCKS = (
    ("conv32_1", 32, 32, False),
    ("conv32_2", 32, 32, False),
    ("conv32_3", 32, 32, False),
    ("conv64_down", 32, 64, True),
    ("conv64_1", 64, 64, False),
    ("conv64_2", 64, 64, False),
    ("conv64_3", 64, 64, False),
    ("conv128_down", 64, 128, True),
    ("conv128_1", 128, 128, False),
    ("conv128_2", 128, 128, False),
    ("conv256_down", 128, 256, True),
    ("conv256_1", 256, 256, False),
    ("conv256_2", 256, 256, False),
    ("conv256_down_out", 256, 256, True),
)


class DlibResNetBackbone(nn.Module):
    """The dlib ResNet on normalised 150 x 150 chips, returning 128-d embeddings.

    Inputs are (N, 3, 150, 150) RGB chips already normalised as
    `(pixel_0_255 - MEAN_RGB_255) / INPUT_DIVISOR`. Outputs are (N, 128)
    and not L2-normalised.
    """

    def __init__(self) -> None:
        super().__init__()
        self.stem = _ConvUnit("conv32_down", 3, 32, 7, stride=2, padding=0, relu=True)
        self.blocks = nn.Sequential(*(_ResidualBlock(*spec) for spec in _BLOCKS))
        self.fc = nn.Linear(256, 128, bias=False)

    def tfjs_shapes(self) -> dict[str, tuple[int, ...]]:
        """Map every TF.js tensor name the network needs to its shape in PyTorch order.

        The shape of `fc` is given as stored, (256, 128), because the loader
        leaves rank-2 tensors untransposed.
        """
        shapes = dict(self.stem.tfjs_shapes())
        for block in self.blocks:
            shapes.update(block.conv1.tfjs_shapes())
            shapes.update(block.conv2.tfjs_shapes())
        shapes["fc"] = (self.fc.in_features, self.fc.out_features)
        return shapes

    @torch.no_grad()
    def load_tfjs(self, tensors: Mapping[str, torch.Tensor], source: Path) -> None:
        """Copy TF.js tensors from `load_tfjs_weights` into the modules.

        Raises FrbError naming `source` when a tensor is missing, unexpected
        or of the wrong shape, which means the files belong to another model.
        """
        expected = self.tfjs_shapes()
        missing = sorted(set(expected) - set(tensors))
        unexpected = sorted(set(tensors) - set(expected))
        if missing or unexpected:
            raise FrbError(
                f"{source}: not the dlib ResNet weights ({len(missing)} tensors missing, e.g. "
                f"{missing[:2]}; {len(unexpected)} unexpected, e.g. {unexpected[:2]}); {_RESTORE_HINT}"
            )
        for name, shape in expected.items():
            if tuple(tensors[name].shape) != shape:
                raise FrbError(
                    f"{source}: tensor {name!r} has shape {tuple(tensors[name].shape)} but the dlib ResNet "
                    f"needs {shape}; {_RESTORE_HINT}"
                )

        self.stem.load_tfjs(tensors)
        for block in self.blocks:
            block.conv1.load_tfjs(tensors)
            block.conv2.load_tfjs(tensors)
        self.fc.weight.copy_(tensors["fc"].t())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.stem(x)  # 150 -> 72
        # Unpadded ('valid') 3 x 3 max pooling, 72 -> 35, as in face-api.js.
        # TF.js 'same' pooling instead lowered LFW fold-1 accuracy on
        # centre crops at threshold 0.6 from 95.2% to 86.8%.
        out = F.max_pool2d(out, kernel_size=3, stride=2)
        out = self.blocks(out)  # 35 -> 17 -> 8 -> 4 -> 2
        return self.fc(out.mean(dim=(2, 3)))


# --- The verifier ---------------------------------------------------------------


class DlibResNet(Verifier):
    """dlib's ResNet metric network as a `Verifier` (128-d, Euclidean distance).

    `embed` warps canonical crops to dlib's 150 x 150 chip geometry, scales
    them to 0..255, subtracts the per-channel mean and divides by 256 before
    the network. Embeddings are not normalised, and dlib's threshold on
    their distance is 0.6. The model has no batch norm or dropout, so train
    and eval mode give the same output.
    """

    name = "dlib-resnet"
    input_size = 150
    template = DLIB_TEMPLATE_150

    def __init__(self) -> None:
        super().__init__()
        self.backbone = DlibResNetBackbone()
        self.register_buffer("mean_rgb", torch.tensor(MEAN_RGB_255).view(1, 3, 1, 1), persistent=False)

    @classmethod
    def pretrained(cls, weights_dir: str | os.PathLike[str] | None = None) -> DlibResNet:
        """Build the model from TF.js weights, by default those shipped with the package.

        Parameters come back with `requires_grad=False` because attacks need
        gradients with respect to the input only, and skipping the weight
        gradients makes each backward pass cheaper.
        """
        folder = _resolve_dir(weights_dir)
        tensors = load_tfjs_weights(folder)
        model = cls()
        model.backbone.load_tfjs(tensors, source=folder / MANIFEST_NAME)
        model.requires_grad_(False)
        model.eval()
        logger.info("Loaded %s weights from %s", cls.name, folder)
        return model

    def embed_chips(self, chips: torch.Tensor) -> torch.Tensor:
        """Map dlib chips (N, 3, 150, 150), RGB in [0, 1], to embeddings (N, 128).

        This skips the warp from the canonical geometry, for inputs already
        cropped to dlib's own chip geometry.
        """
        size = self.input_size
        if chips.ndim != 4 or tuple(chips.shape[1:]) != (3, size, size):
            raise ValueError(f"expected chips of shape (N, 3, {size}, {size}), got {tuple(chips.shape)}")
        normalised = (chips * 255.0 - self.mean_rgb) / INPUT_DIVISOR
        return self.backbone(normalised)

    def embed(self, faces: torch.Tensor) -> torch.Tensor:
        """Map canonical crops (N, 3, 160, 160), RGB in [0, 1], to embeddings (N, 128)."""
        if faces.ndim != 4 or tuple(faces.shape[1:]) != (3, CROP_SIZE, CROP_SIZE):
            raise ValueError(
                f"expected canonical crops of shape (N, 3, {CROP_SIZE}, {CROP_SIZE}), got {tuple(faces.shape)}"
            )
        return self.embed_chips(self.to_chip(faces))
