"""Download the deep-funneled LFW release and its protocol files into a data root.

The result has the layout the loaders read::

    <data_root>/lfw/lfw-deepfunneled/<Name>/<Name>_NNNN.jpg
    <data_root>/lfw/pairs.txt, people.txt, pairsDev*.txt, peopleDev*.txt,
                    lfw-names.txt, README.txt

Files are fetched into ``<data_root>/.download/`` first. An interrupted
transfer resumes there with an HTTP Range request, and ``lfw/`` appears only
once every file has passed its checks and the archive has been unpacked.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import re
import shutil
import sys
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from urllib.error import HTTPError, URLError
from urllib.parse import urlsplit
from urllib.request import Request, urlopen

from tqdm import tqdm

from .. import __version__
from ..errors import FrbError

logger = logging.getLogger(__name__)

# The LFW site as torchvision 0.29.1 names it (`_LFW.download_url_prefix` in
# torchvision/datasets/lfw.py). That release raises "LFW dataset is no longer
# available for automatic download" instead of using it, so this URL may fail.
# The error message then explains how to use a local copy.
OFFICIAL_BASE_URL = "http://vis-www.cs.umass.edu/lfw/"
ARCHIVE_NAME = "lfw-deepfunneled.tgz"
IMAGE_FOLDER = "lfw-deepfunneled"
PROTOCOL_FILES = (
    "pairs.txt",
    "people.txt",
    "pairsDevTrain.txt",
    "pairsDevTest.txt",
    "peopleDevTrain.txt",
    "peopleDevTest.txt",
    "lfw-names.txt",
    "README.txt",
)

# MD5 checksums copied from torchvision 0.29.1, torchvision/datasets/lfw.py
# (`_LFW.file_dict["deepfunneled"]` and `_LFW.checksums`). torchvision lists
# none for README.txt, so that file gets only the size check.
OFFICIAL_CHECKSUMS: dict[str, str] = {
    "lfw-deepfunneled.tgz": "68331da3eb755a505a502b5aacb3c201",
    "pairs.txt": "9f1ba174e4e1c508ff7cdf10ac338a7d",
    "pairsDevTest.txt": "5132f7440eb68cf58910c8a45a2ac10b",
    "pairsDevTrain.txt": "4f27cbf15b2da4a85c1907eb4181ad21",
    "people.txt": "450f0863dd89e85e73936a6d71a3474b",
    "peopleDevTest.txt": "e4bf5be0a43b5dcd9dc5ccfcb8fb19c5",
    "peopleDevTrain.txt": "54eaac34beb6d042ed3a7d883e247a21",
    "lfw-names.txt": "a6d0a479bd074669f656265a6e693f6d",
}

DEFAULT_TIMEOUT_S = 30.0
# Number of attempts per file in one call. Each attempt after a dropped
# connection resumes from the bytes already on disk, and a rerun resumes too.
TRANSFER_ATTEMPTS = 3
CHUNK_SIZE = 1 << 20
DOWNLOAD_FOLDER = ".download"

_TAR_SUFFIXES = (".tgz", ".tar.gz", ".tar")
_ZIP_SUFFIXES = (".zip",)
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


class _Interrupted(Exception):
    """The connection ended before the whole file arrived. The part file is kept."""


class _Restart(Exception):
    """The part file does not match the server's response and must be fetched from zero."""


def lfw_dir(data_root: Path) -> Path:
    """Return the folder that contains LFW under ``data_root``."""
    return Path(data_root) / "lfw"


def is_lfw_complete(data_root: Path) -> bool:
    """Check that ``<data_root>/lfw`` has pairs.txt and the image folder."""
    target = lfw_dir(data_root)
    return (target / "pairs.txt").is_file() and (target / IMAGE_FOLDER).is_dir()


