"""Face alignment and its cache, on a few real LFW images."""

from __future__ import annotations

import logging
import math
import os
import shutil
from pathlib import Path

import facenet_pytorch
import numpy as np
import pytest
from PIL import Image

from robustbench_face.data.align import (
    LFW_FALLBACK_LANDMARKS,
    AlignedFace,
    AlignerSettings,
    AlignmentCache,
    FaceAligner,
    align_paths,
    faces_to_tensor,
    file_sha256,
    image_key,
    load_image,
    select_face,
    warp_to_template,
)
from robustbench_face.errors import FrbError
from robustbench_face.geometry import CANONICAL_TEMPLATE, CROP_SIZE

LOGGER = "robustbench_face.data.align"

# Two of these hold a second, larger face off centre, which the
# centre-weighted selection must pass over.
IMAGES = [
    "lfw/lfw-deepfunneled/Aaron_Eckhart/Aaron_Eckhart_0001.jpg",
    "lfw/lfw-deepfunneled/Andre_Lange/Andre_Lange_0001.jpg",
    "lfw/lfw-deepfunneled/Serena_Williams/Serena_Williams_0001.jpg",
    "lfw/lfw-deepfunneled/Gerhard_Schroeder/Gerhard_Schroeder_0029.jpg",
]
TWO_FACE_IMAGES = IMAGES[1], IMAGES[3]


def rms(points: np.ndarray, reference: np.ndarray) -> float:
    return float(np.sqrt(((np.asarray(points) - reference) ** 2).sum(axis=1).mean()))


def assert_same_face(actual: AlignedFace, expected: AlignedFace) -> None:
    assert actual.crop.tobytes() == expected.crop.tobytes()
    assert actual.landmarks.tobytes() == expected.landmarks.tobytes()
    assert actual.source_landmarks.tobytes() == expected.source_landmarks.tobytes()
    assert actual.box.tobytes() == expected.box.tobytes()
    assert actual.fallback == expected.fallback
    assert actual.probability == expected.probability or (
        math.isnan(actual.probability) and math.isnan(expected.probability)
    )


@pytest.fixture(scope="module")
def aligner() -> FaceAligner:
    return FaceAligner()


@pytest.fixture(scope="module")
def aligned(data_root: Path, aligner: FaceAligner, tmp_path_factory: pytest.TempPathFactory):
    """The IMAGES aligned once into a fresh cache: (faces, cache_dir)."""
    cache_dir = tmp_path_factory.mktemp("cache")
    faces = align_paths(IMAGES, data_root, cache_dir, progress=False, aligner=aligner)
    return faces, cache_dir


@pytest.fixture
def fake_root(tmp_path: Path) -> Path:
    """A data root with a flat grey LFW-sized JPEG and a text file named .jpg."""
    person = tmp_path / "data" / "lfw" / "lfw-deepfunneled" / "Nobody"
    person.mkdir(parents=True)
    Image.new("RGB", (250, 250), (128, 128, 128)).save(person / "Nobody_0001.jpg", quality=95)
    (person / "Nobody_0002.jpg").write_text("not an image\n")
    return tmp_path / "data"


def test_crops_are_160_in_unit_range(aligned) -> None:
    faces, _ = aligned
    batch = faces_to_tensor(faces)

    assert batch.shape == (len(IMAGES), 3, CROP_SIZE, CROP_SIZE)
    assert batch.dtype.is_floating_point
    assert batch.min() >= 0.0
    assert batch.max() <= 1.0
    # A dark or saturated crop would point to a wrong scale or channel order.
    assert 0.2 < batch.mean() < 0.8
    for face in faces:
        assert face.crop.shape == (CROP_SIZE, CROP_SIZE, 3)
        assert face.crop.dtype == np.uint8
        assert not face.fallback
        assert face.probability > 0.95


