"""Training the Modular Siamese Network on LFW in three phases.

1. Each region's autoencoder learns to rebuild its region (the face times
   the region mask) from the whole face. The loss is a perceptual loss on
   the early blocks of the pretrained, frozen dlib ResNet plus a pixel L1
   term.
2. With the encoder frozen, each region's Siamese head learns embeddings
   with a batch-hard triplet loss over P identities x K images per batch.
3. With all modules frozen, the decision network learns "same person" from
   balanced matched and mismatched pairs with binary cross-entropy.

Data follow LFW's "unrestricted, no outside data" protocol: the model
trains on every image of the people of nine folds of `people.txt` and is
tested on the pairs of the held-out fold of `pairs.txt`. Each region
module trains independently of the others, one after another.

Every random draw comes from a generator seeded by (seed, phase, region,
epoch). A run is therefore deterministic for a seed and a thread count on
CPU, and a run resumed from its per-epoch state continues exactly as an
uninterrupted one would.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ...data.faces import load_faces
from ...data.lfw import LFW, locate_lfw
from ...data.pairs import Pair, image_relpath, parse_pairs
from ...errors import FrbError
from ...evaluation.protocol import best_threshold
from ...results.writer import atomic_write_bytes
from ..dlib_resnet import INPUT_DIVISOR, MEAN_RGB_255, DlibResNet
from .network import MSN, MSNArchitecture, RegionModule, resize_faces
from .regions import REGION_NAMES, RegionShapes, flip_landmarks, region_masks, scale_landmarks

logger = logging.getLogger(__name__)

STATE_FORMAT = "frb-msn-train-1"
CROP_SIZE = 160


# --- Hyperparameters -------------------------------------------------------------------


@dataclass(frozen=True)
class MSNHyperparameters:
    """Every setting of a training run. The defaults made the shipped checkpoint."""

    seed: int = 0
    architecture: MSNArchitecture = field(default_factory=MSNArchitecture)
    region_shapes: RegionShapes = field(default_factory=RegionShapes)
    # Train on each image and, with probability 1/2 per draw, its mirror image.
    flip: bool = True
    # Keep only this many training identities (all when None), for quick runs.
    max_people: int | None = None

    # Phase 1: region autoencoders.
    ae_epochs: int = 10
    ae_batch_size: int = 32
    # Measured with the sigmoid output layer used then: at 2e-3 the eyes and
    # mouth autoencoders collapsed to one fixed output within an epoch and
    # did not recover (eyes loss 1.79, then 1.94 for three epochs). At 5e-4
    # the eyes loss fell to 0.28 in four epochs and the eyes module reached
    # 79% on fold 10 instead of 57%.
    ae_lr: float = 5e-4
    # "dlib" uses the shipped dlib ResNet; "vgg19" needs torchvision's VGG19 weights in the torch hub cache.
    perceptual_network: str = "dlib"
    # Residual blocks of the dlib ResNet after its stem whose features enter the loss.
    perceptual_blocks: int = 1
    perceptual_weight: float = 1.0
    pixel_weight: float = 4.0

    # Phase 2: Siamese heads on the frozen encoders.
    head_epochs: int = 30
    head_steps_per_epoch: int = 100
    identities_per_batch: int = 32  # P
    images_per_identity: int = 4  # K
    triplet_margin: float = 0.3
    # "batch-all" averages every triplet of the batch with a positive loss. "batch-hard" takes each anchor's hardest.
    triplet_mining: str = "batch-all"
    head_lr: float = 1e-3

    # Phase 3: decision network on frozen modules.
    decision_epochs: int = 40
    pairs_per_epoch: int = 16384
    decision_batch_size: int = 256
    decision_lr: float = 1e-3

    def __post_init__(self) -> None:
        if isinstance(self.architecture, dict):
            object.__setattr__(self, "architecture", MSNArchitecture(**self.architecture))
        if isinstance(self.region_shapes, dict):
            object.__setattr__(self, "region_shapes", RegionShapes(**self.region_shapes))
        if self.perceptual_network not in ("dlib", "vgg19"):
            raise ValueError(f"perceptual_network must be 'dlib' or 'vgg19', got {self.perceptual_network!r}")
        if self.triplet_mining not in ("batch-all", "batch-hard"):
            raise ValueError(f"triplet_mining must be 'batch-all' or 'batch-hard', got {self.triplet_mining!r}")
        if self.images_per_identity < 2 or self.identities_per_batch < 2:
            raise ValueError("triplet mining needs at least 2 identities and 2 images per identity in a batch")
        for name in ("ae_epochs", "head_epochs", "decision_epochs", "head_steps_per_epoch", "pairs_per_epoch"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")

    def scaled(self, factor: float) -> MSNHyperparameters:
        """Return a copy with every epoch count multiplied by `factor` (each at least 1)."""
        if factor <= 0:
            raise ValueError(f"the epoch scale must be positive, got {factor}")

        def scale(epochs: int) -> int:
            return max(1, round(epochs * factor))

        return replace(
            self,
            ae_epochs=scale(self.ae_epochs),
            head_epochs=scale(self.head_epochs),
            decision_epochs=scale(self.decision_epochs),
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --- Data ----------------------------------------------------------------------------------


def read_people(path: Path) -> list[list[tuple[str, int]]]:
    """Parse LFW's people.txt into folds of (name, number of images).

    The first line is the number of folds. Each fold starts with its number
    of people, followed by one `Name<TAB>n_images` line per person.
    """
    try:
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except FileNotFoundError:
        raise FrbError(f"people file not found: {path}; restore people.txt from the LFW release") from None
    position = 0

    def next_int(what: str) -> int:
        nonlocal position
        if position >= len(lines):
            raise FrbError(f"{path}: file ends where {what} was expected; restore people.txt from the LFW release")
        try:
            value = int(lines[position])
        except ValueError:
            raise FrbError(
                f"{path}: expected {what}, got {lines[position]!r}; restore people.txt from the LFW release"
            ) from None
        position += 1
        return value

    folds: list[list[tuple[str, int]]] = []
    for fold in range(next_int("the number of folds")):
        people: list[tuple[str, int]] = []
        for _ in range(next_int(f"the number of people of fold {fold + 1}")):
            if position >= len(lines):
                raise FrbError(f"{path}: fold {fold + 1} ends early; restore people.txt from the LFW release")
            fields = lines[position].split()
            position += 1
            if len(fields) != 2 or not fields[1].isdigit():
                raise FrbError(f"{path}: expected 'Name<TAB>n_images', got {' '.join(fields)!r}")
            people.append((fields[0], int(fields[1])))
        folds.append(people)
    return folds


@dataclass
class FaceSet:
    """Resized faces with identities, the form every phase trains on.

    `images` are (N, 3, S, S) float in [0, 1], resized from the canonical
    crops with `network.resize_faces`. `landmarks` (N, 5, 2) are in the
    pixels of those resized images.
    """

    relpaths: list[str]
    images: torch.Tensor
    landmarks: torch.Tensor
    identities: torch.Tensor  # (N,) int64, 0..n_identities-1

    def __post_init__(self) -> None:
        self.index = {rel: i for i, rel in enumerate(self.relpaths)}

    def __len__(self) -> int:
        return len(self.relpaths)

    def subset(self, rows: Sequence[int]) -> FaceSet:
        """Return the faces at `rows`, with identities renumbered from 0."""
        rows_tensor = torch.as_tensor(list(rows), dtype=torch.long)
        _, identities = torch.unique(self.identities[rows_tensor], return_inverse=True)
        return FaceSet(
            relpaths=[self.relpaths[i] for i in rows],
            images=self.images[rows_tensor],
            landmarks=self.landmarks[rows_tensor],
            identities=identities,
        )


def load_face_set(
    lfw: LFW,
    people: Sequence[tuple[str, int]],
    cache_dir: Path,
    size: int,
    progress: bool = True,
    chunk: int = 1024,
) -> FaceSet:
    """Align (or read from the cache) every image of `people` and resize it to `size`.

    Chunks of `chunk` crops are resized at a time, so the 160-pixel crops
    of all images never sit in memory together.
    """
    relpaths: list[str] = []
    identities: list[int] = []
    for identity, (name, count) in enumerate(people):
        for number in range(1, count + 1):
            relpaths.append(image_relpath(name, number))
            identities.append(identity)
    images: list[torch.Tensor] = []
    landmarks: list[torch.Tensor] = []
    starts = range(0, len(relpaths), chunk)
    for start in tqdm(starts, desc="loading faces", unit="chunk", disable=not progress):
        batch = relpaths[start : start + chunk]
        store = load_faces(lfw, batch, cache_dir, progress=False)
        with torch.no_grad():
            images.append(resize_faces(store.crops.float().div_(255.0), size))
        landmarks.append(scale_landmarks(store.landmarks, CROP_SIZE, size))
    return FaceSet(
        relpaths=relpaths,
        images=torch.cat(images),
        landmarks=torch.cat(landmarks),
        identities=torch.tensor(identities, dtype=torch.long),
    )


def data_hash(lfw: LFW, relpaths: Sequence[str]) -> str:
    """sha256 over people.txt, pairs.txt and every image's path and bytes, in the given order."""
    digest = hashlib.sha256()
    digest.update((lfw.root / "people.txt").read_bytes())
    digest.update(lfw.pairs_file.read_bytes())
    for rel in relpaths:
        digest.update(rel.encode("utf-8"))
        digest.update(hashlib.sha256(lfw.image_path(rel).read_bytes()).digest())
    return digest.hexdigest()


