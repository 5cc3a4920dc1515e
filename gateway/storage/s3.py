"""S3-compatible storage through boto3: clients move the bytes through presigned URLs."""

from __future__ import annotations

import hashlib
import io
import logging
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Literal, cast

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from urllib3.exceptions import HTTPError as Urllib3Error

from gateway.errors import (
    AirlockError,
    ArtifactMissing,
    InvalidInput,
    PayloadTooLarge,
    StorageUnavailable,
    UploadMissing,
)
from gateway.storage.base import DirectUploads, StoredObject, UploadedPart

if TYPE_CHECKING:
    from types_boto3_s3 import S3Client

log = logging.getLogger(__name__)

MIN_PART = 5 * 1024**2  # S3's smallest part except the last
MAX_PARTS = 10_000
MAX_PRESIGN_SECONDS = 7 * 86400  # SigV4's longest validity
MISSING = frozenset({"NoSuchKey", "404", "NotFound"})
BAD_PARTS = frozenset({"EntityTooSmall", "InvalidPart", "InvalidPartOrder"})


@dataclass(frozen=True)
class S3Options:
    """How to reach the object store (endpoint and credentials default to boto3's chain)."""

    endpoint_url: str | None = None
    region: str | None = None
    addressing_style: str = "auto"
    access_key_id: str | None = None
    secret_access_key: str | None = field(default=None, repr=False)
    part_size: int = 64 * 1024**2
    connect_timeout: float = 5.0
    read_timeout: float = 60.0


def s3_client(options: S3Options) -> S3Client:
    """A boto3 S3 client with bounded timeouts and retries, checksums only where required."""
    session = boto3.session.Session(
        aws_access_key_id=options.access_key_id,
        aws_secret_access_key=options.secret_access_key,
        region_name=options.region,
    )
    config = Config(
        signature_version="s3v4",
        s3={"addressing_style": _addressing(options.addressing_style)},
        connect_timeout=options.connect_timeout,
        read_timeout=options.read_timeout,
        retries={"max_attempts": 3, "mode": "standard"},
        # MinIO, R2 and older S3 clones reject the CRC headers newer botocore adds by default.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    return session.client(
        "s3",
        endpoint_url=options.endpoint_url,
        region_name=session.region_name or "us-east-1",
        config=config,
    )


def _addressing(style: str) -> Literal["auto", "virtual", "path"]:
    if style not in ("auto", "virtual", "path"):
        raise ValueError(f"S3 addressing style must be auto, virtual or path, not {style!r}")
    return cast(Literal["auto", "virtual", "path"], style)


@contextmanager
def translated(key: str) -> Iterator[None]:
    """Turn botocore and urllib3 errors into our domain errors (none escapes this module)."""
    try:
        yield
    except ClientError as exc:
        raise _client_error(exc, key) from exc
    except (BotoCoreError, Urllib3Error) as exc:
        log.warning("object storage unreachable: %s", exc)
        raise StorageUnavailable(
            f"object storage is unreachable ({type(exc).__name__}); try again shortly"
        ) from exc


def _client_error(exc: ClientError, key: str) -> AirlockError:
    code = str(exc.response.get("Error", {}).get("Code", ""))
    if code in MISSING:
        return ArtifactMissing(f"stored object {key} is missing")
    if code == "NoSuchUpload":
        return UploadMissing(f"the multipart upload of {key} is no longer in storage")
    if code in BAD_PARTS:
        return InvalidInput(f"the storage refused the uploaded parts: {code}")
    log.warning("object storage refused a request (%s): %s", code, exc)
    return StorageUnavailable(f"object storage refused the request ({code or 'no code'})")


