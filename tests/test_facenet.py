"""FaceNet wiring, tested with a randomly initialised InceptionResnetV1.

The VGGFace2 weights cannot be fetched here, so the download path is
exercised against a loopback HTTP server that serves a random state dict
in the same format, at facenet-pytorch's own release URL path.
"""

from __future__ import annotations

import functools
import http.server
import threading
from pathlib import Path
from urllib.parse import urlparse

import pytest
import torch
from facenet_pytorch import InceptionResnetV1
from facenet_pytorch.models import inception_resnet_v1

from robustbench_face.attacks.adapter import PairClassifier
from robustbench_face.errors import FrbError
from robustbench_face.models import facenet
from robustbench_face.models.facenet import WEIGHTS_URL, FaceNet


@pytest.fixture
def torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "torch"


@pytest.fixture(scope="module")
def random_state_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A state dict shaped like the VGGFace2 release, logits layer included."""
    torch.manual_seed(0)
    network = InceptionResnetV1(pretrained=None, classify=True, num_classes=8631)
    path = tmp_path_factory.mktemp("weights") / facenet.WEIGHTS_FILE
    torch.save(network.state_dict(), path)
    return path


def test_random_facenet_embeds_canonical_crops() -> None:
    model = FaceNet.random().eval()
    faces = torch.rand(3, 3, 160, 160)
    embeddings = model.embed(faces)
    assert embeddings.shape == (3, 512)
    torch.testing.assert_close(embeddings.norm(dim=1), torch.ones(3))


def test_random_facenet_gradient_reaches_input() -> None:
    model = FaceNet.random().eval().requires_grad_(False)
    classifier = PairClassifier(model)
    classifier.set_references(model.embed(torch.rand(2, 3, 160, 160)), torch.tensor([0.8, 0.8]))
    probes = torch.rand(2, 3, 160, 160, requires_grad=True)
    classifier(probes)[:, 1].sum().backward()
    assert probes.grad is not None
    assert probes.grad.abs().sum() > 0


def test_weights_from_path(random_state_file: Path) -> None:
    model = FaceNet.pretrained(random_state_file)
    stored = torch.load(random_state_file, weights_only=True)
    torch.testing.assert_close(model.network.last_linear.weight, stored["last_linear.weight"])


def test_missing_weights_explain_how_to_get_them(torch_home: Path) -> None:
    with pytest.raises(FrbError, match=r"not found at .*20180402-114759-vggface2.pt; download https://"):
        FaceNet.pretrained(download=False)


def test_missing_explicit_file(tmp_path: Path) -> None:
    with pytest.raises(FrbError, match=r"weights file .*nope.pt not found"):
        FaceNet.pretrained(tmp_path / "nope.pt")


@pytest.mark.parametrize("content", [b"", b"not a torch file", b"PK\x03\x04truncated"])
def test_corrupt_weights(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.pt"
    path.write_bytes(content)
    with pytest.raises(FrbError, match=r"bad.pt is not a readable PyTorch state dict"):
        FaceNet.pretrained(path)


def test_wrong_state_dict(tmp_path: Path) -> None:
    path = tmp_path / "other.pt"
    torch.save({"layer.weight": torch.zeros(2)}, path)
    with pytest.raises(FrbError, match="does not match InceptionResnetV1"):
        FaceNet.pretrained(path)


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def release_server(random_state_file: Path, tmp_path: Path):
    """Serve the random weights at the release URL's path on 127.0.0.1."""
    path = urlparse(WEIGHTS_URL).path
    root = tmp_path / "site"
    (root / path.lstrip("/")).parent.mkdir(parents=True)
    (root / path.lstrip("/")).write_bytes(random_state_file.read_bytes())
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_download_goes_through_facenet_pytorch(
    release_server: str, torch_home: Path, monkeypatch: pytest.MonkeyPatch, random_state_file: Path
) -> None:
    original = inception_resnet_v1.download_url_to_file
    requested = []

    def to_loopback(url: str, dst: str, *args, **kwargs):
        requested.append(url)
        return original(url.replace("https://github.com", release_server), dst, *args, progress=False)

    monkeypatch.setattr(inception_resnet_v1, "download_url_to_file", to_loopback)
    model = FaceNet.pretrained()
    assert requested == [WEIGHTS_URL]
    cached = torch_home / "checkpoints" / facenet.WEIGHTS_FILE
    assert cached.read_bytes() == random_state_file.read_bytes()
    assert model.embed(torch.rand(1, 3, 160, 160)).shape == (1, 512)


def test_offline_download_fails_clearly(torch_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    original = inception_resnet_v1.download_url_to_file

    def to_closed_port(url: str, dst: str, *args, **kwargs):
        # Port 9 on loopback has no listener here: the connection is refused.
        return original("http://127.0.0.1:9/weights.pt", dst, *args, progress=False)

    monkeypatch.setattr(inception_resnet_v1, "download_url_to_file", to_closed_port)
    with pytest.raises(FrbError, match="cannot download FaceNet weights .* on a machine with internet"):
        FaceNet.pretrained()
    assert not list((torch_home / "checkpoints").glob("*.pt"))
