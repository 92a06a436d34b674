"""The Modular Siamese Network (MSN) of Dammu et al., "Interpretable and
Robust Face Verification" (PSTCI 2021).

One module per face region (eyes, nose, mouth, rest). A module is an
undercomplete convolutional autoencoder, whose encoder takes the whole face
and whose decoder reconstructs only its region, plus a Siamese head of four
fully connected layers with ELU on the encoder's latent code. A module's
score is the Euclidean distance of the two L2-normalised embeddings. A
small decision network reads the four element-wise |e1 - e2| vectors and
gives the logit of "same person".

Everything runs on a 64 x 64 copy of the canonical crop, made inside the
model by antialiased bilinear resizing, so attacks still work on the
160-pixel crops and gradients reach them.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import FrbError
from ...geometry import CANONICAL_TEMPLATE, CROP_SIZE
from ..base import Verifier
from .regions import REGION_NAMES

logger = logging.getLogger(__name__)

DEFAULT_WEIGHTS = Path(__file__).resolve().parents[1] / "weights" / "msn" / "msn-fold10.pt"
CHECKPOINT_FORMAT = "frb-msn-1"


@dataclass(frozen=True)
class MSNArchitecture:
    """Layer sizes of every region module and of the decision network."""

    image_size: int = 64  # side of the resized face the modules see, in pixels
    # Output channels of the encoder's stride-2 convolutions; the decoder mirrors them.
    channels: tuple[int, ...] = (24, 48, 96, 128)
    latent_dim: int = 128
    head_widths: tuple[int, ...] = (256, 256, 128)  # hidden widths of the Siamese head
    embedding_dim: int = 64
    decision_hidden: int = 64

    def __post_init__(self) -> None:
        # Tuples arrive as lists from a checkpoint's JSON-like dict.
        object.__setattr__(self, "channels", tuple(self.channels))
        object.__setattr__(self, "head_widths", tuple(self.head_widths))
        if len(self.head_widths) != 3:
            raise ValueError(f"the Siamese head has 4 layers, so head_widths needs 3 hidden widths, got {self.head_widths}")
        if self.image_size % (2 ** len(self.channels)) != 0:
            raise ValueError(
                f"image_size {self.image_size} must be divisible by 2**{len(self.channels)} for {len(self.channels)} "
                "stride-2 convolutions"
            )

    @property
    def bottleneck_size(self) -> int:
        """Side of the encoder's last feature map."""
        return self.image_size // (2 ** len(self.channels))


def resize_faces(faces: torch.Tensor, size: int) -> torch.Tensor:
    """Resize faces (N, 3, H, W) in [0, 1] to (N, 3, size, size) with antialiased bilinear filtering.

    Training resizes its crops once with this function, and `MSN.shrink`
    calls it on every input, so both get the same pixels. It is
    differentiable, so attacks get gradients through it.
    """
    return F.interpolate(faces, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


class RegionAutoencoder(nn.Module):
    """Convolutional autoencoder: whole face (N, 3, S, S) in [-1, 1] -> latent (N, L) -> region (N, 3, S, S).

The reconstruction aims at pixels in [0, 1] but is not bounded; the
training loss compares it as it is.
"""

    def __init__(self, arch: MSNArchitecture) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_channels = 3
        for out_channels in arch.channels:
            layers += [nn.Conv2d(in_channels, out_channels, 4, stride=2, padding=1), nn.ReLU()]
            in_channels = out_channels
        side = arch.bottleneck_size
        self.encoder = nn.Sequential(*layers, nn.Flatten(), nn.Linear(in_channels * side * side, arch.latent_dim))

        up: list[nn.Module] = [
            nn.Linear(arch.latent_dim, in_channels * side * side),
            nn.ReLU(),
            nn.Unflatten(1, (in_channels, side, side)),
        ]
        widths = list(reversed(arch.channels[:-1])) + [3]
        for index, out_channels in enumerate(widths):
            up.append(nn.ConvTranspose2d(in_channels, out_channels, 4, stride=2, padding=1))
            # The last layer stays linear. With a sigmoid there, an eyes
            # autoencoder settled on one fixed output whose loss stayed at
            # 0.716 for three epochs. `reconstruct` clamps to [0, 1].
            if index < len(widths) - 1:
                up.append(nn.ReLU())
            in_channels = out_channels
        self.decoder = nn.Sequential(*up)

    def forward(self, faces: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(faces))


class SiameseHead(nn.Module):
    """Standardisation of the latent code, four fully connected layers with ELU between them, then L2 normalisation.

    The encoder's latent values are in the hundreds, so training sets
    `latent_mean` and `latent_scale` to their per-dimension mean and
    standard deviation before it trains the layers.
    """

    def __init__(self, arch: MSNArchitecture) -> None:
        super().__init__()
        self.register_buffer("latent_mean", torch.zeros(arch.latent_dim))
        self.register_buffer("latent_scale", torch.ones(arch.latent_dim))
        widths = (arch.latent_dim, *arch.head_widths)
        layers: list[nn.Module] = []
        for width_in, width_out in zip(widths[:-1], widths[1:]):
            layers += [nn.Linear(width_in, width_out), nn.ELU()]
        layers.append(nn.Linear(widths[-1], arch.embedding_dim))
        self.layers = nn.Sequential(*layers)

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.layers((latent - self.latent_mean) / self.latent_scale), dim=1)


