"""Local-directory storage: writes are atomic renames, reads are served by /blobs."""

from __future__ import annotations

import hashlib
import os
import tempfile
from datetime import datetime
from pathlib import Path
from typing import BinaryIO

from gateway.errors import ArtifactMissing, InvalidInput, PayloadTooLarge, StorageUnavailable
from gateway.storage.base import DirectUploads, StoredObject

CHUNK = 1024 * 1024


class LocalStorage:
    """Blobs under one directory; keys are relative paths we generate, never user input."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root):
            raise InvalidInput("storage key escapes the storage root")
        return path

    def put_stream(
        self, key: str, stream: BinaryIO, *, max_bytes: int, expected_sha256: str | None = None
    ) -> StoredObject:
        """Stream to a temporary file, check size and digest, then rename into place."""
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        digest, size = hashlib.sha256(), 0
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".upload-")
        try:
            with os.fdopen(fd, "wb") as out:
                while chunk := stream.read(CHUNK):
                    size += len(chunk)
                    if size > max_bytes:
                        raise PayloadTooLarge(f"upload exceeds {max_bytes} bytes")
                    digest.update(chunk)
                    out.write(chunk)
            actual = digest.hexdigest()
            if expected_sha256 is not None and actual != expected_sha256:
                raise InvalidInput(
                    f"content sha256 {actual} does not match the declared {expected_sha256}"
                )
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return StoredObject(key=key, size=size, sha256=actual)

    def exists(self, key: str) -> bool:
        """Whether the blob file exists."""
        return self._path(key).is_file()

    def open_read(self, key: str) -> BinaryIO:
        """Open the blob file for reading."""
        try:
            return self._path(key).open("rb")
        except FileNotFoundError as exc:
            raise ArtifactMissing(f"stored object {key} is missing") from exc

    def local_path(self, key: str) -> Path | None:
        """The blob's path on disk."""
        return self._path(key)

    def presign(self, key: str, *, method: str, expires_at: datetime) -> str | None:
        """Local blobs are served by Airlock's own signed /blobs URLs."""
        return None

    def delete(self, key: str) -> None:
        """Remove the blob file if present."""
        self._path(key).unlink(missing_ok=True)

    def list_keys(self, prefix: str) -> list[str]:
        """The files under the directory `prefix` names, as keys, sorted."""
        folder = self._path(prefix)
        if not folder.is_dir():
            return []
        found = (p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
        return sorted(p.relative_to(self.root).as_posix() for p in found)

    def check(self) -> None:
        """The root is a writable directory."""
        if not (self.root.is_dir() and os.access(self.root, os.W_OK | os.X_OK)):
            raise StorageUnavailable("the storage directory is not a writable directory")

    def direct_uploads(self) -> DirectUploads | None:
        """Uploads stream through the gateway into the directory."""
        return None
