"""Face regions (eyes, nose, mouth, rest) from the five aligned landmarks.

Each region is an ellipse placed and sized from the landmarks: centres
follow the landmarks, sizes scale with the inter-ocular distance, and the
ellipses turn with the line through the eyes. The regions are made
disjoint by priority: eyes first, then nose, then mouth, and "rest" is the
face ellipse minus the other three. Hard masks are therefore disjoint,
and soft masks sum to at most 1 at every pixel.

Landmarks are (x, y) pixel coordinates in the order of
`geometry.CANONICAL_TEMPLATE`: left eye, right eye, nose tip, left mouth
corner, right mouth corner. Pixel i has its centre at coordinate i.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

REGION_NAMES = ("eyes", "nose", "mouth", "rest")


@dataclass(frozen=True)
class RegionShapes:
    """Sizes and offsets of the region ellipses, in units of the inter-ocular distance.

    "Horizontal" and "vertical" are along and across the eye line. The
    defaults put on the canonical 160-pixel template (inter-ocular distance
    about 57 pixels) give eye boxes that include the eyebrows, a nose from
    between the eyes to below the nostrils, a mouth with the lips and a
    face ellipse from the hairline to the chin.
    """

    # Each eye ellipse, centred this far above its eye landmark so that it covers the eyebrow.
    eye_half_width: float = 0.42
    eye_half_height: float = 0.30
    eye_raise: float = 0.10
    # The nose ellipse runs from `nose_top` above the eye line to `nose_bottom` below the nose tip.
    nose_half_width: float = 0.30
    nose_top: float = 0.05
    nose_bottom: float = 0.18
    # The mouth ellipse extends `mouth_margin` beyond each corner and `mouth_half_height` above and below them.
    mouth_margin: float = 0.18
    mouth_half_height: float = 0.28
    # The face ellipse is centred between the eye line and the mouth, `face_drop` lower.
    face_half_width: float = 0.98
    face_half_height: float = 1.38
    face_drop: float = 0.12
    # Width of the soft edge in pixels of the mask; 0 gives hard 0/1 masks.
    softness: float = 0.0

    def __post_init__(self) -> None:
        sizes = {
            "eye_half_width": self.eye_half_width,
            "eye_half_height": self.eye_half_height,
            "nose_half_width": self.nose_half_width,
            "mouth_half_height": self.mouth_half_height,
            "face_half_width": self.face_half_width,
            "face_half_height": self.face_half_height,
        }
        for name, value in sizes.items():
            if value <= 0:
                raise ValueError(f"RegionShapes.{name} must be positive, got {value}")
        if self.softness < 0:
            raise ValueError(f"RegionShapes.softness must be 0 or more pixels, got {self.softness}")


def scale_landmarks(landmarks: np.ndarray | torch.Tensor, from_size: int, to_size: int) -> torch.Tensor:
    """Map landmarks from a `from_size` square image to the same image resized to `to_size`.

    Pixel centres sit at integer coordinates, so the map is
    `(x + 0.5) * to_size / from_size - 0.5`, the one bilinear resizing uses.
    """
    points = torch.as_tensor(np.asarray(landmarks), dtype=torch.float32)
    return (points + 0.5) * (to_size / from_size) - 0.5


def flip_landmarks(landmarks: torch.Tensor, size: int) -> torch.Tensor:
    """Mirror landmarks (N, 5, 2) of a `size` image left to right.

    The mirrored left eye becomes the right eye and the mirrored left mouth
    corner the right one, so those pairs swap places to keep the template order.
    """
    flipped = landmarks.clone()
    flipped[..., 0] = (size - 1) - flipped[..., 0]
    return flipped[:, [1, 0, 2, 4, 3]]


def _ellipse(
    xs: torch.Tensor,
    ys: torch.Tensor,
    centre: torch.Tensor,
    half_axes: torch.Tensor,
    axis_u: torch.Tensor,
    softness: float,
) -> torch.Tensor:
    """Membership (N, H, W) of pixels in ellipses with one centre, half-axes and orientation per face.

    `axis_u` (N, 2) is the unit vector of the first half-axis. With a soft
    edge the membership falls from 1 to 0 over about `softness` pixels.
    """
    dx = xs[None] - centre[:, 0, None, None]
    dy = ys[None] - centre[:, 1, None, None]
    u = dx * axis_u[:, 0, None, None] + dy * axis_u[:, 1, None, None]
    v = -dx * axis_u[:, 1, None, None] + dy * axis_u[:, 0, None, None]
    a = half_axes[:, 0, None, None]
    b = half_axes[:, 1, None, None]
    radius = torch.sqrt((u / a) ** 2 + (v / b) ** 2)
    if softness == 0:
        return (radius <= 1.0).float()
    # Distance outside the ellipse, in pixels, measured roughly along the smaller half-axis.
    outside = (radius - 1.0) * torch.minimum(a, b)
    return torch.sigmoid(-outside * (4.0 / softness))


def region_masks(
    landmarks: np.ndarray | torch.Tensor, size: int, shapes: RegionShapes | None = None
) -> dict[str, torch.Tensor]:
    """Build the region masks (N, 1, size, size) of faces with landmarks (N, 5, 2) in pixels of a `size` image.

    Returns a dict keyed by `REGION_NAMES`, float in [0, 1]. The regions
    are disjoint (hard masks) or sum to at most 1 (soft masks), and
    together they make up the face ellipse.
    """
    shapes = shapes or RegionShapes()
    points = torch.as_tensor(np.asarray(landmarks) if not torch.is_tensor(landmarks) else landmarks, dtype=torch.float32)
    if points.ndim != 3 or tuple(points.shape[1:]) != (5, 2):
        raise ValueError(f"expected landmarks of shape (N, 5, 2), got {tuple(points.shape)}")

    left_eye, right_eye, nose, mouth_left, mouth_right = points.unbind(dim=1)
    eye_line = right_eye - left_eye
    interocular = torch.linalg.vector_norm(eye_line, dim=1).clamp_min(1e-3)
    axis_u = eye_line / interocular[:, None]
    # Image y grows downwards, so "down the face" is the eye line turned by +90 degrees.
    axis_down = torch.stack([-axis_u[:, 1], axis_u[:, 0]], dim=1)
    d = interocular[:, None]

    coords = torch.arange(size, dtype=torch.float32)
    ys, xs = torch.meshgrid(coords, coords, indexing="ij")
    soft = shapes.softness

    eye_axes = torch.cat([d * shapes.eye_half_width, d * shapes.eye_half_height], dim=1)
    eyes = torch.maximum(
        _ellipse(xs, ys, left_eye - d * shapes.eye_raise * axis_down, eye_axes, axis_u, soft),
        _ellipse(xs, ys, right_eye - d * shapes.eye_raise * axis_down, eye_axes, axis_u, soft),
    )

    # Project the nose tip onto the face's vertical axis to find the nose's extent below the eye line.
    eye_mid = (left_eye + right_eye) / 2
    nose_depth = ((nose - eye_mid) * axis_down).sum(dim=1, keepdim=True)
    nose_top = -d * shapes.nose_top
    nose_bottom = nose_depth + d * shapes.nose_bottom
    nose_centre_line = eye_mid + ((nose - eye_mid) * axis_u).sum(dim=1, keepdim=True) * axis_u
    nose_centre = nose_centre_line + (nose_top + nose_bottom) / 2 * axis_down
    nose_axes = torch.cat([d * shapes.nose_half_width, (nose_bottom - nose_top) / 2], dim=1)
    nose_region = _ellipse(xs, ys, nose_centre, nose_axes, axis_u, soft)

    mouth_centre = (mouth_left + mouth_right) / 2
    mouth_width = torch.linalg.vector_norm(mouth_right - mouth_left, dim=1, keepdim=True)
    mouth_axes = torch.cat([mouth_width / 2 + d * shapes.mouth_margin, d * shapes.mouth_half_height], dim=1)
    mouth = _ellipse(xs, ys, mouth_centre, mouth_axes, axis_u, soft)

    face_centre = (eye_mid + mouth_centre) / 2 + d * shapes.face_drop * axis_down
    face_axes = torch.cat([d * shapes.face_half_width, d * shapes.face_half_height], dim=1)
    face = _ellipse(xs, ys, face_centre, face_axes, axis_u, soft)

    # Each region takes its share of what the regions before it left of the
    # face, so the masks never overlap and always sum to the face mask.
    remaining = face
    masks: dict[str, torch.Tensor] = {}
    for name, shape in (("eyes", eyes), ("nose", nose_region), ("mouth", mouth)):
        masks[name] = shape * remaining
        remaining = remaining - masks[name]
    masks["rest"] = remaining
    return {name: mask[:, None] for name, mask in masks.items()}