# --- Random draws -----------------------------------------------------------------------------


def _generator(seed: int, *parts: object) -> torch.Generator:
    """Return a generator seeded from `seed` and a phase, region and epoch, independent of run history."""
    text = "/".join(str(part) for part in (seed, *parts))
    value = int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "little") & ((1 << 63) - 1)
    return torch.Generator().manual_seed(value)


def _flip_batch(
    images: torch.Tensor, landmarks: torch.Tensor, flips: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mirror the rows of a batch where `flips` is True, landmarks included."""
    if not bool(flips.any()):
        return images, landmarks
    images = torch.where(flips[:, None, None, None], images.flip(-1), images)
    mirrored = flip_landmarks(landmarks, images.shape[-1])
    landmarks = torch.where(flips[:, None, None], mirrored, landmarks)
    return images, landmarks


# --- Phase 1: autoencoders ------------------------------------------------------------------------


class DlibPerceptualFeatures(nn.Module):
    """Early features of the pretrained dlib ResNet (stem, max pooling, the first residual blocks).

    Inputs are images in [0, 1] at the module size (64 pixels by default),
    so the face is about 2.3 times smaller than in dlib's 150-pixel chips.
    The early filters respond to edges and texture, which a perceptual loss
    can compare at that scale too. The network is frozen.
    """

    def __init__(self, blocks: int) -> None:
        super().__init__()
        dlib = DlibResNet.pretrained()
        self.stem = dlib.backbone.stem
        self.blocks = nn.ModuleList(list(dlib.backbone.blocks)[:blocks])
        self.register_buffer("mean_rgb", torch.tensor(MEAN_RGB_255).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        out = self.stem((images * 255.0 - self.mean_rgb) / INPUT_DIVISOR)
        features = [out]
        out = F.max_pool2d(out, kernel_size=3, stride=2)
        for block in self.blocks:
            out = block(out)
            features.append(out)
        return features


class VGG19PerceptualFeatures(nn.Module):
    """Features of torchvision's ImageNet VGG19 up to relu2_2, read from the local torch hub cache only."""

    WEIGHTS_FILE = "vgg19-dcbb9e9d.pth"

    def __init__(self) -> None:
        super().__init__()
        from torchvision.models import vgg19

        path = Path(torch.hub.get_dir()) / "checkpoints" / self.WEIGHTS_FILE
        if not path.is_file():
            raise FrbError(
                f"VGG19 weights not found at {path}; copy torchvision's {self.WEIGHTS_FILE} there, "
                "or train with the default perceptual network 'dlib'"
            )
        network = vgg19()
        network.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        self.layers = network.features[:9]
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        out = (images - self.mean) / self.std
        features = []
        for index, layer in enumerate(self.layers):
            out = layer(out)
            if index in (3, 8):  # relu1_2 and relu2_2
                features.append(out)
        return features


def build_perceptual(hp: MSNHyperparameters) -> nn.Module:
    """Return the frozen feature network that the perceptual loss compares in."""
    if hp.perceptual_network == "vgg19":
        return VGG19PerceptualFeatures().eval()
    return DlibPerceptualFeatures(hp.perceptual_blocks).eval()


def autoencoder_loss(
    module: RegionModule,
    perceptual: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    hp: MSNHyperparameters,
) -> torch.Tensor:
    """Perceptual plus pixel L1 loss of a module's reconstruction of `targets` from `images`."""
    reconstruction = module.autoencoder(MSN.normalise(images))
    with torch.no_grad():
        target_features = perceptual(targets)
    feature_loss = sum(F.mse_loss(ours, theirs) for ours, theirs in zip(perceptual(reconstruction), target_features))
    pixel_loss = F.l1_loss(reconstruction, targets)
    return hp.perceptual_weight * feature_loss + hp.pixel_weight * pixel_loss


# --- Phase 2: Siamese heads ------------------------------------------------------------------------


def batch_hard_triplet_loss(embeddings: torch.Tensor, labels: torch.Tensor, margin: float) -> tuple[torch.Tensor, float]:
    """Batch-hard triplet loss of Hermans et al. (2017) and the fraction of anchors with a positive loss.

    For each anchor, the farthest image of its identity and the closest
    image of another identity in the batch form the triplet.
    """
    distances = torch.cdist(embeddings, embeddings)
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool)
    hardest_positive = distances.masked_fill(~same | eye, float("-inf")).amax(dim=1)
    hardest_negative = distances.masked_fill(same, float("inf")).amin(dim=1)
    losses = F.relu(hardest_positive - hardest_negative + margin)
    return losses.mean(), float((losses > 0).float().mean())


