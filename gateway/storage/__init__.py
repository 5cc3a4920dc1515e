"""Object storage behind one small interface: local directory now, S3 later."""

from __future__ import annotations

from gateway.storage.base import Storage, StoredObject
from gateway.storage.local import LocalStorage


def storage_from_url(url: str) -> Storage:
    """Build the storage backend named by `AIRLOCK_STORAGE_URL`."""
    if url.startswith("file://"):
        return LocalStorage(url.removeprefix("file://"))
    raise ValueError(f"unsupported storage URL scheme: {url.split(':', 1)[0]}")


__all__ = ["LocalStorage", "Storage", "StoredObject", "storage_from_url"]
