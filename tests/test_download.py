"""Tests for `frb data download lfw` against a loopback HTTP server.

The server serves small archives built here, so the tests need no internet
and never contact the LFW site.
"""

from __future__ import annotations

import hashlib
import http.server
import io
import re
import socket
import tarfile
import threading
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from robustbench_face.cli_data import data
from robustbench_face.data import download as dl
from robustbench_face.data.download import PROTOCOL_FILES, download_lfw
from robustbench_face.errors import FrbError

PEOPLE = {"Aaron_Peirsol": 2, "Abel_Pacheco": 1}


def _jpeg(seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (40 * seed % 256, 90, 160)).save(buffer, "JPEG")
    return buffer.getvalue()


def _image_members(prefix: str = "lfw-deepfunneled") -> dict[str, bytes]:
    members = {}
    seed = 0
    for name, count in PEOPLE.items():
        for number in range(1, count + 1):
            seed += 1
            members[f"{prefix}/{name}/{name}_{number:04d}.jpg"] = _jpeg(seed)
    return members


def _protocol_files() -> dict[str, bytes]:
    files = {name: f"{name} placeholder\n".encode() for name in PROTOCOL_FILES}
    files["pairs.txt"] = b"1\t1\nAaron_Peirsol\t1\t2\nAaron_Peirsol\t1\tAbel_Pacheco\t1\n"
    return files


