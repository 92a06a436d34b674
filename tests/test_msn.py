"""The Modular Siamese Network: region masks, the network, training phases and the shipped checkpoint."""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from robustbench_face.cli_train import train
from robustbench_face.data.faces import load_faces
from robustbench_face.data.lfw import LFW, locate_lfw
from robustbench_face.data.pairs import parse_pairs, select_pairs
from robustbench_face.errors import FrbError
from robustbench_face.models.base import warn_if_trained_on
from robustbench_face.models.folds import load_entry, weights_by_fold
from robustbench_face.models.msn.network import DEFAULT_WEIGHTS, MSN, MSNArchitecture
from robustbench_face.models.msn.regions import REGION_NAMES, RegionShapes, flip_landmarks, region_masks
from robustbench_face.models.msn.train import (
    MSNHyperparameters,
    TrainingState,
    load_face_set,
    read_people,
    train_fold,
    train_msn,
)

# The landmarks each region must contain, by index in the five-point template.
REGION_LANDMARKS = {"eyes": (0, 1), "nose": (2,), "mouth": (3, 4)}

TINY = MSNHyperparameters(
    seed=3,
    architecture=MSNArchitecture(channels=(8, 16, 32, 32), latent_dim=32, head_widths=(32, 32, 32), embedding_dim=16),
    ae_epochs=3,
    ae_batch_size=16,
    head_epochs=3,
    head_steps_per_epoch=8,
    identities_per_batch=4,
    images_per_identity=3,
    decision_epochs=3,
    pairs_per_epoch=256,
    decision_batch_size=64,
    decision_lr=1e-2,
)


@pytest.fixture(scope="module")
def tiny_faces(data_root: Path, cache_dir: Path):
    """The first six fold-1 people with three or more images, resized for the tiny network."""
    lfw = locate_lfw(data_root)
    people = [person for person in read_people(lfw.root / "people.txt")[0] if person[1] >= 3][:6]
    return load_face_set(lfw, people, cache_dir, TINY.architecture.image_size, progress=False)


def _loss_by_epoch(state: TrainingState, phase: str, region: str) -> list[float]:
    return [row["loss"] for row in state.history if row["phase"] == phase and row["region"] == region]


# --- Region masks -------------------------------------------------------------------------


def test_masks_cover_landmarks_on_lfw(fold1_faces):
    _, faces = fold1_faces
    masks = region_masks(faces.landmarks, 160)
    for region, indices in REGION_LANDMARKS.items():
        for face in range(len(faces.relpaths)):
            for index in indices:
                x, y = np.rint(faces.landmarks[face, index]).astype(int)
                assert masks[region][face, 0, y, x] == 1.0, f"{faces.relpaths[face]}: landmark {index} not in {region}"


def test_hard_masks_do_not_overlap(fold1_faces):
    _, faces = fold1_faces
    masks = region_masks(faces.landmarks, 160)
    for first in REGION_NAMES:
        assert set(torch.unique(masks[first]).tolist()) <= {0.0, 1.0}
        for second in REGION_NAMES:
            if first < second:
                assert float((masks[first] * masks[second]).sum()) == 0.0, f"{first} overlaps {second}"
    for region in REGION_NAMES:
        assert float(masks[region].sum(dim=(1, 2, 3)).min()) > 50, f"{region} is empty on some face"


def test_soft_masks_sum_to_at_most_one(fold1_faces):
    _, faces = fold1_faces
    masks = region_masks(faces.landmarks, 160, RegionShapes(softness=2.0))
    total = sum(masks.values())
    assert float(total.max()) <= 1.0 + 1e-6
    assert all(float(mask.min()) >= 0.0 for mask in masks.values())


def test_flipped_landmarks_keep_template_order():
    landmarks = torch.tensor([[[10.0, 5.0], [50.0, 6.0], [30.0, 30.0], [15.0, 45.0], [45.0, 46.0]]])
    flipped = flip_landmarks(landmarks, 64)
    assert flipped[0, 0, 0] < flipped[0, 1, 0]  # left eye still left of the right eye
    assert flipped[0, 3, 0] < flipped[0, 4, 0]
    assert torch.equal(flip_landmarks(flipped, 64), landmarks)


def test_masks_reject_wrong_landmark_shape():
    with pytest.raises(ValueError, match=r"\(N, 5, 2\)"):
        region_masks(np.zeros((2, 4, 2)), 64)


# --- The network -------------------------------------------------------------------------------


def test_msn_shapes_and_scores():
    torch.manual_seed(0)
    model = MSN()
    faces = torch.rand(3, 3, 160, 160)
    embeddings = model.embed(faces)
    assert embeddings.shape == (3, 4 * model.arch.embedding_dim)
    scores = model.compare(embeddings, embeddings.flip(0))
    assert tuple(scores) == MSN.score_names
    for name, value in scores.items():
        assert value.shape == (3,), name
    assert float(scores["msn"].detach().min()) >= 0.0
    assert float(scores["msn"].detach().max()) <= 1.0
    reconstructions = model.reconstruct(faces)
    assert set(reconstructions) == set(REGION_NAMES)
    assert reconstructions["eyes"].shape == (3, 3, 64, 64)


