"""Running one attack over a sweep of budgets on a batch of pairs.

Every function here perturbs only the probes: the references enter the
`PairClassifier` as fixed embeddings and never reach an attack.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import numpy as np
import torch
import torchattacks
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


def run_sweep(
    spec: AttackSpec,
    classifier: PairClassifier,
    probes: torch.Tensor,
    labels: torch.Tensor,
    reference_embeddings: torch.Tensor,
    thresholds: torch.Tensor,
    pair_ids: list[int],
    seed: int,
) -> Iterator[tuple[float, torch.Tensor, float]]:
    """Yield `(budget, adversarial probes, seconds)` for every budget of `spec`.

    `seconds` is the time spent producing that budget's images.
    """
    if spec.attack == "deepfool":
        yield from _deepfool_sweep(spec, classifier, probes, labels, reference_embeddings, thresholds)
        return

    classifier.set_references(reference_embeddings, thresholds)
    generators = [pair_generator(seed, pair_id) for pair_id in pair_ids] if spec.attack == "ffgsm" else []
    for eps in spec.values:
        started = time.perf_counter()
        if spec.attack == "fgsm":
            adv = torchattacks.FGSM(classifier, eps=eps)(probes, labels)
        else:
            # Re-seed per budget so every eps starts from the same uniform draws.
            generators = [pair_generator(seed, pair_id) for pair_id in pair_ids]
            adv = ffgsm(classifier, probes, labels, eps, spec.alpha, generators)
        yield eps, adv, time.perf_counter() - started


def _deepfool_sweep(
    spec: AttackSpec,
    classifier: PairClassifier,
    probes: torch.Tensor,
    labels: torch.Tensor,
    reference_embeddings: torch.Tensor,
    thresholds: torch.Tensor,
) -> Iterator[tuple[float, torch.Tensor, float]]:
    """DeepFool via torchattacks, one pair at a time, reusing steps across budgets.

    torchattacks' DeepFool calls the model on one image at a time, so the
    classifier is given that pair's reference alone. In torchattacks 3.5.1,
    running k steps equals running one step k times: each step adds
    `(1 + overshoot) * delta` to the current image, and a flipped image
    comes back unchanged. So the sweep takes single steps and records the
    image after each budget instead of restarting for every budget.
    """
    attack = torchattacks.DeepFool(classifier, steps=1, overshoot=spec.overshoot)
    current = probes.clone()
    done_steps = 0
    for steps in spec.values:
        started = time.perf_counter()
        for _ in range(int(steps) - done_steps):
            for index in range(len(current)):
                classifier.set_references(reference_embeddings[index : index + 1], thresholds[index : index + 1])
                current[index : index + 1] = attack(current[index : index + 1], labels[index : index + 1])
        done_steps = int(steps)
        yield steps, current.clone(), time.perf_counter() - started
