"""FileStorage: the bytes of uploaded and generated files, one file each under state/files/.

Nothing half-written: bytes go to a hidden temporary file in the same directory, are flushed
to disk, and only then renamed to the file's id (a rename within a directory is atomic); the
record is added to the store after that. A crash mid-upload leaves only a `.partial-*` file,
swept at start.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from ember.errors import PayloadTooLarge
from ember.jobs.records import FileRecord, new_id
from ember.jobs.store import JobStore

_PARTIAL = ".partial-"


class FileStorage:
    def __init__(self, root: Path, store: JobStore) -> None:
        self.root = root
        self.store = store
        root.mkdir(parents=True, exist_ok=True)
        for leftover in root.glob(_PARTIAL + "*"):  # uploads a crash interrupted
            leftover.unlink(missing_ok=True)

    def path(self, file_id: str) -> Path:
        return self.root / file_id

    def save_stream(
        self,
        source: BinaryIO,
        *,
        owner: str,
        filename: str,
        purpose: str,
        limit: int,
        expires_at: int | None = None,
    ) -> FileRecord:
        """Copy an uploaded file (already spooled by the multipart parser) into place."""

        def chunks() -> Iterator[bytes]:
            size = 0
            while chunk := source.read(1024 * 1024):
                size += len(chunk)
                if size > limit:
                    raise PayloadTooLarge(f"file larger than this server's limit of {limit} bytes")
                yield chunk

        file_id = new_id("file-")
        size = self._write(file_id, chunks())
        return self._add(file_id, size, owner=owner, filename=filename, purpose=purpose, expires_at=expires_at)

    def save_lines(
        self, file_id: str, lines: Iterable[str], *, owner: str, filename: str, purpose: str, expires_at: int | None
    ) -> FileRecord:
        """Write a generated JSONL file under a chosen id (rewritten whole if it exists: a redone
        finalize replaces, never duplicates)."""
        size = self._write(file_id, ((line + "\n").encode() for line in lines))
        return self._add(file_id, size, owner=owner, filename=filename, purpose=purpose, expires_at=expires_at)

    def _write(self, file_id: str, chunks: Iterable[bytes]) -> int:
        """The bytes to a partial file, synced, then renamed into place whole; its size. A failure
        leaves nothing behind."""
        partial = self.root / f"{_PARTIAL}{file_id}"
        size = 0
        try:
            with partial.open("wb") as out:
                for chunk in chunks:
                    size += len(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            partial.rename(self.path(file_id))
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        return size

    def _add(
        self, file_id: str, size: int, *, owner: str, filename: str, purpose: str, expires_at: int | None
    ) -> FileRecord:
        record = FileRecord(
            id=file_id,
            owner=owner,
            filename=filename,
            purpose=purpose,
            bytes=size,
            created_at=int(time.time()),
            expires_at=expires_at,
        )
        self.store.add_file(record)
        return record

    def read_bytes(self, record: FileRecord) -> bytes:
        return self.path(record.id).read_bytes()

    def delete(self, record: FileRecord) -> None:
        # The record first: once it is gone nobody can ask for the bytes.
        self.store.forget_file(record.id)
        self.path(record.id).unlink(missing_ok=True)

    def sweep_expired(self, now: float) -> int:
        expired = self.store.expired_files(now)
        for record in expired:
            self.delete(record)
        return len(expired)
