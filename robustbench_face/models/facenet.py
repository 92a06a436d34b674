"""FaceNet: facenet-pytorch's InceptionResnetV1 with its VGGFace2 weights."""

from __future__ import annotations

import logging
import os
import urllib.error
from pathlib import Path

import numpy as np
import torch
from facenet_pytorch import InceptionResnetV1
from facenet_pytorch.models import inception_resnet_v1

from ..errors import FrbError
from .base import Verifier

log = logging.getLogger(__name__)

WEIGHTS_URL = "https://github.com/timesler/facenet-pytorch/releases/download/v2.2.9/20180402-114759-vggface2.pt"
WEIGHTS_FILE = os.path.basename(WEIGHTS_URL)

# Median positions of MTCNN's five landmarks in the crops that
# facenet-pytorch's LFW example feeds this network: the MTCNN box plus a
# 14-pixel margin, squeezed to 160 x 160 (selection_method
# "center_weighted_size"). Measured over 301 deep-funneled LFW images.
# The box is about 1.34 times taller than wide, so the square crop
# squeezes faces vertically and only an affine map reaches this geometry
# (0.5 px RMS; the best similarity leaves 6.6 px).
FACENET_TEMPLATE_160 = np.array(
    [[49.3, 65.2], [116.5, 64.1], [82.8, 93.8], [54.1, 118.9], [114.2, 118.0]],
    dtype=np.float64,
)


def cached_weights_path() -> Path:
    """Return the path where facenet-pytorch 2.5.3 caches the VGGFace2 weights.

    `$TORCH_HOME/checkpoints/`, with TORCH_HOME defaulting to
    `$XDG_CACHE_HOME/torch` or `~/.cache/torch`, as its `get_torch_home`.
    """
    return Path(inception_resnet_v1.get_torch_home()) / "checkpoints" / WEIGHTS_FILE


def missing_weights_hint() -> str:
    return (
        f"download {WEIGHTS_URL} on a machine with internet and copy it to {cached_weights_path()} "
        "(or pass --weights facenet=PATH)"
    )


class FaceNet(Verifier):
    """InceptionResnetV1 (FaceNet) trained on VGGFace2, 512-d L2-normalised embeddings.

    Scores are Euclidean distances of the normalised embeddings (the
    usual squared distance ranks pairs the same way).
    """

    name = "facenet"
    input_size = 160
    template = FACENET_TEMPLATE_160
    template_affine = True

    def __init__(self, network: InceptionResnetV1) -> None:
        super().__init__()
        self.network = network

    def embed(self, faces: torch.Tensor) -> torch.Tensor:
        chips = self.to_chip(faces)
        # facenet-pytorch's fixed_image_standardization on 0..255 pixels.
        standardised = (chips * 255.0 - 127.5) / 128.0
        return self.network(standardised)

    @classmethod
    def random(cls, seed: int = 0) -> "FaceNet":
        """Build a randomly initialised FaceNet, to test the wiring without weights."""
        torch.manual_seed(seed)
        return cls(InceptionResnetV1(pretrained=None).eval())

    @classmethod
    def pretrained(cls, weights: str | os.PathLike | None = None, download: bool = True) -> "FaceNet":
        """Load the VGGFace2 weights from `weights`, else facenet-pytorch's cache.

        When the cache is empty and `download` is set, facenet-pytorch
        downloads them exactly as it does for any user. Without internet
        that raises an FrbError that explains how to get them.
        """
        network = InceptionResnetV1(pretrained=None)
        path = Path(weights) if weights is not None else cached_weights_path()
        if not path.is_file():
            if weights is not None:
                raise FrbError(f"FaceNet weights file {path} not found; {missing_weights_hint()}")
            if not download:
                raise FrbError(f"FaceNet weights not found at {path}; {missing_weights_hint()}")
            path = _download_weights()
        network.load_state_dict(_read_state_dict(path))
        return cls(network.eval())


def _download_weights() -> Path:
    """Fetch the weights with facenet-pytorch's own downloader into its cache."""
    target = cached_weights_path()
    target.parent.mkdir(parents=True, exist_ok=True)
    log.info("downloading FaceNet weights from %s to %s", WEIGHTS_URL, target)
    try:
        # facenet-pytorch writes to a temporary file and renames it when
        # complete, so a failed download leaves no partial weights behind.
        inception_resnet_v1.download_url_to_file(WEIGHTS_URL, str(target))
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise FrbError(f"cannot download FaceNet weights ({reason}); {missing_weights_hint()}") from None
    return target


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read a VGGFace2 state dict, minus the 8631-class logits layer."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a corrupt file
        raise FrbError(
            f"FaceNet weights file {path} is not a readable PyTorch state dict ({type(err).__name__}); "
            f"replace it with a complete copy: {missing_weights_hint()}"
        ) from None
    if not isinstance(state, dict):
        raise FrbError(f"FaceNet weights file {path} does not hold a state dict; {missing_weights_hint()}")
    # The classification layer is unused for verification.
    state = {key: value for key, value in state.items() if not key.startswith("logits.")}
    expected = set(InceptionResnetV1(pretrained=None).state_dict())
    if set(state) != expected:
        missing = sorted(expected - set(state))
        raise FrbError(
            f"FaceNet weights file {path} does not match InceptionResnetV1 "
            f"({len(missing)} tensors missing, e.g. {missing[:1]}); {missing_weights_hint()}"
        )
    return state