def _tar_bytes(members: dict[str, bytes], symlinks: dict[str, str] | None = None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, payload in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
        for name, link_target in (symlinks or {}).items():
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = link_target
            tar.addfile(info)
    return buffer.getvalue()


def _zip_bytes(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zipped:
        for name, payload in members.items():
            zipped.writestr(name, payload)
    return buffer.getvalue()


def _archive(kind: str, members: dict[str, bytes]) -> tuple[str, bytes]:
    if kind == "tgz":
        return "lfw-deepfunneled.tgz", _tar_bytes(members)
    return "lfw-deepfunneled.zip", _zip_bytes(members)


def _md5(payload: bytes) -> str:
    return hashlib.md5(payload).hexdigest()


class LoopbackServer:
    """An HTTP server on 127.0.0.1 that serves `files` and can misbehave on request.

    cut_after: on the first request for `cut_file`, send the full Content-Length
        but close the connection after this many body bytes.
    cut_every_time: cut every request for `cut_file`, not only the first.
    ignore_range: reply to Range requests with the whole file and status 200.
    requests: (path, Range header or None) for every GET, in order.
    """

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.cut_file: str | None = None
        self.cut_after = 0
        self.cut_every_time = False
        self.ignore_range = False
        self.requests: list[tuple[str, str | None]] = []
        self._cuts_done = 0

        state = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, format, *args):  # noqa: A002 - signature fixed by the base class
                pass

            def do_GET(self):
                name = self.path.lstrip("/")
                range_header = self.headers.get("Range")
                state.requests.append((name, range_header))
                payload = state.files.get(name)
                if payload is None:
                    self.send_error(404)
                    return

                start = 0
                match = re.fullmatch(r"bytes=(\d+)-", range_header or "")
                if match and not state.ignore_range:
                    start = int(match.group(1))
                    if start >= len(payload):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(payload)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(payload) - 1}/{len(payload)}")
                else:
                    self.send_response(200)
                body = payload[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()

                cut = name == state.cut_file and (state.cut_every_time or state._cuts_done == 0)
                if cut:
                    state._cuts_done += 1
                    self.wfile.write(body[: state.cut_after])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/lfw/"

    def serve(self, files: dict[str, bytes]) -> None:
        self.files = {f"lfw/{name}": payload for name, payload in files.items()}

    def requests_for(self, name: str) -> list[str | None]:
        return [range_header for path, range_header in self.requests if path == f"lfw/{name}"]

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


@pytest.fixture
def server():
    loopback = LoopbackServer()
    loopback.start()
    yield loopback
    loopback.stop()


@pytest.fixture
def closed_port_url() -> str:
    # Bind and close a socket so that the port is very likely refused.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/lfw/"


def _serve_release(server: LoopbackServer, kind: str = "tgz", members: dict[str, bytes] | None = None):
    """Serve an archive and the protocol files; return (archive name, archive bytes, all files)."""
    archive_name, archive = _archive(kind, members if members is not None else _image_members())
    files = {**_protocol_files(), archive_name: archive}
    server.serve(files)
    return archive_name, archive, files


def _checksums(files: dict[str, bytes]) -> dict[str, str]:
    return {name: _md5(payload) for name, payload in files.items()}


def _assert_layout(target: Path, images: dict[str, bytes] | None = None) -> None:
    images = images if images is not None else _image_members()
    for member, payload in images.items():
        relative = member.removeprefix("lfw/")
        assert (target / relative).read_bytes() == payload, relative
    for name, payload in _protocol_files().items():
        assert (target / name).read_bytes() == payload, name


@pytest.mark.parametrize("kind", ["tgz", "zip"])
def test_download_unpacks_layout(server, tmp_path, kind):
    archive_name, _, files = _serve_release(server, kind)

    target = download_lfw(
        tmp_path, server.url, _checksums(files), archive_name=archive_name, progress=False
    )

    assert target == tmp_path / "lfw"
    _assert_layout(target)
    assert sorted(p.name for p in (target / "lfw-deepfunneled").iterdir()) == sorted(PEOPLE)
    assert not (tmp_path / ".download").exists()


def test_download_accepts_nested_lfw_folder(server, tmp_path):
    nested = _image_members(prefix="lfw/lfw-deepfunneled")
    archive_name, _, files = _serve_release(server, "zip", members=nested)

    target = download_lfw(tmp_path, server.url, _checksums(files), archive_name=archive_name, progress=False)

    _assert_layout(target, nested)
    assert not (target / "lfw").exists()


def test_interrupted_transfer_resumes_with_range(server, tmp_path):
    archive_name, archive, files = _serve_release(server)
    server.cut_file = f"lfw/{archive_name}"
    server.cut_after = len(archive) // 2

    download_lfw(tmp_path, server.url, _checksums(files), archive_name=archive_name, progress=False)

    assert server.requests_for(archive_name) == [None, f"bytes={len(archive) // 2}-"]
    _assert_layout(tmp_path / "lfw")


def test_server_ignoring_range_restarts_from_zero(server, tmp_path):
    archive_name, archive, files = _serve_release(server)
    server.cut_file = f"lfw/{archive_name}"
    server.cut_after = len(archive) // 2
    server.ignore_range = True

    # No MD5 here, so only a clean restart (not a checksum retry) can pass.
    download_lfw(tmp_path, server.url, {}, archive_name=archive_name, progress=False)

    assert server.requests_for(archive_name) == [None, f"bytes={len(archive) // 2}-"]
    _assert_layout(tmp_path / "lfw")


def test_repeated_cuts_keep_part_for_rerun(server, tmp_path):
    archive_name, archive, files = _serve_release(server)
    server.cut_file = f"lfw/{archive_name}"
    server.cut_after = 100
    server.cut_every_time = True

    with pytest.raises(FrbError, match="run the command again to resume") as raised:
        download_lfw(tmp_path, server.url, _checksums(files), archive_name=archive_name, progress=False)

    part = tmp_path / ".download" / f"{archive_name}.part"
    assert str(part) in str(raised.value)
    assert part.stat().st_size == 100 * dl.TRANSFER_ATTEMPTS
    assert not (tmp_path / "lfw").exists()

    server.cut_file = None
    download_lfw(tmp_path, server.url, _checksums(files), archive_name=archive_name, progress=False)

    assert server.requests_for(archive_name)[-1] == f"bytes={100 * dl.TRANSFER_ATTEMPTS}-"
    _assert_layout(tmp_path / "lfw")


def test_oversized_part_file_restarts(server, tmp_path):
    archive_name, archive, files = _serve_release(server)
    download_dir = tmp_path / ".download"
    download_dir.mkdir()
    (download_dir / f"{archive_name}.part").write_bytes(b"x" * (len(archive) + 10))

    download_lfw(tmp_path, server.url, _checksums(files), archive_name=archive_name, progress=False)

    assert server.requests_for(archive_name) == [f"bytes={len(archive) + 10}-", None]
    _assert_layout(tmp_path / "lfw")


def test_complete_part_file_not_fetched_again(server, tmp_path):
    archive_name, archive, files = _serve_release(server)
    download_dir = tmp_path / ".download"
    download_dir.mkdir()
    (download_dir / f"{archive_name}.part").write_bytes(archive)

    download_lfw(tmp_path, server.url, _checksums(files), archive_name=archive_name, progress=False)

    # The server replies 416 because the part file already has every byte.
    assert server.requests_for(archive_name) == [f"bytes={len(archive)}-"]
    _assert_layout(tmp_path / "lfw")


def test_wrong_checksum_raises_and_cleans_up(server, tmp_path):
    archive_name, archive, files = _serve_release(server)
    checksums = _checksums(files)
    checksums[archive_name] = "0" * 32

    with pytest.raises(FrbError) as raised:
        download_lfw(tmp_path, server.url, checksums, archive_name=archive_name, progress=False)

    message = str(raised.value)
    assert message.startswith(f"{archive_name} from {server.url}{archive_name} failed the MD5 check")
    assert "0" * 32 in message
    assert _md5(archive) in message
    assert "\n" not in message
    assert not (tmp_path / "lfw").exists()
    assert not (tmp_path / ".download" / archive_name).exists()
    assert not (tmp_path / ".download" / f"{archive_name}.part").exists()


def test_verified_protocol_files_reused(server, tmp_path):
    archive_name, _, files = _serve_release(server)
    checksums = _checksums(files)
    checksums[archive_name] = "0" * 32
    with pytest.raises(FrbError):
        download_lfw(tmp_path, server.url, checksums, archive_name=archive_name, progress=False)

    download_lfw(tmp_path, server.url, _checksums(files), archive_name=archive_name, progress=False)

    assert len(server.requests_for("pairs.txt")) == 1
    assert len(server.requests_for(archive_name)) == 2


@pytest.mark.parametrize("kind", ["tgz", "zip"])
def test_path_traversal_member_rejected(server, tmp_path, kind):
    data_root = tmp_path / "root"
    members = {**_image_members(), "../../../evil.txt": b"escaped"}
    archive_name, _, files = _serve_release(server, kind, members=members)

    with pytest.raises(FrbError, match="points outside the unpack folder") as raised:
        download_lfw(data_root, server.url, _checksums(files), archive_name=archive_name, progress=False)

    assert "../../../evil.txt" in str(raised.value)
    assert not (data_root / "evil.txt").exists()
    assert not (tmp_path / "evil.txt").exists()
    assert not (data_root / "lfw").exists()
    assert not list((data_root / ".download").glob("unpack-*"))


def test_tar_symlink_member_rejected(server, tmp_path):
    archive = _tar_bytes(_image_members(), symlinks={"lfw-deepfunneled/link": "/etc/passwd"})
    files = {**_protocol_files(), "lfw-deepfunneled.tgz": archive}
    server.serve(files)

    with pytest.raises(FrbError, match="link or special file"):
        download_lfw(tmp_path, server.url, _checksums(files), progress=False)

    assert not (tmp_path / "lfw").exists()


def test_archive_without_image_folder_rejected(server, tmp_path):
    archive_name, _, files = _serve_release(server, members={"faces/Someone/Someone_0001.jpg": _jpeg(1)})

    with pytest.raises(FrbError, match="no lfw-deepfunneled/") as raised:
        download_lfw(tmp_path, server.url, _checksums(files), archive_name=archive_name, progress=False)

    assert "faces" in str(raised.value)
    assert not (tmp_path / "lfw").exists()


def test_unreachable_host_gives_offline_message(tmp_path, closed_port_url):
    with pytest.raises(FrbError) as raised:
        download_lfw(tmp_path, closed_port_url, progress=False, timeout=5)

    message = str(raised.value)
    assert message.startswith(f"could not download {closed_port_url}pairs.txt: ")
    assert f". Without internet, copy an existing LFW (lfw-deepfunneled/ and pairs.txt) to {tmp_path / 'lfw'}" in message
    assert "FRB_DATA_ROOT" in message
    assert "\n" not in message
    assert not (tmp_path / "lfw").exists()
    assert not (tmp_path / ".download").exists()


def test_silent_server_times_out(tmp_path):
    # A socket that listens but never replies: the connection succeeds, the reply never comes.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        with pytest.raises(FrbError, match="timed out"):
            download_lfw(tmp_path, f"http://127.0.0.1:{port}/lfw/", progress=False, timeout=0.5)


def test_missing_file_names_http_status(server, tmp_path):
    server.serve({})

    with pytest.raises(FrbError, match=r"could not download .*pairs\.txt: HTTP 404") as raised:
        download_lfw(tmp_path, server.url, progress=False)

    assert "Check --base-url" in str(raised.value)


def test_complete_data_skipped_unless_forced(server, tmp_path):
    archive_name, _, files = _serve_release(server)
    existing = tmp_path / "lfw"
    (existing / "lfw-deepfunneled" / "Old_Person").mkdir(parents=True)
    (existing / "pairs.txt").write_text("old\n")

    assert download_lfw(tmp_path, server.url, progress=False) == existing
    assert server.requests == []
    assert (existing / "pairs.txt").read_text() == "old\n"

    download_lfw(tmp_path, server.url, _checksums(files), archive_name=archive_name, force=True, progress=False)

    _assert_layout(existing)
    assert not (existing / "lfw-deepfunneled" / "Old_Person").exists()


def test_incomplete_lfw_folder_rejected(server, tmp_path):
    _serve_release(server)
    (tmp_path / "lfw" / "lfw-deepfunneled").mkdir(parents=True)

    with pytest.raises(FrbError, match="exists but is incomplete"):
        download_lfw(tmp_path, server.url, progress=False)

    assert server.requests == []


def test_invalid_base_url_rejected(tmp_path):
    with pytest.raises(FrbError, match="invalid base URL 'ftp://example.org/lfw/'"):
        download_lfw(tmp_path, "ftp://example.org/lfw/", progress=False)


def test_unsupported_archive_name_rejected(tmp_path):
    with pytest.raises(FrbError, match="unsupported archive name 'lfw.rar'"):
        download_lfw(tmp_path, "http://127.0.0.1:9/lfw/", archive_name="lfw.rar", progress=False)


def test_archive_name_with_folder_rejected(tmp_path):
    with pytest.raises(FrbError, match="invalid archive name '../escape.tgz'"):
        download_lfw(tmp_path, "http://127.0.0.1:9/lfw/", archive_name="../escape.tgz", progress=False)


def test_cli_error_exits_2_with_one_line(tmp_path, closed_port_url):
    result = CliRunner().invoke(
        data, ["download", "lfw", "--data-root", str(tmp_path), "--base-url", closed_port_url, "--no-progress"]
    )

    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("Error: could not download ")
    assert "Traceback" not in result.output


def test_cli_downloads_from_mirror(server, tmp_path):
    archive_name, _, files = _serve_release(server, "zip")
    md5_options = [arg for name, digest in _checksums(files).items() for arg in ("--md5", f"{name}={digest}")]

    result = CliRunner().invoke(
        data,
        ["download", "lfw", "--data-root", str(tmp_path), "--base-url", server.url,
         "--archive", archive_name, "--no-progress", *md5_options],
    )

    assert result.exit_code == 0, result.output
    assert f"LFW is ready in {tmp_path / 'lfw'}." in result.stdout
    _assert_layout(tmp_path / "lfw")


def test_cli_data_root_from_environment(server, tmp_path, monkeypatch):
    archive_name, _, _ = _serve_release(server)
    monkeypatch.setenv("FRB_DATA_ROOT", str(tmp_path))

    result = CliRunner().invoke(
        data, ["download", "lfw", "--base-url", server.url, "--archive", archive_name, "--no-progress"]
    )

    assert result.exit_code == 0, result.output
    _assert_layout(tmp_path / "lfw")


def test_cli_rejects_malformed_md5(tmp_path):
    result = CliRunner().invoke(
        data, ["download", "lfw", "--data-root", str(tmp_path), "--md5", "pairs.txt=abc"]
    )

    assert result.exit_code == 2
    assert "NAME=HEX" in result.stderr
    assert not (tmp_path / "lfw").exists()


def test_cli_rejects_unknown_dataset(tmp_path):
    result = CliRunner().invoke(data, ["download", "celeba", "--data-root", str(tmp_path)])

    assert result.exit_code == 2
    assert "celeba" in result.stderr
