"""The storage protocol every backend implements."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import BinaryIO, Protocol


@dataclass(frozen=True)
class StoredObject:
    """What was written: its size and SHA-256."""

    key: str
    size: int
    sha256: str


@dataclass(frozen=True)
class UploadedPart:
    """One part of a multipart upload as the object store holds it."""

    number: int
    size: int
    etag: str


class DirectUploads(Protocol):
    """Multipart uploads whose parts the client PUTs straight to the object store."""

    def create(self, key: str) -> str:
        """Start a multipart upload to `key`; its upload id."""
        ...

    def part_url(self, key: str, upload_id: str, number: int, *, expires_at: datetime) -> str:
        """A presigned URL to PUT part `number` of the upload."""
        ...

    def parts(self, key: str, upload_id: str) -> list[UploadedPart]:
        """The parts uploaded so far; UploadMissing if the upload is gone."""
        ...

    def complete(self, key: str, upload_id: str, parts: Sequence[UploadedPart]) -> int:
        """Assemble the parts into the object at `key`; the object's size."""
        ...

    def abort(self, key: str, upload_id: str) -> None:
        """Discard the upload and its parts (idempotent)."""
        ...

    def size(self, key: str) -> int:
        """The size of the object at `key`; ArtifactMissing if absent."""
        ...


class Storage(Protocol):
    """Content-addressed blob storage."""

    def put_stream(
        self, key: str, stream: BinaryIO, *, max_bytes: int, expected_sha256: str | None = None
    ) -> StoredObject:
        """Write a stream to `key`, verifying size bound and digest before it becomes visible."""
        ...

    def exists(self, key: str) -> bool:
        """Whether `key` holds an object."""
        ...

    def open_read(self, key: str) -> BinaryIO:
        """A binary stream of the object's bytes; ArtifactMissing if absent."""
        ...

    def local_path(self, key: str) -> Path | None:
        """A filesystem path to serve from, or None when the backend serves its own URLs."""
        ...

    def presign(self, key: str, *, method: str, expires_at: datetime) -> str | None:
        """A backend-signed URL, or None when Airlock signs its own /blobs URL."""
        ...

    def delete(self, key: str) -> None:
        """Remove `key` if present."""
        ...

    def list_keys(self, prefix: str) -> list[str]:
        """Every key under `prefix` (a folder-like prefix ending in /), sorted."""
        ...

    def check(self) -> None:
        """A cheap readiness probe; StorageUnavailable when the backend cannot serve."""
        ...

    def direct_uploads(self) -> DirectUploads | None:
        """Multipart uploads clients send straight to the store, or None (stream through us)."""
        ...
