"""Running one attack over a sweep of budgets on a batch of pairs.

Every function here perturbs only the probes: the references enter the
`PairClassifier` as fixed embeddings and never reach an attack.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from .adapter import PairClassifier
from .budgets import AttackSpec


def pair_generator(seed: int, pair_id: int) -> torch.Generator:
    """Return a CPU generator seeded by the run seed and the pair id.

    Random starts drawn from it depend on neither batch size, order nor
    worker count.
    """
    state = np.random.SeedSequence([seed, pair_id]).generate_state(1, dtype=np.uint64)[0]
    generator = torch.Generator(device="cpu")
    generator.manual_seed(int(state) & 0x7FFF_FFFF_FFFF_FFFF)
    return generator


def ffgsm(
    classifier: PairClassifier,
    probes: torch.Tensor,
    labels: torch.Tensor,
    eps: float,
    alpha: float,
    generators: list[torch.Generator],
) -> torch.Tensor:
    """FFGSM ("Fast is better than free", Wong et al. 2020) with per-pair random starts.

    The same steps as torchattacks 3.5.1's FFGSM: a start drawn as
    `randn_like(x).uniform_(-eps, eps)`, one step of `alpha * sign(grad)`,
    projection to the eps-ball (L-infinity, pixel scale [0, 1]) and a clamp
    to [0, 1]. The only difference is where the start comes from: each
    probe draws it from its own generator instead of the global RNG, so a
    probe's result does not depend on its batch.
    """
    starts = []
    for generator in generators:
        noise = torch.randn(probes.shape[1:], generator=generator)
        starts.append(noise.uniform_(-eps, eps, generator=generator))
    start = torch.stack(starts).to(probes)

    adv = torch.clamp(probes + start, 0, 1).detach().requires_grad_(True)
    # A summed loss keeps each probe's gradient independent of the batch
    # size; torchattacks averages, which scales every gradient by 1/N
    # and leaves their signs unchanged.
    loss = nn.functional.cross_entropy(classifier(adv), labels, reduction="sum")
    grad = torch.autograd.grad(loss, adv)[0]
    adv = adv.detach() + alpha * grad.sign()
    delta = torch.clamp(adv - probes, min=-eps, max=eps)
    return torch.clamp(probes + delta, 0, 1).detach()


class SweepPoint(NamedTuple):
    """One budget of a sweep: the adversarial probes and, where the attack computed them anyway, their scores."""

    value: float
    images: torch.Tensor
    seconds: float  # time spent producing this budget's images
    # Every score of the verifier for `images`, or None when the caller must compute them.
    scores: dict[str, torch.Tensor] | None = None


def fgsm_sweep(
    classifier: PairClassifier, probes: torch.Tensor, labels: torch.Tensor, eps_values: tuple[float, ...]
) -> Iterator[SweepPoint]:
    """FGSM (Goodfellow et al. 2015) at every eps from one gradient.

    FGSM's image is `clamp(x + eps * sign(grad), 0, 1)` with the gradient
    taken at the clean probe, so the sign does not depend on eps and one
    backward pass serves the whole sweep.

    torchattacks 3.5.1 averages the cross-entropy over the batch; this sums
    it. Both give the same signs, but scaling by 1/N rounds differently for
    each N, which can flip the sign of a gradient element within rounding
    of zero. The sum keeps every pair's image independent of the batch. For
    a batch whose size is a power of two, the scaling is exact and the
    images equal `torchattacks.FGSM(model, eps)` bit for bit.
    """
    started = time.perf_counter()
    images = probes.clone().detach().requires_grad_(True)
    loss = nn.functional.cross_entropy(classifier(images), labels, reduction="sum")
    sign = torch.autograd.grad(loss, images)[0].sign()
    # The one gradient is shared, so its time is split evenly over the sweep.
    gradient_seconds = (time.perf_counter() - started) / len(eps_values)
    for eps in eps_values:
        started = time.perf_counter()
        adv = torch.clamp(probes + eps * sign, min=0, max=1).detach()
        yield SweepPoint(eps, adv, gradient_seconds + time.perf_counter() - started)


def deepfool_sweep(
    classifier: PairClassifier,
    probes: torch.Tensor,
    labels: torch.Tensor,
    reference_embeddings: torch.Tensor,
    thresholds: torch.Tensor,
    step_values: tuple[int, ...],
    overshoot: float,
) -> Iterator[SweepPoint]:
    """DeepFool (Moosavi-Dezfooli et al. 2016, L2) for a batch, recording every budget.

    For the two-logit pair head this takes the same steps as torchattacks
    3.5.1's DeepFool, which handles one image at a time and builds the
    Jacobian with a backward pass per class. Here one backward pass of
    `f_other - f_label` per step serves the whole batch, because with two
    classes that difference is the only direction DeepFool uses. As in
    torchattacks, each step first checks the current prediction: a pair
    already misclassified stops and keeps its image. Otherwise the step
    adds `(1 + overshoot) * |f'| * w' / ||w'||^2` and clamps to [0, 1].

    Running to the largest budget once yields the image after each budget.
    The forward pass that starts step k + 1 scores the images left by step
    k, so each budget comes with its scores and needs no forward pass of
    its own. A stopped pair keeps the scores of its last forward pass,
    because its image no longer changes. The whole sweep thus costs S + 1
    forward and S backward passes over the pairs still active.
    """
    budgets = sorted({int(value) for value in step_values})
    last = budgets[-1]
    adv = probes.clone().detach()
    active = torch.ones(len(probes), dtype=torch.bool, device=probes.device)
    scores: dict[str, torch.Tensor] = {}
    started = time.perf_counter()
    for done in range(last + 1):
        rows = active.nonzero().flatten()
        stepping = done < last
        if len(rows) > 0:
            classifier.set_references(reference_embeddings[rows], thresholds[rows])
            with torch.set_grad_enabled(stepping):
                images = adv[rows].clone().requires_grad_(stepping)
                logits, row_scores = classifier.logits_and_scores(images)
            for name, values in row_scores.items():
                if name not in scores:
                    scores[name] = torch.empty(len(probes), dtype=values.dtype, device=values.device)
                scores[name][rows] = values.detach()
            still_correct = logits.argmax(dim=1) == labels[rows]
        if done in budgets:
            yield SweepPoint(done, adv.clone(), time.perf_counter() - started, {k: v.clone() for k, v in scores.items()})
            started = time.perf_counter()
        if len(rows) > 0:
            if stepping:
                adv[rows] = _deepfool_step(images, logits, labels[rows], still_correct, overshoot)
            active[rows[~still_correct]] = False


def _deepfool_step(
    images: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor, still_correct: torch.Tensor, overshoot: float
) -> torch.Tensor:
    """Take one DeepFool step from `images`, whose forward pass gave `logits`, and return the new images."""
    rows = torch.arange(len(labels), device=labels.device)
    difference = logits[rows, 1 - labels] - logits[rows, labels]
    gradient = torch.autograd.grad(difference.sum(), images)[0]
    norms = torch.linalg.vector_norm(gradient.flatten(1), dim=1)
    # A zero gradient would give NaN (as in torchattacks); such a pair stays put.
    safe_norms = torch.where(norms > 0, norms, torch.ones_like(norms))
    scale = torch.where(norms > 0, difference.detach().abs() / safe_norms**2, torch.zeros_like(norms))
    step = (1 + overshoot) * scale.view(-1, 1, 1, 1) * gradient
    stepped = torch.clamp(images.detach() + step, min=0, max=1)
    # A pair that is already misclassified keeps its image, as in torchattacks.
    return torch.where(still_correct.view(-1, 1, 1, 1), stepped, images.detach())


def run_sweep(
    spec: AttackSpec,
    classifier: PairClassifier,
    probes: torch.Tensor,
    labels: torch.Tensor,
    reference_embeddings: torch.Tensor,
    thresholds: torch.Tensor,
    pair_ids: list[int],
    seed: int,
) -> Iterator[SweepPoint]:
    """Yield a `SweepPoint` for every budget of `spec`."""
    if spec.attack == "deepfool":
        yield from deepfool_sweep(
            classifier, probes, labels, reference_embeddings, thresholds, spec.values, spec.overshoot
        )
        return

    classifier.set_references(reference_embeddings, thresholds)
    if spec.attack == "fgsm":
        yield from fgsm_sweep(classifier, probes, labels, spec.values)
        return

    for eps in spec.values:
        started = time.perf_counter()
        # Fresh generators per budget, so every eps starts from the same draws.
        generators = [pair_generator(seed, pair_id) for pair_id in pair_ids]
        adv = ffgsm(classifier, probes, labels, eps, spec.alpha, generators)
        yield SweepPoint(eps, adv, time.perf_counter() - started)
