"""The bridge between a verifier and torchattacks' classifier contract."""

from __future__ import annotations

import torch
from torch import nn

from ..models.base import Verifier

# Class indices of the two logits.
DIFFERENT, SAME = 0, 1


class PairClassifier(nn.Module):
    """Two logits (different, same) for a batch of probes against their own references.

    torchattacks expects one `(N, C)` logits tensor for inputs in [0, 1].
    This module holds the references' embeddings and per-pair thresholds,
    so the attack only ever receives, and only ever changes, the probes. The
    logits are `(score - threshold, threshold - score) / 2`: the predicted
    class is "same" exactly when the score is below the threshold, as in
    the verifier's own decision (a tie counts as "different" both ways).
    Attacking the true label therefore means dodging for matched pairs and
    impersonation for mismatched ones.

    Call `set_references` before each batch. A probe batch whose size does
    not match the references raises an error instead of silently comparing
    every probe with the first reference, which is what a naive wrapper
    does under torchattacks' DeepFool (it calls the model one image at a
    time).
    """

    def __init__(self, verifier: Verifier, score_name: str | None = None) -> None:
        super().__init__()
        # Registered as a submodule so torchattacks finds its parameters
        # (and therefore its device) and can switch it to eval mode.
        self.verifier = verifier
        self.score_name = score_name or verifier.score_names[0]
        if self.score_name not in verifier.score_names:
            raise ValueError(f"{verifier.name} has no score {self.score_name!r}; choose from {verifier.score_names}")
        self.register_buffer("reference_embeddings", torch.empty(0), persistent=False)
        self.register_buffer("thresholds", torch.empty(0), persistent=False)
        self.eval()

    def set_references(self, reference_embeddings: torch.Tensor, thresholds: torch.Tensor) -> None:
        """Fix the references (as embeddings) and thresholds for the next probes."""
        if reference_embeddings.shape[0] != thresholds.shape[0]:
            raise ValueError(
                f"got {reference_embeddings.shape[0]} references but {thresholds.shape[0]} thresholds"
            )
        device = self.reference_embeddings.device
        self.reference_embeddings = reference_embeddings.detach().to(device)
        self.thresholds = thresholds.detach().to(device=device, dtype=torch.float32)

    def all_scores(self, probes: torch.Tensor) -> dict[str, torch.Tensor]:
        """Score each probe against its own reference, under every score of the verifier."""
        if probes.shape[0] != self.reference_embeddings.shape[0]:
            raise ValueError(
                f"got {probes.shape[0]} probes for {self.reference_embeddings.shape[0]} references; "
                "attack each probe with its own reference (DeepFool: one pair at a time)"
            )
        probe_embeddings = self.verifier.embed_stable(probes)
        return self.verifier.compare(probe_embeddings, self.reference_embeddings)

    def scores(self, probes: torch.Tensor) -> torch.Tensor:
        """Score each probe against its own reference, under the attacked score."""
        return self.all_scores(probes)[self.score_name]

    def logits_and_scores(self, probes: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Return the logits and every score of the verifier from one forward pass."""
        scores = self.all_scores(probes)
        margin = (self.thresholds - scores[self.score_name]) / 2
        return torch.stack([-margin, margin], dim=1), scores

    def forward(self, probes: torch.Tensor) -> torch.Tensor:
        return self.logits_and_scores(probes)[0]