def test_landmarks_fit_canonical_template(aligned) -> None:
    # The residual of the 5-point similarity fit is not zero, because faces
    # differ from the template in shape and pose. Its median over 301 LFW
    # images was 4.4 px.
    faces, _ = aligned
    for path, face in zip(IMAGES, faces):
        assert face.landmarks.dtype == np.float32
        assert rms(face.landmarks, CANONICAL_TEMPLATE) < 7.0, path


def test_redetected_landmarks_match_mapped(aligned, aligner: FaceAligner) -> None:
    # MTCNN run again on each crop must find the landmarks at face.landmarks,
    # where the warp mapped them. The crop is padded, because MTCNN's
    # landmarks are poor on a face that fills the whole image.
    faces, _ = aligned
    pad = 40
    canvases = []
    for face in faces:
        canvas = Image.new("RGB", (CROP_SIZE + 2 * pad, CROP_SIZE + 2 * pad))
        canvas.paste(Image.fromarray(face.crop), (pad, pad))
        canvases.append(canvas)

    for path, face, detection in zip(IMAGES, faces, aligner.detect(canvases)):
        assert detection is not None, path
        assert rms(detection.landmarks - pad, face.landmarks) < 5.0, path


def test_centre_weighted_selection_on_lfw(aligned, data_root: Path, aligner: FaceAligner) -> None:
    faces, _ = aligned
    for path in TWO_FACE_IMAGES:
        image = load_image(data_root / path)
        boxes, _ = aligner.detector().detect(image, landmarks=False)
        boxes = np.asarray(boxes, dtype=np.float64)
        areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        selected = faces[IMAGES.index(path)].box

        assert len(boxes) >= 2, path
        assert areas.max() > (selected[2] - selected[0]) * (selected[3] - selected[1]), path
        centre = (selected[:2] + selected[2:]) / 2
        assert np.linalg.norm(centre - np.array([125.0, 125.0])) < 25.0, path


def test_select_face_prefers_centre() -> None:
    large_corner_face = [150.0, 0.0, 250.0, 120.0]
    small_centre_face = [85.0, 80.0, 165.0, 170.0]
    boxes = np.array([large_corner_face, small_centre_face])

    assert select_face(boxes, (250, 250), center_weight=2.0) == 1
    assert select_face(boxes, (250, 250), center_weight=0.0) == 0


def test_warp_identity_is_exact() -> None:
    image = np.random.default_rng(0).integers(0, 256, (CROP_SIZE, CROP_SIZE, 3), dtype=np.uint8)

    crop, landmarks = warp_to_template(image, CANONICAL_TEMPLATE, CANONICAL_TEMPLATE, CROP_SIZE)

    np.testing.assert_array_equal(crop, image)
    np.testing.assert_allclose(landmarks, CANONICAL_TEMPLATE, atol=1e-4)


def test_warp_shift_moves_whole_pixels() -> None:
    # A face 3 px right and 2 px up of the template, in a non-square image:
    # crop pixel (x, y) must be source pixel (x + 3, y - 2), with black
    # where that falls outside the source.
    image = np.random.default_rng(1).integers(0, 256, (150, 180, 3), dtype=np.uint8)

    crop, _ = warp_to_template(image, CANONICAL_TEMPLATE + [3.0, -2.0], CANONICAL_TEMPLATE, CROP_SIZE)

    np.testing.assert_array_equal(crop[2:152, :157], image[0:150, 3:160])
    assert crop[:2].max() == 0
    assert crop[152:].max() == 0


def test_same_images_align_identically(data_root: Path, aligner: FaceAligner) -> None:
    images = [load_image(data_root / path) for path in IMAGES[:2]]

    first = aligner.align(images)
    second = aligner.align(images)

    for actual, expected in zip(second, first):
        assert_same_face(actual, expected)