def download_lfw(
    data_root: Path,
    base_url: str = OFFICIAL_BASE_URL,
    checksums: Mapping[str, str] | None = None,
    *,
    archive_name: str = ARCHIVE_NAME,
    force: bool = False,
    progress: bool = True,
    timeout: float = DEFAULT_TIMEOUT_S,
) -> Path:
    """Download, verify and unpack LFW into ``<data_root>/lfw`` and return that folder.

    Args:
        data_root: folder that receives ``lfw/`` and the ``.download/`` scratch folder.
        base_url: the folder URL that serves ``archive_name`` and the protocol
            files; override it for a mirror.
        checksums: MD5 hex digests by file name. Files without an entry get only
            the size check. None selects ``OFFICIAL_CHECKSUMS`` for the official
            URL and no checksums for any other URL.
        archive_name: the image archive's file name; a name ending in .tgz,
            .tar.gz or .tar is read as tar and one ending in .zip as zip.
        force: replace an existing ``lfw/`` folder and discard earlier downloads.
        progress: show a tqdm progress bar, which also needs stderr to be a TTY.
        timeout: seconds to wait for the connection and for each read.

    Raises:
        FrbError: the host is unreachable, a file fails its size or MD5 check,
            the archive is unsafe or lacks the image folder, or ``lfw/`` exists
            but is incomplete and ``force`` is off.
    """
    data_root = Path(data_root)
    target = lfw_dir(data_root)
    if is_lfw_complete(data_root) and not force:
        logger.info("LFW is already complete in %s; skipping the download", target)
        return target
    if target.exists() and not force:
        raise FrbError(
            f"{target} exists but is incomplete (it needs pairs.txt and {IMAGE_FOLDER}/); "
            "move it away or pass --force to replace it"
        )

    _check_base_url(base_url)
    _check_archive_name(archive_name)
    if checksums is None:
        if base_url == OFFICIAL_BASE_URL:
            checksums = OFFICIAL_CHECKSUMS
        else:
            logger.warning("no MD5 checksums given for %s; checking file sizes only", base_url)
            checksums = {}

    download_dir = data_root / DOWNLOAD_FOLDER
    if force and download_dir.exists():
        shutil.rmtree(download_dir)
    download_dir.mkdir(parents=True, exist_ok=True)

    # The fix offered whenever the download itself cannot succeed.
    hint = (
        f"copy an existing LFW ({IMAGE_FOLDER}/ and pairs.txt) to {target} "
        "or point --data-root / FRB_DATA_ROOT at a folder that contains lfw/"
    )
    try:
        # The small protocol files go first, so an unreachable host fails fast.
        for name in (*PROTOCOL_FILES, archive_name):
            _obtain(
                _file_url(base_url, name),
                download_dir / name,
                checksums.get(name),
                progress=progress,
                timeout=timeout,
                hint=hint,
            )
        _install(download_dir, archive_name, target)
        (download_dir / archive_name).unlink(missing_ok=True)
    finally:
        try:
            download_dir.rmdir()
        except OSError:
            # A failed run leaves part files or verified downloads here for the next run.
            pass
    logger.info("LFW is ready in %s", target)
    return target


def _check_base_url(base_url: str) -> None:
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise FrbError(
            f"invalid base URL {base_url!r}: give an http:// or https:// URL with a host name"
        )


def _check_archive_name(archive_name: str) -> None:
    # The name becomes a path under .download/, so it must not contain a folder.
    if not archive_name or "/" in archive_name or "\\" in archive_name or archive_name in (".", ".."):
        raise FrbError(f"invalid archive name {archive_name!r}: give a plain file name such as {ARCHIVE_NAME}")
    _archive_format(archive_name)


def _archive_format(archive_name: str) -> str:
    """Return "tar" or "zip" for an archive file name."""
    lowered = archive_name.lower()
    if lowered.endswith(_TAR_SUFFIXES):
        return "tar"
    if lowered.endswith(_ZIP_SUFFIXES):
        return "zip"
    raise FrbError(
        f"unsupported archive name {archive_name!r}: it must end in .tgz, .tar.gz, .tar or .zip"
    )


def _file_url(base_url: str, name: str) -> str:
    return base_url.rstrip("/") + "/" + name


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(CHUNK_SIZE), b""):
            digest.update(block)
    return digest.hexdigest()


# --- Fetching one file ------------------------------------------------------


def _obtain(
    url: str,
    dest: Path,
    expected_md5: str | None,
    *,
    progress: bool,
    timeout: float,
    hint: str,
) -> None:
    """Make ``dest`` a verified copy of ``url``, reusing a verified earlier download."""
    if dest.is_file():
        # A file without a known checksum may come from another mirror, so
        # only a checksum match lets a finished download be reused.
        if expected_md5 is not None and _md5(dest) == expected_md5.lower():
            logger.info("reusing the verified %s", dest)
            return
        dest.unlink()

    part = dest.with_name(dest.name + ".part")
    _fetch(url, part, progress=progress, timeout=timeout, hint=hint)

    if expected_md5 is not None:
        actual = _md5(part)
        if actual != expected_md5.lower():
            part.unlink()
            raise FrbError(
                f"{dest.name} from {url} failed the MD5 check: expected {expected_md5}, "
                f"got {actual}; the file was deleted. Run the command again, and if it "
                f"fails again, the server's copy differs, so {hint}"
            )
    part.replace(dest)


