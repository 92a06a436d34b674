"""Similarity fits and the in-model warp between chip geometries."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from robustbench_face.geometry import (
    CANONICAL_TEMPLATE,
    DLIB_TEMPLATE_150,
    apply_transform,
    estimate_affine,
    estimate_similarity,
    invert_transform,
    sampling_grid_theta,
    warp_batch,
)


def test_similarity_recovers_known_transform() -> None:
    angle, scale, shift = 0.3, 1.7, np.array([12.0, -4.0])
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    source = CANONICAL_TEMPLATE
    target = scale * source @ rotation.T + shift
    matrix = estimate_similarity(source, target)
    np.testing.assert_allclose(apply_transform(matrix, source), target, atol=1e-9)
    np.testing.assert_allclose(apply_transform(invert_transform(matrix), target), source, atol=1e-9)


def test_similarity_rejects_coincident_points() -> None:
    with pytest.raises(ValueError, match="coincide"):
        estimate_similarity(np.zeros((5, 2)), CANONICAL_TEMPLATE)


def test_identity_theta_keeps_image() -> None:
    theta = sampling_grid_theta(CANONICAL_TEMPLATE, 160, CANONICAL_TEMPLATE, 160)
    torch.testing.assert_close(theta, torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]), atol=1e-6, rtol=0)
    image = torch.rand(1, 3, 160, 160)
    torch.testing.assert_close(warp_batch(image, theta, 160), image, atol=1e-4, rtol=0)


def test_warp_moves_a_landmark_to_its_template_position() -> None:
    # A bright dot on the canonical left eye must land on dlib's left eye.
    image = torch.zeros(1, 1, 160, 160)
    x, y = np.round(CANONICAL_TEMPLATE[0]).astype(int)
    image[0, 0, y - 1 : y + 2, x - 1 : x + 2] = 1.0
    theta = sampling_grid_theta(CANONICAL_TEMPLATE, 160, DLIB_TEMPLATE_150, 150)
    chip = warp_batch(image, theta, 150)[0, 0]
    peak_y, peak_x = np.unravel_index(int(chip.argmax()), chip.shape)
    expected = apply_transform(estimate_similarity(CANONICAL_TEMPLATE, DLIB_TEMPLATE_150), [[x, y]])[0]
    assert abs(peak_x - expected[0]) <= 1
    assert abs(peak_y - expected[1]) <= 1


def test_affine_fit_recovers_anisotropic_scaling() -> None:
    target = CANONICAL_TEMPLATE * np.array([1.2, 0.8]) + np.array([3.0, 5.0])
    matrix = estimate_affine(CANONICAL_TEMPLATE, target)
    np.testing.assert_allclose(apply_transform(matrix, CANONICAL_TEMPLATE), target, atol=1e-9)