class S3Storage:
    """Blobs under `prefix` in one bucket; downloads and pushes go straight to S3."""

    def __init__(
        self, bucket: str, prefix: str = "", *, options: S3Options, client: Any = None
    ) -> None:
        if not bucket:
            raise ValueError("an s3:// storage URL needs a bucket: s3://bucket/prefix")
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.part_size = max(options.part_size, MIN_PART)
        self.client: S3Client = client or s3_client(options)

    def _key(self, key: str) -> str:
        if not key or key.startswith("/") or ".." in key.split("/"):
            raise InvalidInput("invalid storage key")
        return self.prefix + key

    def put_stream(
        self, key: str, stream: BinaryIO, *, max_bytes: int, expected_sha256: str | None = None
    ) -> StoredObject:
        """Upload a stream, checking size and digest before the object becomes visible.

        Small objects are one PUT of a buffered body; larger ones a multipart upload that is
        completed only after the last part's digest checks out, and aborted otherwise.
        """
        first = _read_full(stream, self.part_size)
        if len(first) < self.part_size:
            stored = _check(key, [first], max_bytes, expected_sha256)
            with translated(key):
                self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=first)
            return stored
        return self._put_multipart(key, first, stream, max_bytes, expected_sha256)

    def _put_multipart(
        self, key: str, first: bytes, stream: BinaryIO, max_bytes: int, expected: str | None
    ) -> StoredObject:
        upload_id = self.create(key)
        try:
            digest, size, chunk = hashlib.sha256(), 0, first
            parts: list[UploadedPart] = []
            while chunk:
                size += len(chunk)
                if size > max_bytes:
                    raise PayloadTooLarge(f"upload exceeds {max_bytes} bytes")
                digest.update(chunk)
                parts.append(self._upload_part(key, upload_id, len(parts) + 1, chunk))
                chunk = _read_full(stream, self.part_size)
            actual = digest.hexdigest()
            if expected is not None and actual != expected:
                raise InvalidInput(
                    f"content sha256 {actual} does not match the declared {expected}"
                )
            self.complete(key, upload_id, parts)
        except BaseException:
            self._abort_quietly(key, upload_id)
            raise
        return StoredObject(key=key, size=size, sha256=actual)

    def _abort_quietly(self, key: str, upload_id: str) -> None:
        """Abort after a failed write without hiding why it failed (a lifecycle rule remains)."""
        try:
            self.abort(key, upload_id)
        except AirlockError as exc:
            log.warning("could not abort the multipart upload of %s: %s", key, exc.detail)

    def _upload_part(self, key: str, upload_id: str, number: int, data: bytes) -> UploadedPart:
        with translated(key):
            etag = self.client.upload_part(
                Bucket=self.bucket,
                Key=self._key(key),
                UploadId=upload_id,
                PartNumber=number,
                Body=data,
            )["ETag"]
        return UploadedPart(number, len(data), etag)

    def exists(self, key: str) -> bool:
        """Whether `key` holds an object (HeadObject)."""
        try:
            with translated(key):
                self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except ArtifactMissing:
            return False
        return True

    def size(self, key: str) -> int:
        """The object's size in bytes; ArtifactMissing if absent."""
        with translated(key):
            head = self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        return int(head["ContentLength"])

    def open_read(self, key: str) -> BinaryIO:
        """A seekable, buffered stream over ranged GETs of the object."""
        raw = _RangeReader(self, key, self.size(key))
        return cast(BinaryIO, io.BufferedReader(raw, buffer_size=1024 * 1024))

    def local_path(self, key: str) -> Path | None:
        """S3 objects have no local path: downloads redirect to presigned GETs."""
        return None

    def presign(self, key: str, *, method: str, expires_at: datetime) -> str | None:
        """A presigned GET or HEAD of the object, valid until `expires_at`."""
        operation = {"GET": "get_object", "HEAD": "head_object"}.get(method.upper())
        if operation is None:
            raise InvalidInput(f"cannot presign {method[:16]} for a download")
        with translated(key):
            return self.client.generate_presigned_url(
                operation,
                Params={"Bucket": self.bucket, "Key": self._key(key)},
                ExpiresIn=_seconds_until(expires_at),
            )

    def delete(self, key: str) -> None:
        """Delete the object (S3 deletes are idempotent)."""
        with translated(key):
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key))

    def list_keys(self, prefix: str) -> list[str]:
        """ListObjectsV2 under `prefix`, every page, as keys without this storage's prefix."""
        keys: list[str] = []
        paginator = self.client.get_paginator("list_objects_v2")
        with translated(prefix):
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self._key(prefix)):
                keys.extend(item["Key"][len(self.prefix) :] for item in page.get("Contents", []))
        return sorted(keys)

    def check(self) -> None:
        """HeadBucket: the bucket exists and our credentials reach it."""
        try:
            with translated(self.bucket):
                self.client.head_bucket(Bucket=self.bucket)
        except ArtifactMissing:
            raise StorageUnavailable(f"bucket {self.bucket} does not exist") from None

    def direct_uploads(self) -> DirectUploads | None:
        """Clients PUT parts straight to S3 through presigned URLs."""
        return self

    # -- DirectUploads -----------------------------------------------------------------------
    def create(self, key: str) -> str:
        """CreateMultipartUpload; its upload id."""
        with translated(key):
            return self.client.create_multipart_upload(Bucket=self.bucket, Key=self._key(key))[
                "UploadId"
            ]

    def part_url(self, key: str, upload_id: str, number: int, *, expires_at: datetime) -> str:
        """A presigned UploadPart URL for part `number`."""
        with translated(key):
            return self.client.generate_presigned_url(
                "upload_part",
                Params={
                    "Bucket": self.bucket,
                    "Key": self._key(key),
                    "UploadId": upload_id,
                    "PartNumber": number,
                },
                ExpiresIn=_seconds_until(expires_at),
            )

    def parts(self, key: str, upload_id: str) -> list[UploadedPart]:
        """ListParts, every page."""
        found: list[UploadedPart] = []
        marker = 0
        with translated(key):
            while True:
                page = self.client.list_parts(
                    Bucket=self.bucket,
                    Key=self._key(key),
                    UploadId=upload_id,
                    PartNumberMarker=marker,
                )
                parts = page.get("Parts", [])
                found += [UploadedPart(p["PartNumber"], p["Size"], p["ETag"]) for p in parts]
                if not page.get("IsTruncated"):
                    return found
                marker = int(page["NextPartNumberMarker"])

    def complete(self, key: str, upload_id: str, parts: Sequence[UploadedPart]) -> int:
        """CompleteMultipartUpload; the assembled object's size."""
        with translated(key):
            self.client.complete_multipart_upload(
                Bucket=self.bucket,
                Key=self._key(key),
                UploadId=upload_id,
                MultipartUpload={
                    "Parts": [{"PartNumber": p.number, "ETag": p.etag} for p in parts]
                },
            )
        return self.size(key)

    def abort(self, key: str, upload_id: str) -> None:
        """AbortMultipartUpload; an upload already gone counts as aborted."""
        try:
            with translated(key):
                self.client.abort_multipart_upload(
                    Bucket=self.bucket, Key=self._key(key), UploadId=upload_id
                )
        except UploadMissing:
            pass