def batch_all_triplet_loss(embeddings: torch.Tensor, labels: torch.Tensor, margin: float) -> tuple[torch.Tensor, float]:
    """Mean loss over the triplets of the batch whose loss is positive, and the fraction of such triplets.

    Every (anchor, positive, negative) of the batch counts, as in Hermans et
    al.'s "batch all" variant, averaged over the triplets that still violate
    the margin so that easy triplets do not dilute the gradient.
    """
    distances = torch.cdist(embeddings, embeddings)
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool)
    valid = (same & ~eye)[:, :, None] & (~same)[:, None, :]
    losses = F.relu(distances[:, :, None] - distances[:, None, :] + margin)[valid]
    positive = losses > 0
    return losses.sum() / positive.sum().clamp_min(1), float(positive.float().mean())


def sample_pk_batch(
    identities_by_person: list[torch.Tensor], n_people: int, per_person: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Draw P people and K (image, mirror) variants of each; returns rows, flips and labels.

    Variants are drawn without replacement from each person's images and
    their mirror images, so a person with two images gives four distinct
    variants. A person with fewer variants than K repeats some.
    """
    people = torch.randperm(len(identities_by_person), generator=generator)[:n_people]
    rows, flips, labels = [], [], []
    for label, person in enumerate(people.tolist()):
        images = identities_by_person[person]
        variants = 2 * len(images)
        if variants >= per_person:
            picks = torch.randperm(variants, generator=generator)[:per_person]
        else:
            picks = torch.randint(variants, (per_person,), generator=generator)
        rows.append(images[picks // 2])
        flips.append(picks % 2 == 1)
        labels.append(torch.full((per_person,), label, dtype=torch.long))
    return torch.cat(rows), torch.cat(flips), torch.cat(labels)


# --- Phase 3: decision network --------------------------------------------------------------------------


def sample_pairs(
    identities: torch.Tensor, rows_by_person: list[torch.Tensor], count: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Draw `count` pairs, half matched (two different images of one person) and half mismatched.

    Matched pairs pick the person uniformly among those with two or more
    images, as LFW's matched pairs do. Mismatched pairs pick two images at
    random and redraw the second while it shows the same person. Returns
    row pairs (count, 2), flip flags (count, 2) and labels (count,).
    """
    eligible = [rows for rows in rows_by_person if len(rows) >= 2]
    n_matched = count // 2
    picks = torch.randint(len(eligible), (n_matched,), generator=generator).tolist()
    matched = []
    for person in picks:
        rows = eligible[person]
        first, second = torch.randperm(len(rows), generator=generator)[:2]
        matched.append((int(rows[first]), int(rows[second])))
    n_images = len(identities)
    mismatched = []
    while len(mismatched) < count - n_matched:
        first, second = torch.randint(n_images, (2,), generator=generator).tolist()
        if identities[first] != identities[second]:
            mismatched.append((first, second))
    rows = torch.tensor(matched + mismatched, dtype=torch.long)
    flips = torch.rand(count, 2, generator=generator) < 0.5
    labels = torch.cat([torch.ones(n_matched), torch.zeros(count - n_matched)])
    return rows, flips, labels


# --- The training loop with per-epoch state ------------------------------------------------------------


class TrainingState:
    """The model, the optimizers in use, the epochs done and the loss history, saved after every epoch."""

    def __init__(self, path: Path, hp: MSNHyperparameters) -> None:
        self.path = path
        self.hp = hp
        torch.manual_seed(hp.seed)
        self.model = MSN(hp.architecture)
        self.done: dict[str, int] = {}
        self.optimizers: dict[str, dict[str, Any]] = {}
        self.history: list[dict[str, Any]] = []
        self.seconds = 0.0

    def resume(self) -> bool:
        """Load the saved state, if any; raise FrbError when it belongs to other hyperparameters."""
        if not self.path.is_file():
            return False
        saved = torch.load(self.path, map_location="cpu", weights_only=True)
        if saved.get("format") != STATE_FORMAT:
            raise FrbError(f"{self.path}: not an MSN training state; delete it or choose another --out")
        if json.dumps(saved["hyperparameters"], sort_keys=True) != json.dumps(self.hp.to_dict(), sort_keys=True):
            raise FrbError(
                f"{self.path}: saved by a run with other settings, so it cannot be resumed; "
                "delete it or choose another --out"
            )
        self.model.load_state_dict(saved["model"])
        self.done = dict(saved["done"])
        self.optimizers = dict(saved["optimizers"])
        self.history = list(saved["history"])
        self.seconds = float(saved["seconds"])
        logger.info("Resumed from %s: %s", self.path, ", ".join(f"{k} {v}" for k, v in sorted(self.done.items())))
        return True

    def save(self) -> None:
        """Write the state atomically, so an interrupted run keeps the previous epoch's state."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_name(self.path.name + ".tmp")
        torch.save(
            {
                "format": STATE_FORMAT,
                "hyperparameters": self.hp.to_dict(),
                "model": self.model.state_dict(),
                "done": self.done,
                "optimizers": self.optimizers,
                "history": self.history,
                "seconds": self.seconds,
            },
            temporary,
        )
        os.replace(temporary, self.path)

    def write_csv(self, path: Path) -> None:
        """Write the per-epoch losses so far as CSV (phase, region, epoch, loss, active, seconds)."""
        columns = ["phase", "region", "epoch", "loss", "active", "seconds"]
        with open(path, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns)
            writer.writeheader()
            for row in self.history:
                writer.writerow({key: row.get(key, "") for key in columns})


def _run_epochs(
    state: TrainingState,
    key: str,
    epochs: int,
    parameters: list[nn.Parameter],
    lr: float,
    run_epoch: Callable[[int, torch.optim.Optimizer], tuple[float, float | None]],
    csv_path: Path | None,
) -> None:
    """Run the epochs of one (phase, region) not done yet, saving the state after each."""
    start = state.done.get(key, 0)
    if start >= epochs:
        return
    optimizer = torch.optim.Adam(parameters, lr=lr)
    if key in state.optimizers:
        optimizer.load_state_dict(state.optimizers[key])
    phase, _, region = key.partition("/")
    for epoch in range(start, epochs):
        began = time.perf_counter()
        loss, active = run_epoch(epoch, optimizer)
        elapsed = time.perf_counter() - began
        state.seconds += elapsed
        state.done[key] = epoch + 1
        state.optimizers[key] = optimizer.state_dict()
        row = {"phase": phase, "region": region, "epoch": epoch + 1, "loss": loss, "active": active, "seconds": round(elapsed, 2)}
        state.history.append(row)
        logger.info(
            "%s epoch %d/%d: loss %.4f%s (%.0f s)",
            key,
            epoch + 1,
            epochs,
            loss,
            "" if active is None else f", active triplets {active:.2f}",
            elapsed,
        )
        if epoch + 1 == epochs:
            # A finished unit never needs its optimizer again; dropping it keeps the state file small.
            del state.optimizers[key]
        state.save()
        if csv_path is not None:
            state.write_csv(csv_path)


def _train_autoencoder(
    state: TrainingState, region: str, faces: FaceSet, perceptual: nn.Module, progress: bool, csv_path: Path | None
) -> None:
    hp = state.hp
    module = state.model.regions[region]
    size = hp.architecture.image_size

    def run_epoch(epoch: int, optimizer: torch.optim.Optimizer) -> tuple[float, None]:
        generator = _generator(hp.seed, "autoencoder", region, epoch)
        order = torch.randperm(len(faces), generator=generator)
        flips = (torch.rand(len(faces), generator=generator) < 0.5) & hp.flip
        total, count = 0.0, 0
        batches = order.split(hp.ae_batch_size)
        for rows in tqdm(batches, desc=f"autoencoder {region} {epoch + 1}", unit="batch", disable=not progress, leave=False):
            images, landmarks = _flip_batch(faces.images[rows], faces.landmarks[rows], flips[rows])
            targets = images * region_masks(landmarks, size, hp.region_shapes)[region]
            loss = autoencoder_loss(module, perceptual, images, targets, hp)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(rows)
            count += len(rows)
        return total / count, None

    module.train()
    _run_epochs(state, f"autoencoder/{region}", hp.ae_epochs, list(module.autoencoder.parameters()), hp.ae_lr, run_epoch, csv_path)


@torch.no_grad()
def _encode_all(module: RegionModule, faces: FaceSet, batch_size: int = 512) -> torch.Tensor:
    """Return latents (2, N, L) of every face, unflipped then mirrored."""
    out = []
    for mirrored in (False, True):
        parts = []
        for start in range(0, len(faces), batch_size):
            images = faces.images[start : start + batch_size]
            parts.append(module.autoencoder.encoder(MSN.normalise(images.flip(-1) if mirrored else images)))
        out.append(torch.cat(parts))
    return torch.stack(out)


def _rows_by_person(identities: torch.Tensor) -> list[torch.Tensor]:
    order = torch.argsort(identities, stable=True)
    counts = torch.bincount(identities)
    return list(order.split(counts.tolist()))


def _train_head(state: TrainingState, region: str, faces: FaceSet, progress: bool, csv_path: Path | None) -> None:
    hp = state.hp
    key = f"head/{region}"
    if state.done.get(key, 0) >= hp.head_epochs:
        return
    module = state.model.regions[region]
    module.autoencoder.requires_grad_(False)
    latents = _encode_all(module, faces)
    module.head.latent_mean.copy_(latents.mean(dim=(0, 1)))
    module.head.latent_scale.copy_(latents.std(dim=(0, 1)).clamp_min(1e-6))
    # Only people with two or more images give the triplets a real positive,
    # not just the mirror image of the anchor.
    people = [rows for rows in _rows_by_person(faces.identities) if len(rows) >= 2]
    if len(people) < 2:
        raise FrbError("phase 2 needs at least two training people with two or more images each")
    n_people = min(hp.identities_per_batch, len(people))
    triplet_loss = batch_all_triplet_loss if hp.triplet_mining == "batch-all" else batch_hard_triplet_loss

    def run_epoch(epoch: int, optimizer: torch.optim.Optimizer) -> tuple[float, float]:
        generator = _generator(hp.seed, "head", region, epoch)
        total, active_total = 0.0, 0.0
        steps = range(hp.head_steps_per_epoch)
        for _ in tqdm(steps, desc=f"head {region} {epoch + 1}", unit="step", disable=not progress, leave=False):
            rows, flips, labels = sample_pk_batch(people, n_people, hp.images_per_identity, generator)
            flips = flips & hp.flip
            embeddings = module.head(latents[flips.long(), rows])
            loss, active = triplet_loss(embeddings, labels, hp.triplet_margin)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item()
            active_total += active
        return total / hp.head_steps_per_epoch, active_total / hp.head_steps_per_epoch

    # Mining works within P x K batches (Hermans et al., "In Defense of the
    # Triplet Loss", 2017), so no offline mining pass is needed. Batch-all is
    # the default because batch-hard on the raw latents collapsed every
    # embedding to one point (loss stuck at the margin). On standardised
    # latents, one trial of 400 steps on the eyes module (people of folds 1-2
    # with two or more images) gave batch-all 62% pair accuracy and
    # batch-hard 58%. Semi-hard mining needs far larger batches.
    _run_epochs(state, key, hp.head_epochs, list(module.head.parameters()), hp.head_lr, run_epoch, csv_path)


@torch.no_grad()
def embed_face_set(model: MSN, faces: FaceSet, batch_size: int = 512, mirrored: bool = False) -> torch.Tensor:
    """Return concatenated region embeddings (N, 4 * D) of resized faces."""
    parts = []
    for start in range(0, len(faces), batch_size):
        images = faces.images[start : start + batch_size]
        parts.append(model.embed_small(images.flip(-1) if mirrored else images))
    return torch.cat(parts)


def _train_decision(state: TrainingState, faces: FaceSet, progress: bool, csv_path: Path | None) -> None:
    hp = state.hp
    key = "decision/all"
    if state.done.get(key, 0) >= hp.decision_epochs:
        return
    model = state.model
    embeddings = torch.stack([embed_face_set(model, faces), embed_face_set(model, faces, mirrored=True)])
    people = _rows_by_person(faces.identities)
    if not any(len(rows) >= 2 for rows in people):
        raise FrbError("phase 3 needs at least one training person with two or more images")

    def run_epoch(epoch: int, optimizer: torch.optim.Optimizer) -> tuple[float, None]:
        generator = _generator(hp.seed, "decision", "all", epoch)
        rows, flips, labels = sample_pairs(faces.identities, people, hp.pairs_per_epoch, generator)
        flips = flips & hp.flip
        order = torch.randperm(len(labels), generator=generator)
        total = 0.0
        for batch in tqdm(order.split(hp.decision_batch_size), desc=f"decision {epoch + 1}", unit="batch", disable=not progress, leave=False):
            first = embeddings[flips[batch, 0].long(), rows[batch, 0]]
            second = embeddings[flips[batch, 1].long(), rows[batch, 1]]
            loss = F.binary_cross_entropy_with_logits(model.same_logit(first, second), labels[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(batch)
        return total / len(labels), None

    _run_epochs(state, key, hp.decision_epochs, list(model.decision.parameters()), hp.decision_lr, run_epoch, csv_path)


def train_msn(
    faces: FaceSet,
    hp: MSNHyperparameters,
    state_path: Path,
    csv_path: Path | None = None,
    progress: bool = True,
) -> tuple[MSN, TrainingState]:
    """Train all three phases on `faces`, resuming from `state_path` if it exists.

    Returns the frozen model in eval mode and the training state (loss
    history and training seconds, summed over resumed runs).
    """
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        return _train_phases(faces, hp, state_path, csv_path, progress)
    finally:
        torch.use_deterministic_algorithms(previous)


def _train_phases(
    faces: FaceSet, hp: MSNHyperparameters, state_path: Path, csv_path: Path | None, progress: bool
) -> tuple[MSN, TrainingState]:
    state = TrainingState(state_path, hp)
    state.resume()
    if state.done.get("decision/all", 0) < hp.decision_epochs:
        logger.info("Training MSN on %d images of %d people", len(faces), int(faces.identities.max()) + 1)

    perceptual: nn.Module | None = None
    for region in REGION_NAMES:
        if state.done.get(f"autoencoder/{region}", 0) < hp.ae_epochs:
            perceptual = perceptual or build_perceptual(hp)
            _train_autoencoder(state, region, faces, perceptual, progress, csv_path)
    for region in REGION_NAMES:
        _train_head(state, region, faces, progress, csv_path)
    state.model.requires_grad_(False)
    state.model.decision.requires_grad_(True)
    _train_decision(state, faces, progress, csv_path)

    model = state.model
    model.requires_grad_(False)
    model.eval()
    if csv_path is not None:
        state.write_csv(csv_path)
    return model, state


# --- Evaluation on LFW pairs ---------------------------------------------------------------------------------


@dataclass
class FoldResult:
    """Scores of every pair and the held-out fold's thresholds and accuracies per score."""

    test_fold: int
    thresholds: dict[str, float]  # chosen on the pairs of the other folds
    accuracies: dict[str, float]  # on the pairs of the test fold
    train_accuracies: dict[str, float]  # on the pairs the thresholds were chosen on
    decision_accuracy: float  # "msn" at its natural threshold 0.5 on the test fold


@torch.no_grad()
def evaluate_fold(model: MSN, faces: FaceSet, pairs: Sequence[Pair], test_fold: int) -> FoldResult:
    """Score every pair and apply the LFW protocol for one held-out fold.

    Each score's threshold is the best-accuracy threshold on the pairs of
    all other folds, then applied to the test fold's pairs.
    """
    missing = sorted({rel for pair in pairs for rel in (pair.probe, pair.reference)} - set(faces.index))
    if missing:
        raise FrbError(f"{len(missing)} pair images are not among the loaded faces, e.g. {missing[0]}")
    needed = sorted({rel for pair in pairs for rel in (pair.probe, pair.reference)})
    subset = faces.subset([faces.index[rel] for rel in needed])
    embeddings = embed_face_set(model, subset)
    row = {rel: i for i, rel in enumerate(needed)}
    probe = embeddings[[row[pair.probe] for pair in pairs]]
    reference = embeddings[[row[pair.reference] for pair in pairs]]
    scores = {name: value.numpy().astype(np.float64) for name, value in model.compare(probe, reference).items()}
    labels = np.array([pair.same for pair in pairs])
    test = np.array([pair.fold == test_fold for pair in pairs])
    if not test.any() or test.all():
        raise FrbError(f"fold {test_fold} needs pairs both inside and outside it to choose thresholds")

    thresholds, accuracies, train_accuracies = {}, {}, {}
    for name, values in scores.items():
        threshold = best_threshold(values[~test], labels[~test])
        thresholds[name] = threshold
        accuracies[name] = float(((values[test] < threshold) == labels[test]).mean())
        train_accuracies[name] = float(((values[~test] < threshold) == labels[~test]).mean())
    decision_accuracy = float(((scores["msn"][test] < 0.5) == labels[test]).mean())
    return FoldResult(test_fold, thresholds, accuracies, train_accuracies, decision_accuracy)


# --- A whole run: data, training, evaluation, files --------------------------------------------------------------


def train_fold(
    lfw: LFW,
    all_faces: FaceSet,
    people_folds: list[list[tuple[str, int]]],
    test_fold: int,
    hp: MSNHyperparameters,
    out_dir: Path,
    command: str,
    data_digest: str,
    progress: bool = True,
) -> dict[str, Any]:
    """Train on every fold of `people_folds` but `test_fold`, evaluate, and write the weights and a JSON record.

    Writes `msn-fold{k}.pt` (float16 weights with the record as metadata),
    `msn-fold{k}.json`, `losses-fold{k}.csv` and the resumable
    `state-fold{k}.pt` into `out_dir`. `data_digest` is the `data_hash` of
    `all_faces`, recorded as is. Returns the record.
    """
    train_names = {name for index, people in enumerate(people_folds, start=1) if index != test_fold for name, _ in people}
    rows = [i for i, rel in enumerate(all_faces.relpaths) if rel.split("/", 1)[0] in train_names]
    train_faces = all_faces.subset(rows)
    if hp.max_people is not None:
        # The first people in people.txt order who have two or more images, so that every phase has positives.
        counts = torch.bincount(train_faces.identities)
        keep = [int(i) for i in torch.nonzero(counts >= 2).flatten()[: hp.max_people]]
        keep_set = set(keep)
        train_faces = train_faces.subset([i for i, identity in enumerate(train_faces.identities.tolist()) if identity in keep_set])

    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"fold{test_fold}"
    weights_path = out_dir / f"msn-{stem}.pt"
    record_path = out_dir / f"msn-{stem}.json"
    finished = _finished_record(weights_path, record_path, hp)
    if finished is not None:
        # Left as it is: rewriting it would change its hash (the record
        # includes the command), and runs that used it would no longer resume.
        logger.info("Fold %d is already trained (%s); skipping it", test_fold, weights_path)
        return finished
    model, state = train_msn(
        train_faces, hp, out_dir / f"state-{stem}.pt", csv_path=out_dir / f"losses-{stem}.csv", progress=progress
    )
    result = evaluate_fold(model, all_faces, parse_pairs(lfw.pairs_file), test_fold)
    logger.info(
        "Fold %d accuracies: %s",
        test_fold,
        ", ".join(f"{name} {100 * accuracy:.1f}%" for name, accuracy in result.accuracies.items()),
    )
    record = {
        "model": MSN.name,
        "command": command,
        "seed": hp.seed,
        "test_fold": test_fold,
        "train_images": len(train_faces),
        "train_people": int(train_faces.identities.max()) + 1,
        "data_hash": data_digest,
        "torch": str(torch.__version__),
        "threads": torch.get_num_threads(),
        "training_seconds": round(state.seconds, 1),
        "hyperparameters": hp.to_dict(),
        "thresholds": result.thresholds,
        "fold_accuracy": result.accuracies,
        "train_folds_accuracy": result.train_accuracies,
        "msn_accuracy_at_0.5": result.decision_accuracy,
    }
    # Written whole or not at all, because runs may read this folder while other folds still train.
    buffer = io.BytesIO()
    torch.save(model.checkpoint(metadata=record, half=True), buffer)
    atomic_write_bytes(weights_path, buffer.getvalue())
    atomic_write_bytes(record_path, (json.dumps(record, indent=2) + "\n").encode("utf-8"))
    logger.info("Wrote %s (%.1f MB)", weights_path, weights_path.stat().st_size / 1e6)
    return record


def _finished_record(weights_path: Path, record_path: Path, hp: MSNHyperparameters) -> dict[str, Any] | None:
    """Return the record of a fold already trained with `hp`, or None when it must be trained (or resumed)."""
    if not (weights_path.is_file() and record_path.is_file()):
        return None
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    # Compared as JSON, the form in which the record keeps them.
    if record.get("hyperparameters") != json.loads(json.dumps(hp.to_dict())):
        return None
    return record


def train_lfw(
    data_root: Path,
    cache_dir: Path,
    out_dir: Path,
    hp: MSNHyperparameters,
    test_folds: Sequence[int] = (10,),
    command: str = "",
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Load LFW and train one model per held-out fold in `test_folds`; returns their records."""
    lfw = locate_lfw(data_root)
    people_folds = read_people(lfw.root / "people.txt")
    for fold in test_folds:
        if not 1 <= fold <= len(people_folds):
            raise FrbError(
                f"fold {fold} does not exist; people.txt has folds 1 to {len(people_folds)}, so choose --folds among them"
            )
    everyone = [person for people in people_folds for person in people]
    all_faces = load_face_set(lfw, everyone, cache_dir, hp.architecture.image_size, progress=progress)
    logger.info("Loaded %d faces of %d people", len(all_faces), len(everyone))
    digest = data_hash(lfw, all_faces.relpaths)
    return [train_fold(lfw, all_faces, people_folds, fold, hp, out_dir, command, digest, progress) for fold in test_folds]
