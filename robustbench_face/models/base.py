"""The pair-verification interface every model implements."""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Iterable
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from ..geometry import CANONICAL_TEMPLATE, CROP_SIZE, sampling_grid_theta, warp_batch

logger = logging.getLogger(__name__)

# With torch 2.14.1 on x86 CPUs, convolutions give each image bit-identical
# results in batches whose size is a multiple of 4, whatever the batch
# size, order or thread count. Batches of 1, 2, 3, 5, 6, 7 or 9 give
# slightly different results (measured on the dlib ResNet). Batches are
# padded to a multiple of this size so that results do not depend on how
# pairs are batched.
STABLE_BATCH = 4


class Verifier(nn.Module, ABC):
    """A face-verification model on canonical aligned crops.

    Inputs are batches (N, 3, 160, 160) of RGB faces aligned to
    `geometry.CANONICAL_TEMPLATE`, float in [0, 1]. Each model does its own
    warping, resizing and normalisation inside `embed`, so that attacks and
    their epsilons live in one pixel space for all models.

    Scores are dissimilarities: a pair is judged the same person when its
    score is below the threshold. `score_names` lists the scores `compare`
    returns; the first is the model's own decision, the others (if any)
    belong to its modules. Whole models have the single score "all".
    """

    name: ClassVar[str]
    input_size: ClassVar[int]
    # Five landmarks of the model's own chip geometry, in its input pixels.
    template: ClassVar[np.ndarray]
    # Fit a full affine map to the template instead of a similarity.
    template_affine: ClassVar[bool] = False
    score_names: ClassVar[tuple[str, ...]] = ("all",)

    def __init__(self) -> None:
        super().__init__()
        theta = sampling_grid_theta(
            CANONICAL_TEMPLATE, CROP_SIZE, self.template, self.input_size, affine=self.template_affine
        )
        self.register_buffer("chip_theta", theta, persistent=False)

    def to_chip(self, faces: torch.Tensor) -> torch.Tensor:
        """Warp canonical crops in [0, 1] to the model's chip geometry."""
        return warp_batch(faces, self.chip_theta, self.input_size)

    @abstractmethod
    def embed(self, faces: torch.Tensor) -> torch.Tensor:
        """Map canonical crops (N, 3, 160, 160) in [0, 1] to embeddings (N, D)."""

    def lfw_test_folds(self) -> tuple[int, ...] | None:
        """Return the LFW View 2 folds whose people the model never saw in training.

        None means the model did not train on LFW at all, so every fold is
        a test fold. A model trained on LFW (MSN) returns its held-out folds.
        """
        return None

    def embed_stable(self, faces: torch.Tensor) -> torch.Tensor:
        """Embed like `embed`, padding small batches so results do not depend on batch size."""
        count = faces.shape[0]
        missing = -count % STABLE_BATCH
        if count == 0 or missing == 0:
            return self.embed(faces)
        padding = faces[-1:].expand(missing, *faces.shape[1:])
        return self.embed(torch.cat([faces, padding]))[:count]

    def compare(self, probe: torch.Tensor, reference: torch.Tensor) -> dict[str, torch.Tensor]:
        """Score pairs of embeddings (N, D) row by row; lower means more alike.

        The default is the Euclidean distance under the name "all".
        """
        return {"all": torch.linalg.vector_norm(probe - reference, dim=1)}

    def forward(self, faces: torch.Tensor) -> torch.Tensor:
        return self.embed(faces)


def warn_if_trained_on(model: Verifier, folds: Iterable[int]) -> list[int]:
    """Log a warning when `folds` include folds whose people `model` trained on, and return those folds."""
    held_out = model.lfw_test_folds()
    if held_out is None:
        return []
    seen = sorted(set(folds) - set(held_out))
    if seen:
        if held_out:
            fix = "restrict it with --folds " + ",".join(map(str, held_out))
        else:
            fix = "use weights whose training record names a held-out fold, as `frb train msn` writes"
        logger.warning(
            "%s trained on the people of fold(s) %s, so its accuracy there is not a test result; %s",
            model.name,
            ",".join(map(str, seen)),
            fix,
        )
    return seen