def _fetch(url: str, part: Path, *, progress: bool, timeout: float, hint: str) -> None:
    """Download ``url`` into ``part``, resuming from the bytes ``part`` already has."""
    reason = ""
    for attempt in range(1, TRANSFER_ATTEMPTS + 1):
        try:
            _fetch_once(url, part, progress=progress, timeout=timeout, hint=hint)
            return
        except _Interrupted as err:
            reason = str(err)
            logger.warning(
                "download of %s interrupted (%s), attempt %d of %d", url, reason, attempt, TRANSFER_ATTEMPTS
            )
        except _Restart as err:
            reason = str(err)
            logger.warning("restarting %s from zero: %s", url, reason)
            part.unlink(missing_ok=True)

    have = part.stat().st_size if part.exists() else 0
    raise FrbError(
        f"download of {url} stopped after {have} bytes ({reason}) in {TRANSFER_ATTEMPTS} attempts; "
        f"run the command again to resume from {part}"
    )


def _fetch_once(url: str, part: Path, *, progress: bool, timeout: float, hint: str) -> None:
    # NOTE: without an MD5 for the file, bytes resumed from a server whose copy
    # changed since the part file was written go undetected (no If-Range/ETag).
    offset = part.stat().st_size if part.exists() else 0
    request = Request(url, headers={"User-Agent": f"robustbench-face/{__version__}"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
        logger.info("resuming %s at byte %d", url, offset)
    else:
        logger.info("downloading %s", url)

    try:
        response = urlopen(request, timeout=timeout)
    except HTTPError as err:
        err.close()
        if err.code == 416 and offset:
            _check_unsatisfiable_range(err.headers.get("Content-Range"), offset)
            return
        raise FrbError(
            f"could not download {url}: HTTP {err.code} {err.reason}. Check --base-url, or {hint}"
        ) from err
    except URLError as err:
        raise FrbError(f"could not download {url}: {err.reason}. Without internet, {hint}") from err
    except (OSError, http.client.HTTPException) as err:
        # Timeouts and resets while reading the status line bypass URLError.
        reason = str(err) or type(err).__name__
        raise FrbError(f"could not download {url}: {reason}. Without internet, {hint}") from err

    with response:
        length_header = response.headers.get("Content-Length")
        length = int(length_header) if length_header and length_header.isdigit() else None
        if offset and response.status == 206:
            total = _resumed_total(response.headers.get("Content-Range"), offset, length)
            mode = "ab"
        else:
            if offset:
                logger.warning("%s ignored the Range request; downloading it from zero", url)
            offset = 0
            total = length
            mode = "wb"
        _copy_body(response, part, mode, offset, total, progress)

    size = part.stat().st_size
    if total is not None and size < total:
        raise _Interrupted(f"got {size} of {total} bytes")
    if total is not None and size > total:
        raise _Restart(f"{part.name} has {size} bytes but the server's file has {total}")


def _resumed_total(content_range: str | None, offset: int, length: int | None) -> int | None:
    """Return the full size from a 206 response, raising _Restart unless it continues at ``offset``."""
    match = _CONTENT_RANGE.fullmatch((content_range or "").strip())
    if match is None or int(match.group(1)) != offset:
        raise _Restart(f"the server responded to Range bytes={offset}- with Content-Range {content_range!r}")
    served = int(match.group(2)) - offset + 1
    if length is not None and length != served:
        raise _Restart(f"Content-Length {length} does not match Content-Range {content_range!r}")
    return None if match.group(3) == "*" else int(match.group(3))


def _check_unsatisfiable_range(content_range: str | None, offset: int) -> None:
    """Handle HTTP 416: the part file is complete when its size equals the server's size."""
    match = re.fullmatch(r"bytes \*/(\d+)", (content_range or "").strip())
    if match is not None and int(match.group(1)) == offset:
        logger.info("the part file already has all %d bytes", offset)
        return
    raise _Restart(f"the server rejected Range bytes={offset}- (HTTP 416, Content-Range {content_range!r})")


def _copy_body(response, part: Path, mode: str, offset: int, total: int | None, progress: bool) -> None:
    show = progress and sys.stderr.isatty()
    with part.open(mode) as out, tqdm(
        total=total,
        initial=offset,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc=part.name.removesuffix(".part"),
        disable=not show,
    ) as bar:
        while True:
            try:
                chunk = response.read(CHUNK_SIZE)
            except (http.client.HTTPException, OSError) as err:
                # Only read errors are caught here, so a failed write below still raises.
                raise _Interrupted(str(err) or type(err).__name__) from err
            if not chunk:
                break
            out.write(chunk)
            bar.update(len(chunk))


# --- Unpacking and installing ----------------------------------------------


def _install(download_dir: Path, archive_name: str, target: Path) -> None:
    """Unpack the archive, add the protocol files and swap the result in as ``target``.

    Everything is assembled in a temporary folder beside ``target`` and moved
    there with one rename, so ``target`` is never left half unpacked.
    """
    archive = download_dir / archive_name
    workdir = Path(tempfile.mkdtemp(prefix="unpack-", dir=download_dir))
    try:
        extracted = workdir / "extracted"
        extracted.mkdir()
        _extract(archive, extracted)
        images = _find_image_folder(extracted, archive)

        staged = workdir / "lfw"
        staged.mkdir()
        images.rename(staged / IMAGE_FOLDER)
        for name in PROTOCOL_FILES:
            (download_dir / name).replace(staged / name)

        previous = None
        if target.exists():
            previous = workdir / "previous"
            target.rename(previous)
        try:
            staged.rename(target)
        except OSError:
            if previous is not None:
                previous.rename(target)
            raise
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _extract(archive: Path, dest: Path) -> None:
    """Unpack ``archive`` into ``dest`` after checking every member path."""
    try:
        if _archive_format(archive.name) == "tar":
            with tarfile.open(archive, "r:*") as tar:
                members = tar.getmembers()
                for member in members:
                    _check_member(archive, member.name, is_link=not (member.isfile() or member.isdir()))
                # The "data" filter repeats the path checks inside tarfile itself.
                tar.extractall(dest, members=members, filter="data")
        else:
            with zipfile.ZipFile(archive) as zipped:
                for info in zipped.infolist():
                    is_link = (info.external_attr >> 16) & 0o170000 == 0o120000
                    _check_member(archive, info.filename, is_link=is_link)
                zipped.extractall(dest)
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error) as err:
        archive.unlink(missing_ok=True)
        raise FrbError(
            f"{archive.name} is not a readable archive ({err}); it was deleted, so run the command again"
        ) from err


def _check_member(archive: Path, name: str, *, is_link: bool) -> None:
    """Reject members that would land outside the unpack folder, and links."""
    normalized = name.replace("\\", "/")
    path = PurePosixPath(normalized)
    has_drive = len(normalized) > 1 and normalized[1] == ":"
    if path.is_absolute() or has_drive or ".." in path.parts:
        archive.unlink(missing_ok=True)
        raise FrbError(
            f"{archive.name} contains the member {name!r}, which points outside the unpack folder; "
            "the archive was rejected and deleted, so check that --base-url serves the LFW release"
        )
    if is_link:
        archive.unlink(missing_ok=True)
        raise FrbError(
            f"{archive.name} contains {name!r}, a link or special file that LFW archives do not have; "
            "the archive was rejected and deleted, so check that --base-url serves the LFW release"
        )


def _find_image_folder(extracted: Path, archive: Path) -> Path:
    """Return the unpacked image folder: lfw-deepfunneled/ at the top, or inside lfw/."""
    for candidate in (extracted / IMAGE_FOLDER, extracted / "lfw" / IMAGE_FOLDER):
        if candidate.is_dir() and any(child.is_dir() for child in candidate.iterdir()):
            return candidate
    found = sorted(child.name for child in extracted.iterdir()) or ["nothing"]
    archive.unlink(missing_ok=True)
    raise FrbError(
        f"{archive.name} has no {IMAGE_FOLDER}/ or lfw/{IMAGE_FOLDER}/ folder of people "
        f"(its top level contains {', '.join(found[:5])}); the archive was deleted, "
        "so check that --base-url serves the deep-funneled LFW archive"
    )
