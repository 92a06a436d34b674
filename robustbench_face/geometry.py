"""Face templates and the similarity transforms between them.

Every face is aligned once, to the canonical template below, as a 160 x 160
crop. A model that expects another chip geometry maps the canonical crop to
its own template with one fixed similarity transform inside its `forward`,
so attacks and epsilons stay in the canonical pixel space for all models.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

CROP_SIZE = 160

# dlib's 150 x 150 face chip (padding 0.25 around its mean face shape) as it
# appears after a similarity fit of MTCNN's five landmarks: left eye, right
# eye, nose tip, left and right mouth corner, in (x, y) pixels. On LFW fold 1
# this geometry gave dlib's ResNet about 97% at its best threshold, where a
# plain centre crop gave about 95% and eyes 15 pixels lower about 86%.
DLIB_TEMPLATE_150 = np.array(
    [[49.0, 44.3], [102.2, 43.1], [76.1, 75.4], [53.3, 104.5], [100.0, 103.5]],
    dtype=np.float64,
)

# The canonical template: dlib's chip geometry scaled to 160 pixels.
CANONICAL_TEMPLATE = DLIB_TEMPLATE_150 * (CROP_SIZE / 150.0)


def estimate_similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Fit the least-squares similarity transform mapping `src` to `dst`.

    Uses Umeyama's closed form (rotation, uniform scale, translation, no
    reflection). Points are (K, 2) arrays of (x, y). Returns a 2 x 3 matrix
    `A` with `dst ~= src @ A[:, :2].T + A[:, 2]`.
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or len(src) < 2:
        raise ValueError(f"expected two (K, 2) point arrays with K >= 2, got {src.shape} and {dst.shape}")

    src_mean = src.mean(axis=0)
    dst_mean = dst.mean(axis=0)
    src_c = src - src_mean
    dst_c = dst - dst_mean
    covariance = dst_c.T @ src_c / len(src)
    u, singular, vt = np.linalg.svd(covariance)
    sign = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[1] = -1.0
    rotation = u @ np.diag(sign) @ vt
    src_var = (src_c**2).sum() / len(src)
    if src_var <= 1e-12:
        raise ValueError("source points coincide, so no similarity transform is defined")
    scale = (singular * sign).sum() / src_var
    translation = dst_mean - scale * rotation @ src_mean

    matrix = np.zeros((2, 3))
    matrix[:, :2] = scale * rotation
    matrix[:, 2] = translation
    return matrix


def estimate_affine(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Fit the least-squares affine transform mapping `src` to `dst` (2 x 3)."""
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or len(src) < 3:
        raise ValueError(f"expected two (K, 2) point arrays with K >= 3, got {src.shape} and {dst.shape}")
    design = np.hstack([src, np.ones((len(src), 1))])
    solution, _, rank, _ = np.linalg.lstsq(design, dst, rcond=None)
    if rank < 3:
        raise ValueError("source points are collinear, so no affine transform is defined")
    return solution.T


def apply_transform(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Map (K, 2) points through a 2 x 3 affine matrix."""
    points = np.asarray(points, dtype=np.float64)
    return points @ matrix[:, :2].T + matrix[:, 2]


def invert_transform(matrix: np.ndarray) -> np.ndarray:
    """Invert a 2 x 3 affine matrix."""
    full = np.vstack([matrix, [0.0, 0.0, 1.0]])
    return np.linalg.inv(full)[:2]


def sampling_grid_theta(
    src_template: np.ndarray, src_size: int, dst_template: np.ndarray, dst_size: int, affine: bool = False
) -> torch.Tensor:
    """Build the `affine_grid` matrix that warps a `src_size` crop aligned to
    `src_template` into a `dst_size` crop aligned to `dst_template`.

    The map is a similarity fit unless `affine` is set, for chips that
    stretch the face unevenly.

    `affine_grid` maps output coordinates to input coordinates in [-1, 1]
    units (align_corners=False, so -1 and 1 are the outer pixel edges), so
    the pixel-space inverse transform is conjugated into those units.
    """
    fit = estimate_affine if affine else estimate_similarity
    to_src = fit(dst_template, src_template)  # output pixel -> input pixel

    def normalise(size: int) -> np.ndarray:
        # pixel centre x maps to (2x + 1) / size - 1
        return np.array([[2.0 / size, 0.0, 1.0 / size - 1.0], [0.0, 2.0 / size, 1.0 / size - 1.0], [0, 0, 1]])

    def denormalise(size: int) -> np.ndarray:
        return np.linalg.inv(normalise(size))

    pixel_map = np.vstack([to_src, [0.0, 0.0, 1.0]])
    theta = normalise(src_size) @ pixel_map @ denormalise(dst_size)
    return torch.tensor(theta[:2], dtype=torch.float32)


def warp_batch(images: torch.Tensor, theta: torch.Tensor, size: int) -> torch.Tensor:
    """Warp a batch (N, C, H, W) with one 2 x 3 `affine_grid` matrix to `size`."""
    batch = images.shape[0]
    grid = F.affine_grid(theta.to(images).expand(batch, 2, 3), [batch, images.shape[1], size, size], align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