@pytest.mark.parametrize("score", MSN.score_names)
def test_msn_gradients_reach_input(score):
    torch.manual_seed(0)
    model = MSN().eval().requires_grad_(False)
    probe = torch.rand(2, 3, 160, 160, requires_grad=True)
    reference = model.embed(torch.rand(2, 3, 160, 160))
    model.compare(model.embed(probe), reference)[score].sum().backward()
    assert probe.grad is not None
    assert probe.grad.shape == probe.shape
    assert float(probe.grad.abs().sum()) > 0


def test_msn_rejects_wrong_input_size():
    with pytest.raises(ValueError, match="160"):
        MSN().embed(torch.rand(1, 3, 64, 64))


# --- Training ---------------------------------------------------------------------------------


def test_tiny_training_lowers_losses(tiny_faces, tmp_path):
    model, state = train_msn(tiny_faces, TINY, tmp_path / "state.pt", tmp_path / "losses.csv", progress=False)
    for region in REGION_NAMES:
        ae = _loss_by_epoch(state, "autoencoder", region)
        assert len(ae) == TINY.ae_epochs
        assert ae[-1] < ae[0], f"autoencoder {region}: {ae}"
        head = _loss_by_epoch(state, "head", region)
        assert len(head) == TINY.head_epochs
        assert head[-1] < head[0], f"head {region}: {head}"
    decision = _loss_by_epoch(state, "decision", "all")
    assert len(decision) == TINY.decision_epochs
    assert decision[-1] < decision[0], f"decision: {decision}"
    lines = (tmp_path / "losses.csv").read_text().splitlines()
    assert lines[0] == "phase,region,epoch,loss,active,seconds"
    assert len(lines) == 1 + 4 * (TINY.ae_epochs + TINY.head_epochs) + TINY.decision_epochs
    assert not model.training
    assert not any(parameter.requires_grad for parameter in model.parameters())


def test_tiny_training_is_deterministic(tiny_faces, tmp_path):
    short = MSNHyperparameters(**{**TINY.to_dict(), "ae_epochs": 1, "head_epochs": 1, "decision_epochs": 1})
    first, first_state = train_msn(tiny_faces, short, tmp_path / "a" / "state.pt", progress=False)
    second, second_state = train_msn(tiny_faces, short, tmp_path / "b" / "state.pt", progress=False)
    assert [row["loss"] for row in first_state.history] == [row["loss"] for row in second_state.history]
    for key, value in first.state_dict().items():
        assert torch.equal(value, second.state_dict()[key]), key


