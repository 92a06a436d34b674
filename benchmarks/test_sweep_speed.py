"""Sweep cost against torchattacks' naive loops and against the floor.

Run on demand (not part of the default test run):

    python -m pytest benchmarks --benchmark-json=/tmp/bench.json
    python benchmarks/report.py /tmp/bench.json > docs/benchmarks.md

Every benchmark scores each sweep point, as a run does, so the times
compare whole sweeps: with one forward pass per point, except that
DeepFool's sweep takes its scores from the forward passes of its steps. The floor is one forward plus
backward pass per gradient step and one forward pass per sweep point.
"""

from __future__ import annotations

import pytest
import torch
import torchattacks

from robustbench_face.attacks.budgets import AttackSpec
from robustbench_face.attacks.sweeps import run_sweep
from robustbench_face.models import base

EPS = tuple(round(0.01 * i, 10) for i in range(11))
STEPS = tuple(range(1, 11))
DEEPFOOL_PAIRS = 8  # torchattacks' DeepFool is slow; time it on fewer pairs
ROUNDS = 3


def score(batch, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return batch["classifier"].scores(images)


def forward_backward(batch, rows=slice(None)) -> None:
    images = batch["probes"][rows].clone().requires_grad_(True)
    classifier = batch["classifier"]
    classifier.set_references(batch["references"][rows], batch["thresholds"][rows])
    loss = torch.nn.functional.cross_entropy(classifier(images), batch["labels"][rows], reduction="sum")
    torch.autograd.grad(loss, images)
    classifier.set_references(batch["references"], batch["thresholds"])


def our_sweep(batch, spec: AttackSpec, rows=slice(None)) -> None:
    classifier = batch["classifier"]
    ids = batch["pair_ids"][rows]
    for point in run_sweep(
        spec, classifier, batch["probes"][rows], batch["labels"][rows], batch["references"][rows],
        batch["thresholds"][rows], ids, seed=0,
    ):
        if point.scores is None:  # DeepFool's sweep scores its budgets itself
            score_rows(batch, point.images, rows)
    classifier.set_references(batch["references"], batch["thresholds"])


def score_rows(batch, images: torch.Tensor, rows) -> None:
    classifier = batch["classifier"]
    classifier.set_references(batch["references"][rows], batch["thresholds"][rows])
    with torch.no_grad():
        classifier.scores(images)


def run(benchmark, function, *args) -> None:
    benchmark.pedantic(function, args=args, rounds=ROUNDS, iterations=1, warmup_rounds=1)


# --- The floor ---------------------------------------------------------------------


@pytest.mark.benchmark(group="floor")
def test_forward(benchmark, bench_batch) -> None:
    run(benchmark, score, bench_batch, bench_batch["probes"])


@pytest.mark.benchmark(group="floor")
def test_forward_backward(benchmark, bench_batch) -> None:
    run(benchmark, forward_backward, bench_batch)


# --- FGSM ----------------------------------------------------------------------------


@pytest.mark.benchmark(group="fgsm")
def test_fgsm_sweep(benchmark, bench_batch) -> None:
    run(benchmark, our_sweep, bench_batch, AttackSpec("fgsm", EPS))


def torchattacks_fgsm_loop(batch, eps_values) -> None:
    for eps in eps_values:
        score(batch, torchattacks.FGSM(batch["classifier"], eps=eps)(batch["probes"], batch["labels"]))


@pytest.mark.benchmark(group="fgsm")
def test_fgsm_torchattacks_loop(benchmark, bench_batch) -> None:
    run(benchmark, torchattacks_fgsm_loop, bench_batch, EPS)


@pytest.mark.benchmark(group="fgsm")
def test_fgsm_torchattacks_largest(benchmark, bench_batch) -> None:
    run(benchmark, torchattacks_fgsm_loop, bench_batch, EPS[-1:])


# --- FFGSM ---------------------------------------------------------------------------


@pytest.mark.benchmark(group="ffgsm")
def test_ffgsm_sweep(benchmark, bench_batch) -> None:
    run(benchmark, our_sweep, bench_batch, AttackSpec("ffgsm", EPS))


def torchattacks_ffgsm_loop(batch, eps_values) -> None:
    for eps in eps_values:
        attack = torchattacks.FFGSM(batch["classifier"], eps=eps, alpha=10 / 255)
        score(batch, attack(batch["probes"], batch["labels"]))


@pytest.mark.benchmark(group="ffgsm")
def test_ffgsm_torchattacks_loop(benchmark, bench_batch) -> None:
    run(benchmark, torchattacks_ffgsm_loop, bench_batch, EPS)


@pytest.mark.benchmark(group="ffgsm")
def test_ffgsm_torchattacks_largest(benchmark, bench_batch) -> None:
    run(benchmark, torchattacks_ffgsm_loop, bench_batch, EPS[-1:])


# --- DeepFool ------------------------------------------------------------------------


@pytest.mark.benchmark(group="deepfool")
def test_deepfool_sweep(benchmark, bench_batch) -> None:
    run(benchmark, our_sweep, bench_batch, AttackSpec("deepfool", STEPS), slice(0, DEEPFOOL_PAIRS))


def torchattacks_deepfool(batch, steps: int) -> None:
    # torchattacks calls the model one image at a time, so each pair runs
    # alone against its own reference.
    classifier = batch["classifier"]
    for index in range(DEEPFOOL_PAIRS):
        rows = slice(index, index + 1)
        classifier.set_references(batch["references"][rows], batch["thresholds"][rows])
        adv = torchattacks.DeepFool(classifier, steps=steps, overshoot=0.02)(batch["probes"][rows], batch["labels"][rows])
        with torch.no_grad():
            classifier.scores(adv)
    classifier.set_references(batch["references"], batch["thresholds"])


@pytest.mark.benchmark(group="deepfool")
def test_deepfool_torchattacks_largest(benchmark, bench_batch, monkeypatch: pytest.MonkeyPatch) -> None:
    # Without padding: batches of one then cost what torchattacks' own loop costs.
    monkeypatch.setattr(base, "STABLE_BATCH", 1)
    run(benchmark, torchattacks_deepfool, bench_batch, STEPS[-1])


@pytest.mark.benchmark(group="deepfool")
def test_deepfool_forward_backward(benchmark, bench_batch) -> None:
    run(benchmark, forward_backward, bench_batch, slice(0, DEEPFOOL_PAIRS))


@pytest.mark.benchmark(group="deepfool")
def test_deepfool_forward(benchmark, bench_batch) -> None:
    run(benchmark, score_rows, bench_batch, bench_batch["probes"][:DEEPFOOL_PAIRS], slice(0, DEEPFOOL_PAIRS))


def torchattacks_style_step(batch) -> None:
    # What torchattacks' DeepFool pays per pair and step: a forward pass on
    # one image and one backward pass per class for the Jacobian.
    classifier = batch["classifier"]
    for index in range(DEEPFOOL_PAIRS):
        rows = slice(index, index + 1)
        classifier.set_references(batch["references"][rows], batch["thresholds"][rows])
        image = batch["probes"][rows].clone().requires_grad_(True)
        logits = classifier(image)[0]
        for value in logits:
            torch.autograd.grad(value, image, retain_graph=True)
    classifier.set_references(batch["references"], batch["thresholds"])


@pytest.mark.benchmark(group="deepfool")
def test_deepfool_single_image_step(benchmark, bench_batch, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(base, "STABLE_BATCH", 1)
    run(benchmark, torchattacks_style_step, bench_batch)
