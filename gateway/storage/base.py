"""The storage protocol every backend implements."""

from __future__ import annotations

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
