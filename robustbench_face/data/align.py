"""Face alignment with MTCNN landmarks, and its on-disk cache.

Every image is aligned once: MTCNN (facenet-pytorch) finds the faces and
their five landmarks, one face is selected, and a similarity transform of
its landmarks onto `geometry.CANONICAL_TEMPLATE` warps the image to a
160 x 160 RGB crop. Models map that crop to their own chip geometry later.

Coordinates are in pixels with the pixel-centre convention: (0, 0) is the
centre of the top-left pixel and the image spans [-0.5, W - 0.5]. Landmarks,
templates and transforms all use it, so a landmark at template position
(u, v) is sampled from the source image exactly at the inverse transform of
(u, v).

NOTE: MTCNN's landmarks are read in this convention too. facenet-pytorch
2.5.3 converts them from MATLAB-style 1-based boxes, and its code does not
fix their convention to better than about half a pixel.

The cache stores one `.npz` per image under
`<cache_dir>/aligned/<settings digest>/<image path relative to the data root>.npz`,
with the sha256 of the image it came from, so that a changed image is
aligned again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import tempfile
import zipfile
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from ..errors import FrbError
from ..geometry import CANONICAL_TEMPLATE, CROP_SIZE, apply_transform, estimate_similarity, invert_transform
from ..paths import DATA_ROOT_ENV, resolve_cache_dir, resolve_data_root

if TYPE_CHECKING:
    from facenet_pytorch import MTCNN

log = logging.getLogger(__name__)

# Bump when the output for the same settings changes (detection, selection,
# warp, fallback), so that old cache entries are no longer found.
ALIGNMENT_VERSION = 1

# Landmarks for an image in which MTCNN finds no face, in the order left
# eye, right eye, nose tip, left and right mouth corner, as (x, y). Each
# coordinate is the median over 301 deep-funneled LFW images (every 44th
# file of the sorted list, all 250 x 250) of the selected face's MTCNN
# landmarks, measured with the default AlignerSettings and facenet-pytorch
# 2.5.3 on CPU. MTCNN found a face in all 301. The median absolute
# deviation was 1 to 3 pixels per coordinate, and the similarity fit puts
# these points within 1 pixel RMS of CANONICAL_TEMPLATE.
LFW_FALLBACK_LANDMARKS = ((105.0, 113.4), (147.2, 112.4), (125.8, 137.7), (108.4, 158.9), (145.3, 158.3))
LFW_IMAGE_SIZE = (250, 250)

SELECTION_RULE = "center_weighted_size"


def _template_tuple(points: np.ndarray) -> tuple[tuple[float, float], ...]:
    return tuple((float(x), float(y)) for x, y in np.asarray(points, dtype=np.float64))


@dataclass(frozen=True)
class AlignerSettings:
    """The settings that determine an aligned crop. Their digest names the cache folder.

    `thresholds`, `min_face_size` and `factor` are MTCNN's parameters, with
    facenet-pytorch 2.5.3's defaults. `center_weight` weighs the squared
    distance (pixels squared) of a box centre from the image centre against
    the box area when several faces are found, as facenet-pytorch's
    `center_weighted_size` selection does.
    """

    template: tuple[tuple[float, float], ...] = field(default_factory=lambda: _template_tuple(CANONICAL_TEMPLATE))
    crop_size: int = CROP_SIZE
    min_face_size: int = 20
    thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7)
    factor: float = 0.709
    selection: str = SELECTION_RULE
    center_weight: float = 2.0
    fallback_landmarks: tuple[tuple[float, float], ...] = LFW_FALLBACK_LANDMARKS
    fallback_image_size: tuple[int, int] = LFW_IMAGE_SIZE
    version: int = ALIGNMENT_VERSION

    def __post_init__(self) -> None:
        if np.asarray(self.template).shape != (5, 2):
            raise ValueError(f"template must be 5 (x, y) points, got shape {np.asarray(self.template).shape}")
        if np.asarray(self.fallback_landmarks).shape != (5, 2):
            raise ValueError(f"fallback_landmarks must be 5 (x, y) points, got {self.fallback_landmarks}")
        if self.selection != SELECTION_RULE:
            raise ValueError(f"unknown face selection rule {self.selection!r}; only {SELECTION_RULE!r} is implemented")

    def digest(self) -> str:
        """Return a 12-hex-digit hash of the settings, stable across runs and machines."""
        text = json.dumps(asdict(self), sort_keys=True)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


@dataclass(frozen=True, eq=False)
class AlignedFace:
    """One aligned face.

    `crop` is uint8 RGB (crop_size, crop_size, 3), and `landmarks` float32
    (5, 2) are the source landmarks mapped into crop pixels.
    `source_landmarks` float32 (5, 2) and `box` float32 (x1, y1, x2, y2) are
    in source-image pixels. `fallback` is set when MTCNN found no face and
    the fixed LFW landmarks were used, and then `box` and `probability`
    (MTCNN's face score) are NaN. `source_sha256` is the hex digest of the
    image file the face was aligned from, when known.
    """

    crop: np.ndarray
    landmarks: np.ndarray
    fallback: bool
    probability: float
    source_landmarks: np.ndarray
    box: np.ndarray
    source_sha256: str | None = None


def faces_to_tensor(faces: Sequence[AlignedFace]) -> torch.Tensor:
    """Stack aligned crops into a float32 tensor (N, 3, H, W) in [0, 1]."""
    if not faces:
        raise ValueError("faces_to_tensor needs at least one face")
    crops = np.stack([face.crop for face in faces])
    return torch.from_numpy(crops).permute(0, 3, 1, 2).float().div_(255.0)


def file_sha256(path: str | os.PathLike) -> str:
    """Return the hex sha256 of a file's bytes, raising FrbError that names the file if it cannot be read."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise FrbError(f"image {path} not found; check the data root (--data-root or ${DATA_ROOT_ENV})") from None
    except OSError as exc:
        raise FrbError(f"image {path} cannot be read ({exc.strerror}); check its permissions or replace it") from None
    return hashlib.sha256(data).hexdigest()


def load_image(path: str | os.PathLike) -> Image.Image:
    """Read an image file as RGB, raising FrbError that names the file if it is missing or unreadable."""
    try:
        with Image.open(path) as image:
            # convert() decodes the whole file, so a truncated JPEG fails here.
            return image.convert("RGB")
    except FileNotFoundError:
        raise FrbError(
            f"image {path} not found; check the data root (--data-root or ${DATA_ROOT_ENV})"
        ) from None
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise FrbError(f"image {path} is not a readable image ({exc}); replace the file or leave it out") from None


def warp_to_template(
    image: np.ndarray, landmarks: np.ndarray, template: np.ndarray, crop_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Warp an RGB image (H, W, 3) so that its five landmarks fit `template`.

    Fits the least-squares similarity from `landmarks` to `template` and
    samples the image bilinearly at every crop pixel centre mapped back
    through it. Samples outside the image blend with black. Returns the
    uint8 crop (crop_size, crop_size, 3) and the landmarks in crop pixels
    (float32, (5, 2)).
    """
    to_crop = estimate_similarity(landmarks, template)
    to_image = invert_transform(to_crop)

    steps = np.arange(crop_size, dtype=np.float64)
    grid_x, grid_y = np.meshgrid(steps, steps)
    centres = np.stack([grid_x.ravel(), grid_y.ravel()], axis=1)
    source = apply_transform(to_image, centres)

    # grid_sample with align_corners=False puts -1 and 1 on the outer pixel
    # edges, so pixel centre x of an image W wide sits at (2x + 1) / W - 1.
    height, width = image.shape[:2]
    normalised = np.empty_like(source)
    normalised[:, 0] = (2.0 * source[:, 0] + 1.0) / width - 1.0
    normalised[:, 1] = (2.0 * source[:, 1] + 1.0) / height - 1.0
    grid = torch.from_numpy(normalised.reshape(1, crop_size, crop_size, 2))

    # float64 keeps the identity warp exact, so a face already on the
    # template comes back byte for byte. The conversion also copies a
    # read-only uint8 array (as np.asarray returns for a PIL image), which
    # torch would warn about.
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float64)).permute(2, 0, 1).unsqueeze(0)
    sampled = F.grid_sample(pixels, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    crop = sampled[0].permute(1, 2, 0).numpy()
    crop = np.clip(np.rint(crop), 0, 255).astype(np.uint8)

    crop_landmarks = apply_transform(to_crop, landmarks).astype(np.float32)
    return crop, crop_landmarks


def select_face(boxes: np.ndarray, image_size: tuple[int, int], center_weight: float) -> int:
    """Return the index of the box with the largest area minus `center_weight`
    times the squared distance of its centre from the image centre.

    `boxes` is (K, 4) of x1, y1, x2, y2 and `image_size` is (width, height).
    In 301 sampled LFW images, 57 contained more than one face, and in 6 of
    them the largest box was a bystander off centre, passed over by this rule.
    """
    boxes = np.asarray(boxes, dtype=np.float64)
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2.0
    image_centre = np.array(image_size, dtype=np.float64) / 2.0
    offsets_squared = ((centres - image_centre) ** 2).sum(axis=1)
    return int(np.argmax(areas - center_weight * offsets_squared))


@dataclass(frozen=True, eq=False)
class Detection:
    """The selected face of one image, in image pixels."""

    box: np.ndarray  # (4,) x1, y1, x2, y2
    probability: float
    landmarks: np.ndarray  # (5, 2)


def _build_mtcnn(settings: AlignerSettings, device: str | torch.device | None) -> MTCNN:
    # Imported here so that importing this module, and a run served from the
    # cache, never loads facenet-pytorch.
    from facenet_pytorch import MTCNN

    return MTCNN(
        min_face_size=settings.min_face_size,
        thresholds=list(settings.thresholds),
        factor=settings.factor,
        device=device,
    )


class FaceAligner:
    """Detect faces with MTCNN and warp them onto the canonical template.

    MTCNN's weights load on the first detection, not at construction, so
    that a run served entirely from the cache never builds it.
    """

    def __init__(self, settings: AlignerSettings | None = None, device: str | torch.device | None = None) -> None:
        self.settings = settings or AlignerSettings()
        self.device = device
        self._mtcnn: MTCNN | None = None

    @property
    def detector_loaded(self) -> bool:
        """Whether MTCNN has been built."""
        return self._mtcnn is not None

    def detector(self) -> MTCNN:
        """Return the facenet-pytorch MTCNN, building it on first use."""
        if self._mtcnn is None:
            log.debug("loading MTCNN")
            self._mtcnn = _build_mtcnn(self.settings, self.device)
        return self._mtcnn

    def detect(self, images: Sequence[Image.Image]) -> list[Detection | None]:
        """Find the selected face of each RGB image, or None where there is none.

        Images of equal size go to MTCNN as one batch, because its first
        stage stacks them into one tensor.
        """
        detections: list[Detection | None] = [None] * len(images)
        indices_by_size: dict[tuple[int, int], list[int]] = {}
        for index, image in enumerate(images):
            indices_by_size.setdefault(image.size, []).append(index)

        for size, indices in indices_by_size.items():
            # MTCNN's scale pyramid is empty when the width or height is below
            # min_face_size, and facenet-pytorch then raises an error.
            if min(size) < self.settings.min_face_size:
                continue
            batch = [images[index] for index in indices]
            all_boxes, all_probs, all_points = self.detector().detect(batch, landmarks=True)
            for index, boxes, probs, points in zip(indices, all_boxes, all_probs, all_points):
                if boxes is None:
                    continue
                # facenet-pytorch returns object arrays whose shape depends on the batch.
                boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
                probs = np.asarray(probs, dtype=np.float64).reshape(-1)
                points = np.asarray(points, dtype=np.float64).reshape(-1, 5, 2)
                chosen = select_face(boxes, size, self.settings.center_weight)
                detections[index] = Detection(boxes[chosen], float(probs[chosen]), points[chosen])
        return detections

    def fallback_landmarks(self, image_size: tuple[int, int]) -> np.ndarray:
        """Return the fixed landmarks scaled from the LFW image size to `image_size` (width, height)."""
        # NOTE: these landmarks were measured on deep-funneled LFW, so on
        # other images they fit only faces centred and scaled the same way.
        scale = np.array(image_size, dtype=np.float64) / np.array(self.settings.fallback_image_size, dtype=np.float64)
        return np.asarray(self.settings.fallback_landmarks, dtype=np.float64) * scale

    def align(self, images: Sequence[Image.Image], names: Sequence[str] | None = None) -> list[AlignedFace]:
        """Align each image. An image without a detected face gets `fallback=True`.

        `names` (one per image, such as the file path) only label the log
        messages.
        """
        images = [image if image.mode == "RGB" else image.convert("RGB") for image in images]
        if names is None:
            names = [f"image {index}" for index in range(len(images))]
        if len(names) != len(images):
            raise ValueError(f"got {len(names)} names for {len(images)} images")

        template = np.asarray(self.settings.template, dtype=np.float64)
        faces = []
        for image, name, detection in zip(images, names, self.detect(images)):
            if detection is None:
                log.info("no face detected in %s, so the fixed LFW landmarks are used", name)
                landmarks = self.fallback_landmarks(image.size)
                box = np.full(4, np.nan)
                probability = math.nan
            else:
                landmarks, box, probability = detection.landmarks, detection.box, detection.probability

            crop, crop_landmarks = warp_to_template(np.asarray(image), landmarks, template, self.settings.crop_size)
            faces.append(
                AlignedFace(
                    crop=crop,
                    landmarks=crop_landmarks,
                    fallback=detection is None,
                    probability=probability,
                    source_landmarks=landmarks.astype(np.float32),
                    box=box.astype(np.float32),
                )
            )
        return faces


# Exceptions from reading a damaged .npz: an empty or truncated file, garbage
# bytes, a corrupted compressed member, a missing array (KeyError) or one
# that is not a scalar where a scalar belongs (TypeError, ValueError).
_CORRUPT_ENTRY_ERRORS = (OSError, ValueError, TypeError, KeyError, EOFError, zipfile.BadZipFile, zlib.error)


class AlignmentCache:
    """Aligned faces on disk, one `.npz` per image, for one set of aligner settings."""

    def __init__(self, cache_dir: str | os.PathLike, settings: AlignerSettings) -> None:
        self.settings = settings
        self.root = Path(cache_dir) / "aligned" / settings.digest()

    def entry_path(self, key: str) -> Path:
        """Return the file that stores the image at relative path `key`."""
        return self.root / f"{key}.npz"

    def load(self, key: str) -> AlignedFace | None:
        """Return the cached face, or None if it is missing or damaged (with a warning).

        The face's `source_sha256` is None for an entry written before
        entries recorded the digest of their image.
        """
        path = self.entry_path(key)
        try:
            with np.load(path, allow_pickle=False) as entry:
                face = AlignedFace(
                    crop=entry["crop"],
                    landmarks=entry["landmarks"],
                    fallback=bool(entry["fallback"]),
                    probability=float(entry["probability"]),
                    source_landmarks=entry["source_landmarks"],
                    box=entry["box"],
                    source_sha256=str(entry["source_sha256"]) if "source_sha256" in entry.files else "",
                )
        except FileNotFoundError:
            return None
        except _CORRUPT_ENTRY_ERRORS as exc:
            log.warning(
                "cache entry %s is unreadable (%s: %s); aligning the image again", path, type(exc).__name__, exc
            )
            return None

        # Both a missing and an empty digest mean "not recorded".
        face = replace(face, source_sha256=face.source_sha256 or None)
        problem = self._check_entry(face)
        if problem:
            log.warning("cache entry %s is invalid (%s); aligning the image again", path, problem)
            return None
        return face

    def _check_entry(self, face: AlignedFace) -> str | None:
        size = self.settings.crop_size
        expected = {
            "crop": (face.crop, (size, size, 3), np.uint8),
            "landmarks": (face.landmarks, (5, 2), np.float32),
            "source_landmarks": (face.source_landmarks, (5, 2), np.float32),
            "box": (face.box, (4,), np.float32),
        }
        for name, (array, shape, dtype) in expected.items():
            if array.shape != shape or array.dtype != dtype:
                return f"{name} is {array.dtype} {array.shape}, expected {np.dtype(dtype)} {shape}"
        return None

    def store(self, key: str, face: AlignedFace) -> None:
        """Write the entry atomically: a temporary file in the same folder, then os.replace.

        An interrupted run leaves at most a stray `.tmp` file, never a
        partial entry. The file is not fsynced, so a machine crash can still
        damage an entry, which `load` then detects.
        """
        path = self.entry_path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(handle, "wb") as stream:
                np.savez_compressed(
                    stream,
                    crop=face.crop,
                    landmarks=face.landmarks,
                    fallback=np.bool_(face.fallback),
                    probability=np.float64(face.probability),
                    source_landmarks=face.source_landmarks,
                    box=face.box,
                    source_sha256=np.str_(face.source_sha256 or ""),
                )
            os.replace(temporary, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
            raise


def image_key(path: str | os.PathLike, data_root: Path) -> str:
    """Return the cache key of an image: its path relative to `data_root`, with '/' separators.

    An absolute path must lie inside `data_root`. A relative path must not
    contain '..', so that keys never leave the cache folder.
    """
    candidate = Path(path)
    if candidate.is_absolute():
        try:
            candidate = candidate.relative_to(data_root.absolute())
        except ValueError:
            raise FrbError(
                f"image {path} is outside the data root {data_root}; give image paths inside the data root"
            ) from None
    parts = PurePosixPath(candidate.as_posix()).parts
    if not parts or ".." in parts:
        raise FrbError(
            f"image path {str(path)!r} is not a file path below the data root {data_root}; "
            "give it relative to the data root, without '..'"
        )
    return "/".join(parts)


def align_paths(
    relpaths: Iterable[str | os.PathLike],
    data_root: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    *,
    batch_size: int = 16,
    progress: bool = True,
    aligner: FaceAligner | None = None,
) -> list[AlignedFace]:
    """Align images given relative to the data root, using and filling the cache.

    Only images without a valid cache entry are read and aligned, in
    batches of `batch_size`, and MTCNN is built only if there are any.
    Returns one face per input path, in input order, and a repeated path is
    aligned once. Faces with `fallback=True` are counted in a warning.
    Raises FrbError naming the file if an image is missing or unreadable.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    root = resolve_data_root(data_root)
    aligner = aligner or FaceAligner()
    cache = AlignmentCache(resolve_cache_dir(cache_dir), aligner.settings)

    keys = [image_key(path, root) for path in relpaths]
    # Entries are checked against the bytes of their image, so an image
    # replaced in place is aligned again.
    digests = {key: file_sha256(root / key) for key in dict.fromkeys(keys)}
    faces: dict[str, AlignedFace] = {}
    missing: list[str] = []
    changed = 0
    for key, digest in digests.items():
        cached = cache.load(key)
        if cached is not None and cached.source_sha256 is None:
            # An entry from before digests were recorded: trusted, as it always
            # was, and stamped with the image's current digest.
            cached = replace(cached, source_sha256=digest)
            try:
                cache.store(key, cached)
            except OSError as err:
                # A read-only cache still serves its entries, unstamped.
                log.debug("cannot stamp cache entry %s (%s)", cache.entry_path(key), err)
        if cached is not None and cached.source_sha256 != digest:
            changed += 1
            cached = None
        if cached is None:
            missing.append(key)
        else:
            faces[key] = cached

    if changed:
        log.info("%d image(s) changed since they were cached; aligning them again", changed)
    if missing:
        log.info("aligning %d images; %d others were found in the cache %s", len(missing), len(faces), cache.root)
    with tqdm(total=len(missing), desc="aligning faces", unit="img", disable=not progress or not missing) as bar:
        for start in range(0, len(missing), batch_size):
            batch = missing[start : start + batch_size]
            images = [load_image(root / key) for key in batch]
            for key, face in zip(batch, aligner.align(images, names=batch)):
                face = replace(face, source_sha256=digests[key])
                cache.store(key, face)
                faces[key] = face
            bar.update(len(batch))

    fallbacks = [key for key, face in faces.items() if face.fallback]
    if fallbacks:
        examples = ", ".join(fallbacks[:5]) + (", ..." if len(fallbacks) > 5 else "")
        log.warning(
            "no face detected in %d of %d images, which were aligned with the fixed LFW landmarks: %s",
            len(fallbacks),
            len(faces),
            examples,
        )
    return [faces[key] for key in keys]
