"""Object storage behind one small interface: a local directory, or S3 through boto3."""

from __future__ import annotations

from urllib.parse import urlsplit

from gateway.settings import Settings
from gateway.storage.base import DirectUploads, Storage, StoredObject, UploadedPart
from gateway.storage.local import LocalStorage
from gateway.storage.s3 import S3Options, S3Storage


def storage_from_url(url: str, *, s3: S3Options | None = None) -> Storage:
    """Build the storage backend named by `AIRLOCK_STORAGE_URL` (file:// or s3://)."""
    if url.startswith("file://"):
        return LocalStorage(url.removeprefix("file://"))
    if url.startswith("s3://"):
        parts = urlsplit(url)
        return S3Storage(parts.netloc, parts.path, options=s3 or S3Options())
    raise ValueError(f"unsupported storage URL scheme: {url.split(':', 1)[0]}")


def storage_from_settings(settings: Settings) -> Storage:
    """The storage backend of a deployment, with its S3 endpoint and credentials."""
    return storage_from_url(settings.storage_url, s3=s3_options(settings))


def s3_options(settings: Settings) -> S3Options:
    """The S3 client options of the settings."""
    return S3Options(
        endpoint_url=settings.s3_endpoint_url,
        region=settings.s3_region,
        addressing_style=settings.s3_addressing_style,
        access_key_id=settings.s3_access_key_id,
        secret_access_key=settings.s3_secret_access_key,
        part_size=settings.upload_part_bytes,
    )


__all__ = [
    "DirectUploads",
    "LocalStorage",
    "S3Options",
    "S3Storage",
    "Storage",
    "StoredObject",
    "UploadedPart",
    "s3_options",
    "storage_from_settings",
    "storage_from_url",
]