class _RangeReader(io.RawIOBase):
    """Reads an object from any offset with one ranged GET per seek."""

    def __init__(self, storage: S3Storage, key: str, size: int) -> None:
        self.storage = storage
        self.key = key
        self.length = size
        self.pos = 0
        self.body: Any = None

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.length}[whence]
        target = max(0, base + offset)
        if target != self.pos:
            self._drop_body()
            self.pos = target
        return self.pos

    def readinto(self, buffer: Any) -> int:
        if self.pos >= self.length:
            return 0
        with translated(self.key):
            if self.body is None:
                self.body = self.storage.client.get_object(
                    Bucket=self.storage.bucket,
                    Key=self.storage._key(self.key),
                    Range=f"bytes={self.pos}-",
                )["Body"]
            data = self.body.read(len(buffer))
        buffer[: len(data)] = data
        self.pos += len(data)
        return len(data)

    def _drop_body(self) -> None:
        if self.body is not None:
            self.body.close()
            self.body = None

    def close(self) -> None:
        self._drop_body()
        super().close()


def _read_full(stream: BinaryIO, size: int) -> bytes:
    """Up to `size` bytes, fewer only at the end of the stream."""
    chunks, missing = [], size
    while missing > 0:
        chunk = stream.read(missing)
        if not chunk:
            break
        chunks.append(chunk)
        missing -= len(chunk)
    return b"".join(chunks)


def _check(key: str, chunks: list[bytes], max_bytes: int, expected: str | None) -> StoredObject:
    digest, size = hashlib.sha256(), 0
    for chunk in chunks:
        digest.update(chunk)
        size += len(chunk)
    if size > max_bytes:
        raise PayloadTooLarge(f"upload exceeds {max_bytes} bytes")
    actual = digest.hexdigest()
    if expected is not None and actual != expected:
        raise InvalidInput(f"content sha256 {actual} does not match the declared {expected}")
    return StoredObject(key=key, size=size, sha256=actual)


def _seconds_until(expires_at: datetime) -> int:
    seconds = math.ceil((expires_at - datetime.now(UTC)).total_seconds())
    return min(max(seconds, 1), MAX_PRESIGN_SECONDS)