def test_training_resumes_after_interruption(tiny_faces, tmp_path, monkeypatch):
    short = MSNHyperparameters(**{**TINY.to_dict(), "ae_epochs": 2, "head_epochs": 2, "decision_epochs": 2})
    reference, _ = train_msn(tiny_faces, short, tmp_path / "whole" / "state.pt", progress=False)

    original_save = TrainingState.save
    saves = {"count": 0}

    def save_then_stop(self: TrainingState) -> None:
        original_save(self)
        saves["count"] += 1
        if saves["count"] == 5:  # in phase 1, after the first epoch of the third region
            raise KeyboardInterrupt

    monkeypatch.setattr(TrainingState, "save", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        train_msn(tiny_faces, short, tmp_path / "resumed" / "state.pt", progress=False)
    monkeypatch.setattr(TrainingState, "save", original_save)

    resumed, state = train_msn(tiny_faces, short, tmp_path / "resumed" / "state.pt", progress=False)
    assert len(state.history) == 4 * 2 + 4 * 2 + 2
    for key, value in reference.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key


def test_resume_rejects_other_settings(tiny_faces, tmp_path):
    short = MSNHyperparameters(**{**TINY.to_dict(), "ae_epochs": 1, "head_epochs": 1, "decision_epochs": 1})
    train_msn(tiny_faces, short, tmp_path / "state.pt", progress=False)
    other = MSNHyperparameters(**{**short.to_dict(), "seed": 4})
    with pytest.raises(FrbError, match="other settings"):
        train_msn(tiny_faces, other, tmp_path / "state.pt", progress=False)


def test_fold_training_writes_loadable_weights(tiny_faces, data_root, tmp_path):
    counts = Counter(rel.split("/")[0] for rel in tiny_faces.relpaths)
    people = list(counts.items())
    a, b, c, d, e, f = counts
    # Two folds of people and of pairs: A-D train, E and F are held out.
    root = tmp_path / "lfw"
    root.mkdir()
    (root / "pairs.txt").write_text(
        "2\t2\n"
        f"{a}\t1\t2\n{b}\t1\t2\n{a}\t1\t{b}\t1\n{c}\t1\t{d}\t1\n"
        f"{e}\t1\t2\n{f}\t1\t2\n{e}\t1\t{f}\t1\n{e}\t2\t{f}\t2\n"
    )
    lfw = LFW(root=root, images=locate_lfw(data_root).images)

    record = train_fold(lfw, tiny_faces, [people[:4], people[4:]], 2, TINY, tmp_path / "out", "test", "digest",
                        progress=False)

    assert record["test_fold"] == 2
    assert record["train_people"] == 4
    files = sorted(path.name for path in (tmp_path / "out").iterdir())
    assert files == ["losses-fold2.csv", "msn-fold2.json", "msn-fold2.pt", "state-fold2.pt"]
    (entry,) = weights_by_fold("msn", tmp_path / "out")
    assert load_entry(entry).lfw_test_folds() == (2,)

    # A rerun leaves the finished fold's files untouched, so runs that used them still resume.
    before = {path.name: path.read_bytes() for path in (tmp_path / "out").iterdir()}
    again = train_fold(lfw, tiny_faces, [people[:4], people[4:]], 2, TINY, tmp_path / "out", "other", "digest",
                       progress=False)
    assert again["fold_accuracy"] == record["fold_accuracy"]
    assert again["command"] == "test"
    assert {path.name: path.read_bytes() for path in (tmp_path / "out").iterdir()} == before


def test_epoch_scale_keeps_one_epoch():
    scaled = MSNHyperparameters().scaled(0.001)
    assert (scaled.ae_epochs, scaled.head_epochs, scaled.decision_epochs) == (1, 1, 1)


def test_read_people_counts_folds(data_root):
    folds = read_people(locate_lfw(data_root).root / "people.txt")
    assert len(folds) == 10
    assert sum(count for people in folds for _, count in people) == 13233


def test_cli_reports_missing_data_root(tmp_path):
    result = CliRunner().invoke(train, ["msn", "--data-root", str(tmp_path / "absent"), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "does not exist" in result.output
    assert "Traceback" not in result.output



@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--folds", "1-x"], "--folds '1-x' is not a list of fold numbers"),
        (["--folds", ","], "--folds ',' names no fold"),
        (["--folds", "11"], "fold 11 does not exist"),
        (["--cv", "--folds", "2"], "give only one of them"),
    ],
)
def test_cli_rejects_bad_folds(data_root, tmp_path, options, message):
    out = tmp_path / "out"
    result = CliRunner().invoke(train, ["msn", "--data-root", str(data_root), "--out", str(out), *options])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert not out.exists()

# --- The shipped checkpoint ----------------------------------------------------------------------


def _shipped_record() -> dict:
    return json.loads(DEFAULT_WEIGHTS.with_suffix(".json").read_text(encoding="utf-8"))


def test_shipped_checkpoint_loads():
    assert DEFAULT_WEIGHTS.stat().st_size < 20e6
    model = MSN.pretrained()
    record = _shipped_record()
    assert model.metadata["fold_accuracy"] == record["fold_accuracy"]
    assert model.metadata["data_hash"] == record["data_hash"]
    assert not model.training
    assert set(record["thresholds"]) == set(MSN.score_names)


def test_training_folds_are_flagged(caplog):
    model = MSN.pretrained()
    assert model.lfw_test_folds() == (_shipped_record()["test_fold"],)
    with caplog.at_level(logging.WARNING):
        assert warn_if_trained_on(model, [10]) == []
        assert not caplog.records
        assert warn_if_trained_on(model, [1, 2, 10]) == [1, 2]
    assert "fold(s) 1,2" in caplog.text
    assert "--folds 10" in caplog.text
    # An MSN without a training record counts as trained on every fold.
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert warn_if_trained_on(MSN(), [10]) == [10]
    assert "names a held-out fold" in caplog.text


def test_pretrained_rejects_missing_file(tmp_path):
    with pytest.raises(FrbError, match="not found"):
        MSN.pretrained(tmp_path / "absent.pt")


@pytest.mark.slow
def test_shipped_checkpoint_reproduces_fold10(data_root, cache_dir):
    record = _shipped_record()
    lfw = locate_lfw(data_root)
    pairs = select_pairs(parse_pairs(lfw.pairs_file), folds=[10])
    relpaths = sorted({rel for pair in pairs for rel in (pair.probe, pair.reference)})
    faces = load_faces(lfw, relpaths, cache_dir, progress=False)
    model = MSN.pretrained()
    with torch.no_grad():
        embeddings = torch.cat([model.embed(faces.tensor(relpaths[i : i + 256])) for i in range(0, len(relpaths), 256)])
    row = {rel: i for i, rel in enumerate(relpaths)}
    probe = embeddings[[row[pair.probe] for pair in pairs]]
    reference = embeddings[[row[pair.reference] for pair in pairs]]
    labels = np.array([pair.same for pair in pairs])
    with torch.no_grad():
        scores = model.compare(probe, reference)
    for name, value in scores.items():
        accuracy = float(((value.numpy() < record["thresholds"][name]) == labels).mean())
        assert abs(accuracy - record["fold_accuracy"][name]) <= 0.01, f"{name}: {accuracy} vs {record['fold_accuracy'][name]}"
