"""Fixtures for the on-demand speed benchmarks: real LFW pairs and a model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.conftest import cache_dir, data_root  # noqa: F401  (shared fixtures)

BENCH_PAIRS = 32


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--bench-models", default="dlib-resnet", help="Comma-separated models to benchmark.")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "model_name" in metafunc.fixturenames:
        names = metafunc.config.getoption("--bench-models").split(",")
        metafunc.parametrize("model_name", names, scope="module")


@pytest.fixture(scope="module")
def bench_batch(model_name: str, data_root: Path, cache_dir: Path):
    """32 fold-1 pairs (16 matched, 16 mismatched) as one batch, with fold-1 thresholds."""
    from robustbench_face.attacks.adapter import PairClassifier
    from robustbench_face.data.faces import load_faces
    from robustbench_face.data.lfw import locate_lfw
    from robustbench_face.data.pairs import parse_pairs, select_pairs
    from robustbench_face.models.registry import load_model
    from robustbench_face.sweep.clean import clean_result, embed_images

    torch.set_num_threads(torch.get_num_threads())
    lfw = locate_lfw(data_root)
    pairs = select_pairs(parse_pairs(lfw.pairs_file), folds=[1], per_fold=BENCH_PAIRS)
    relpaths = sorted({rel for pair in pairs for rel in (pair.probe, pair.reference)})
    faces = load_faces(lfw, relpaths, cache_dir, progress=False)
    model = load_model(model_name)
    embeddings = embed_images(model, faces, relpaths, batch_size=BENCH_PAIRS, device="cpu")
    clean = clean_result(model, pairs, embeddings)
    score = model.score_names[0]
    thresholds = torch.tensor([clean.thresholds[score][pair.fold] for pair in pairs], dtype=torch.float32)
    references = torch.stack([embeddings[pair.reference] for pair in pairs])
    classifier = PairClassifier(model)
    classifier.set_references(references, thresholds)
    return {
        "model": model,
        "classifier": classifier,
        "probes": faces.tensor([pair.probe for pair in pairs]),
        "labels": torch.tensor([pair.label for pair in pairs]),
        "references": references,
        "thresholds": thresholds,
        "pair_ids": [pair.pair_id for pair in pairs],
    }