def test_cache_hit_skips_mtcnn(aligned, data_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    faces, cache_dir = aligned
    built = []

    def fail_on_build(*args, **kwargs):
        built.append(args)
        raise AssertionError("MTCNN was built although every image is cached")

    monkeypatch.setattr(facenet_pytorch, "MTCNN", fail_on_build)
    fresh = FaceAligner()
    # Reordered, with a repeat, to check that results follow the input order.
    order = [2, 0, 2, 3, 1]

    cached = align_paths([IMAGES[i] for i in order], data_root, cache_dir, progress=False, aligner=fresh)

    assert built == []
    assert not fresh.detector_loaded
    assert len(cached) == len(order)
    for face, index in zip(cached, order):
        assert_same_face(face, faces[index])


@pytest.mark.parametrize("damage", ["empty", "truncated", "garbage", "wrong_shape"])
def test_corrupt_cache_entry_recomputed(
    damage: str, data_root: Path, aligner: FaceAligner, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = IMAGES[0]
    (original,) = align_paths([path], data_root, tmp_path, progress=False, aligner=aligner)
    cache = AlignmentCache(tmp_path, aligner.settings)
    entry = cache.entry_path(image_key(path, data_root))
    content = entry.read_bytes()
    if damage == "empty":
        entry.write_bytes(b"")
    elif damage == "truncated":
        entry.write_bytes(content[: len(content) // 2])
    elif damage == "garbage":
        entry.write_bytes(os.urandom(len(content)))
    else:
        # A readable entry whose crop has the wrong shape.
        np.savez(
            entry,
            crop=original.crop[:80],
            landmarks=original.landmarks,
            fallback=False,
            probability=original.probability,
            source_landmarks=original.source_landmarks,
            box=original.box,
        )

    with caplog.at_level(logging.WARNING, logger=LOGGER):
        (recomputed,) = align_paths([path], data_root, tmp_path, progress=False, aligner=aligner)

    assert any(str(entry) in record.getMessage() for record in caplog.records)
    assert_same_face(recomputed, original)
    repaired = cache.load(image_key(path, data_root))
    assert repaired is not None
    assert_same_face(repaired, original)


def test_replaced_image_is_aligned_again(data_root: Path, aligner: FaceAligner, tmp_path: Path) -> None:
    root = tmp_path / "data"
    path = IMAGES[0]
    target = root / path
    target.parent.mkdir(parents=True)
    shutil.copyfile(data_root / path, target)
    (first,) = align_paths([path], root, tmp_path / "cache", progress=False, aligner=aligner)

    # The same path now contains another person's photo.
    shutil.copyfile(data_root / IMAGES[1], target)
    (second,) = align_paths([path], root, tmp_path / "cache", progress=False, aligner=aligner)
    (expected,) = align_paths([IMAGES[1]], data_root, tmp_path / "fresh", progress=False, aligner=aligner)

    assert not np.array_equal(second.crop, first.crop)
    assert_same_face(second, expected)


def test_entry_without_digest_is_kept_and_stamped(data_root: Path, aligner: FaceAligner, tmp_path: Path) -> None:
    path = IMAGES[0]
    (original,) = align_paths([path], data_root, tmp_path, progress=False, aligner=aligner)
    cache = AlignmentCache(tmp_path, aligner.settings)
    key = image_key(path, data_root)
    # An entry as written before entries recorded their image's digest.
    np.savez(
        cache.entry_path(key),
        crop=original.crop,
        landmarks=original.landmarks,
        fallback=False,
        probability=original.probability,
        source_landmarks=original.source_landmarks,
        box=original.box,
    )
    assert cache.load(key).source_sha256 is None

    fresh = FaceAligner()
    (again,) = align_paths([path], data_root, tmp_path, progress=False, aligner=fresh)

    assert not fresh.detector_loaded
    assert_same_face(again, original)
    assert cache.load(key).source_sha256 == file_sha256(data_root / path)


def test_read_only_cache_serves_unstamped_entries(
    data_root: Path, aligner: FaceAligner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = IMAGES[0]
    (original,) = align_paths([path], data_root, tmp_path, progress=False, aligner=aligner)
    cache = AlignmentCache(tmp_path, aligner.settings)
    with np.load(cache.entry_path(image_key(path, data_root))) as entry:
        fields = {name: entry[name] for name in entry.files if name != "source_sha256"}
    np.savez(cache.entry_path(image_key(path, data_root)), **fields)

    def fail_to_store(*args, **kwargs):
        raise PermissionError("read-only file system")

    monkeypatch.setattr(AlignmentCache, "store", fail_to_store)
    (again,) = align_paths([path], data_root, tmp_path, progress=False, aligner=FaceAligner())
    assert_same_face(again, original)


def test_no_face_uses_fallback(
    fake_root: Path, aligner: FaceAligner, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = "lfw/lfw-deepfunneled/Nobody/Nobody_0001.jpg"

    with caplog.at_level(logging.INFO, logger=LOGGER):
        (face,) = align_paths([path], fake_root, tmp_path / "cache", progress=False, aligner=aligner)

    assert face.fallback
    assert math.isnan(face.probability)
    assert np.isnan(face.box).all()
    np.testing.assert_allclose(face.source_landmarks, LFW_FALLBACK_LANDMARKS, atol=1e-4)
    assert rms(face.landmarks, CANONICAL_TEMPLATE) < 1.5
    assert face.crop.shape == (CROP_SIZE, CROP_SIZE, 3)
    assert any(record.levelno == logging.WARNING and "1 of 1" in record.getMessage() for record in caplog.records)

    (cached,) = align_paths([path], fake_root, tmp_path / "cache", progress=False, aligner=aligner)
    assert_same_face(cached, face)


def test_image_below_min_face_size_falls_back(aligner: FaceAligner) -> None:
    tiny = Image.new("RGB", (16, 12), (90, 90, 90))

    (face,) = aligner.align([tiny])

    assert face.fallback
    scale = np.array([16 / 250, 12 / 250])
    np.testing.assert_allclose(face.source_landmarks, np.array(LFW_FALLBACK_LANDMARKS) * scale, atol=1e-4)


def test_non_image_raises_naming_file(fake_root: Path, tmp_path: Path) -> None:
    path = "lfw/lfw-deepfunneled/Nobody/Nobody_0002.jpg"

    with pytest.raises(FrbError, match="Nobody_0002.jpg"):
        align_paths([path], fake_root, tmp_path / "cache", progress=False)


def test_missing_image_raises_naming_file(fake_root: Path, tmp_path: Path) -> None:
    with pytest.raises(FrbError, match="Nobody_0003.jpg.*not found"):
        align_paths(["lfw/lfw-deepfunneled/Nobody/Nobody_0003.jpg"], fake_root, tmp_path / "cache", progress=False)


def test_image_key_rejects_paths_outside_root(tmp_path: Path) -> None:
    root = tmp_path / "data"

    assert image_key("lfw/A/A_0001.jpg", root) == "lfw/A/A_0001.jpg"
    assert image_key(root / "lfw" / "A" / "A_0001.jpg", root) == "lfw/A/A_0001.jpg"
    with pytest.raises(FrbError, match=r"\.\./A_0001\.jpg"):
        image_key("../A_0001.jpg", root)
    with pytest.raises(FrbError, match="outside the data root"):
        image_key(tmp_path / "elsewhere" / "A_0001.jpg", root)
    with pytest.raises(FrbError, match="relative to the data root"):
        image_key("", root)


def test_settings_digest_tracks_changes() -> None:
    default = AlignerSettings()

    assert default.digest() == AlignerSettings().digest()
    assert len(default.digest()) == 12
    assert AlignerSettings(thresholds=(0.6, 0.7, 0.8)).digest() != default.digest()
    assert AlignerSettings(center_weight=1.0).digest() != default.digest()
    assert AlignerSettings(version=default.version + 1).digest() != default.digest()
    assert AlignmentCache("/cache", default).root == Path("/cache/aligned") / default.digest()
