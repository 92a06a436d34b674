"""The models the suite can benchmark, by name."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import FrbError
from .base import Verifier

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelEntry:
    """A model name with its loader and where its weights live."""

    name: str
    description: str
    # Build the model from an optional weights path given by the user.
    load: Callable[[Path | None], Verifier]
    # The weights file used when the user gives none.
    default_weights: Callable[[], Path]
    # Whether the model's own weights come as a folder (dlib-resnet: manifest plus .bin).
    weights_folder: bool = False
    # Whether `frb train <name>` trains it, per held-out fold if asked.
    trainable: bool = False


def _load_dlib(weights: Path | None) -> Verifier:
    from .dlib_resnet import DlibResNet

    # The weights are a folder (manifest plus .bin); accept either.
    if weights is not None and weights.suffix == ".bin":
        weights = weights.parent
    return DlibResNet.pretrained(weights)


def _dlib_weights() -> Path:
    from .dlib_resnet import DEFAULT_WEIGHTS_DIR

    return DEFAULT_WEIGHTS_DIR / "face_recognition_model.bin"


def _load_facenet(weights: Path | None) -> Verifier:
    from .facenet import FaceNet

    return FaceNet.pretrained(weights)


def _facenet_weights() -> Path:
    from .facenet import cached_weights_path

    return cached_weights_path()


def _load_msn(weights: Path | None) -> Verifier:
    from .msn.network import MSN

    return MSN.pretrained(weights)


def _msn_weights() -> Path:
    from .msn.network import DEFAULT_WEIGHTS

    return DEFAULT_WEIGHTS


MODELS: dict[str, ModelEntry] = {
    entry.name: entry
    for entry in (
        ModelEntry(
            "dlib-resnet",
            "dlib's ResNet metric network, 128-d (weights ship with the package)",
            _load_dlib,
            _dlib_weights,
            weights_folder=True,
        ),
        ModelEntry("facenet", "facenet-pytorch InceptionResnetV1, VGGFace2 weights", _load_facenet, _facenet_weights),
        ModelEntry(
            "msn",
            "Modular Siamese Network (eyes, nose, mouth, rest), trained on LFW folds 1-9",
            _load_msn,
            _msn_weights,
            trainable=True,
        ),
    )
}


def parse_model_names(text: str | None) -> list[str]:
    """Split `--models a,b`; None means every model whose weights are on disk."""
    if text is None:
        names = available_models()
        if not names:
            raise FrbError("no model has its weights on disk; pass --models with --weights NAME=PATH")
        return names
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise FrbError(f"--models {text!r} names no model; choose from {', '.join(MODELS)}")
    for name in names:
        if name not in MODELS:
            raise FrbError(f"unknown model {name!r} in --models; choose from {', '.join(MODELS)}")
    if len(set(names)) != len(names):
        raise FrbError(f"--models {text!r} repeats a model; list each once")
    return names


def available_models() -> list[str]:
    """List the models whose default weights are present."""
    return [name for name, entry in MODELS.items() if entry.default_weights().is_file()]


def load_model(name: str, weights: Path | None = None, device: str = "cpu") -> Verifier:
    """Build a model in eval mode with frozen parameters on `device`."""
    if name not in MODELS:
        raise FrbError(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
    model = MODELS[name].load(weights)
    model.eval()
    # Attacks need gradients with respect to the input only.
    model.requires_grad_(False)
    return model.to(device)


def weights_sha256(name: str, weights: Path | None = None) -> str:
    """Compute the sha256 of the weights file a model is loaded from."""
    path = weights or MODELS[name].default_weights()
    if path.is_dir():
        # dlib-resnet: the tensors live in the folder's .bin file.
        path = next(path.glob("*.bin"), path)
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