class RegionModule(nn.Module):
    """One region's autoencoder and Siamese head."""

    def __init__(self, arch: MSNArchitecture) -> None:
        super().__init__()
        self.autoencoder = RegionAutoencoder(arch)
        self.head = SiameseHead(arch)

    def embed(self, faces: torch.Tensor) -> torch.Tensor:
        """Map normalised faces (N, 3, S, S) to unit embeddings (N, D)."""
        return self.head(self.autoencoder.encoder(faces))


class DecisionNet(nn.Module):
    """Two fully connected layers with ReLU: concatenated |e1 - e2| of all modules -> logit of "same"."""

    def __init__(self, arch: MSNArchitecture, n_regions: int = len(REGION_NAMES)) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(n_regions * arch.embedding_dim, arch.decision_hidden),
            nn.ReLU(),
            nn.Linear(arch.decision_hidden, 1),
        )

    def forward(self, differences: torch.Tensor) -> torch.Tensor:
        return self.layers(differences).squeeze(1)


class MSN(Verifier):
    """The Modular Siamese Network as a `Verifier`.

    `embed` returns the four region embeddings concatenated in the order of
    `regions.REGION_NAMES`, (N, 4 * embedding_dim), each part L2-normalised.
    `compare` returns "msn", which is 1 - sigmoid(decision logit) and so a
    dissimilarity in [0, 1], and each region's Euclidean distance under
    its own name. The model has no batch norm or dropout, so train and
    eval mode give the same output.
    """

    name = "msn"
    input_size = CROP_SIZE
    template = CANONICAL_TEMPLATE
    score_names = ("msn", *REGION_NAMES)

    def __init__(self, arch: MSNArchitecture | None = None) -> None:
        super().__init__()
        self.arch = arch or MSNArchitecture()
        self.regions = nn.ModuleDict({region: RegionModule(self.arch) for region in REGION_NAMES})
        self.decision = DecisionNet(self.arch)
        # Provenance read from a checkpoint: seed, data hash, accuracies and thresholds.
        self.metadata: dict[str, Any] = {}

    def lfw_test_folds(self) -> tuple[int, ...] | None:
        """Return the checkpoint's held-out fold. An MSN without a training record counts as trained on every fold."""
        fold = self.metadata.get("test_fold")
        return () if fold is None else (int(fold),)

    # --- Inputs -----------------------------------------------------------------

    def shrink(self, faces: torch.Tensor) -> torch.Tensor:
        """Resize canonical crops (N, 3, 160, 160) in [0, 1] to (N, 3, S, S) in [0, 1]."""
        if faces.ndim != 4 or tuple(faces.shape[1:]) != (3, CROP_SIZE, CROP_SIZE):
            raise ValueError(
                f"expected canonical crops of shape (N, 3, {CROP_SIZE}, {CROP_SIZE}), got {tuple(faces.shape)}"
            )
        return resize_faces(faces, self.arch.image_size)

    @staticmethod
    def normalise(small: torch.Tensor) -> torch.Tensor:
        """Map pixels from [0, 1] to the [-1, 1] range the encoders take."""
        return small * 2.0 - 1.0

    # --- Embeddings and scores --------------------------------------------------------

    def embed_small(self, small: torch.Tensor) -> torch.Tensor:
        """Map resized faces (N, 3, S, S) in [0, 1] to concatenated region embeddings."""
        normalised = self.normalise(small)
        return torch.cat([self.regions[region].embed(normalised) for region in REGION_NAMES], dim=1)

    def embed(self, faces: torch.Tensor) -> torch.Tensor:
        """Map canonical crops (N, 3, 160, 160) in [0, 1] to embeddings (N, 4 * embedding_dim)."""
        return self.embed_small(self.shrink(faces))

    def split(self, embeddings: torch.Tensor) -> dict[str, torch.Tensor]:
        """Cut concatenated embeddings (N, 4 * D) into the regions' (N, D) parts."""
        parts = embeddings.split(self.arch.embedding_dim, dim=1)
        if len(parts) != len(REGION_NAMES) or parts[-1].shape[1] != self.arch.embedding_dim:
            raise ValueError(
                f"expected embeddings of width {len(REGION_NAMES) * self.arch.embedding_dim}, got {embeddings.shape[1]}"
            )
        return dict(zip(REGION_NAMES, parts))

    def same_logit(self, probe: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        """Return the decision network's logit (N,) that each pair shows one person."""
        return self.decision((probe - reference).abs())

    def compare(self, probe: torch.Tensor, reference: torch.Tensor) -> dict[str, torch.Tensor]:
        """Score pairs of embeddings row by row; every score is lower for more alike faces."""
        scores = {"msn": 1.0 - torch.sigmoid(self.same_logit(probe, reference))}
        probe_parts = self.split(probe)
        reference_parts = self.split(reference)
        for region in REGION_NAMES:
            scores[region] = torch.linalg.vector_norm(probe_parts[region] - reference_parts[region], dim=1)
        return scores

    def reconstruct(self, faces: torch.Tensor) -> dict[str, torch.Tensor]:
        """Return each module's reconstruction (N, 3, S, S) of its region, for inspection."""
        normalised = self.normalise(self.shrink(faces))
        return {region: self.regions[region].autoencoder(normalised).clamp(0, 1) for region in REGION_NAMES}

    # --- Checkpoints -------------------------------------------------------------------

    def checkpoint(self, metadata: dict[str, Any] | None = None, half: bool = True) -> dict[str, Any]:
        """Return a checkpoint dict: format tag, architecture, weights and `metadata`.

        With `half`, floating-point weights are stored as float16, which
        halves the file; `load_checkpoint` turns them back into float32.
        """
        state = {key: (value.half() if half and value.is_floating_point() else value).clone() for key, value in self.state_dict().items()}
        return {
            "format": CHECKPOINT_FORMAT,
            "architecture": asdict(self.arch),
            "state_dict": state,
            "metadata": metadata or {},
        }

    @classmethod
    def from_checkpoint(cls, checkpoint: dict[str, Any], source: str = "checkpoint") -> MSN:
        """Build a float32 model from a dict written by `checkpoint`."""
        if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
            found = checkpoint.get("format") if isinstance(checkpoint, dict) else type(checkpoint).__name__
            raise FrbError(f"{source}: not an MSN checkpoint (format {found!r}, expected {CHECKPOINT_FORMAT!r})")
        try:
            model = cls(MSNArchitecture(**checkpoint["architecture"]))
            state = {key: value.float() if value.is_floating_point() else value for key, value in checkpoint["state_dict"].items()}
            model.load_state_dict(state)
        except (KeyError, TypeError, ValueError, RuntimeError) as error:
            raise FrbError(f"{source}: MSN checkpoint does not match the network ({error}); retrain or restore it") from error
        model.metadata = dict(checkpoint.get("metadata", {}))
        return model

    @classmethod
    def pretrained(cls, path: str | os.PathLike[str] | None = None) -> MSN:
        """Load a trained MSN, by default the shipped one trained on LFW folds 1-9.

        Parameters come back frozen and in eval mode, because attacks need
        gradients with respect to the input only.
        """
        file = DEFAULT_WEIGHTS if path is None else Path(path)
        if not file.is_file():
            raise FrbError(f"MSN weights not found: {file}; train them with `frb train msn` or pass an existing path")
        try:
            checkpoint = torch.load(file, map_location="cpu", weights_only=True)
        except Exception as error:  # torch raises many types for a corrupt file, UnpicklingError among them
            raise FrbError(
                f"{file}: cannot read MSN weights ({type(error).__name__}); "
                "pass a checkpoint written by `frb train msn`"
            ) from None
        model = cls.from_checkpoint(checkpoint, source=str(file))
        model.requires_grad_(False)
        model.eval()
        logger.info("Loaded %s weights from %s", cls.name, file)
        return model

