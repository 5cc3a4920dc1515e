"""S3Storage against real S3 servers: presigned URLs (s3rver enforces them), multipart, errors."""

from __future__ import annotations

import io
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import pytest

from gateway.errors import ArtifactMissing, StorageUnavailable, UploadMissing
from gateway.storage import S3Options, S3Storage, storage_from_url
from tests.ports import free_port
from tests.s3_servers import S3Server
from tests.storage.conftest import PART, s3_storage

DATA = bytes(range(256)) * 64  # 16 KiB


def fetch(url: str, **headers: str) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def soon(seconds: int = 300) -> datetime:
    return datetime.now(UTC) + timedelta(seconds=seconds)


def with_query(url: str, **changes: str) -> str:
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query)) | changes
    return urlunsplit(parts._replace(query=urlencode(query)))


@pytest.fixture
def strict(strict_s3: S3Server) -> S3Storage:
    storage = s3_storage(strict_s3)
    storage.put_stream("model.bin", io.BytesIO(DATA), max_bytes=len(DATA))
    return storage


# -- presigned GETs, on a server that checks them --------------------------------------------------
def test_a_presigned_get_serves_the_object(strict: S3Storage) -> None:
    url = strict.presign("model.bin", method="GET", expires_at=soon())
    assert url is not None
    assert fetch(url) == (200, DATA)


def test_a_presigned_get_answers_ranges_with_206(strict: S3Storage) -> None:
    url = strict.presign("model.bin", method="GET", expires_at=soon())
    assert url is not None
    assert fetch(url, Range="bytes=100-199") == (206, DATA[100:200])
    assert fetch(url, Range="bytes=16000-") == (206, DATA[16000:])


def test_a_tampered_presigned_get_is_refused(strict: S3Storage) -> None:
    url = strict.presign("model.bin", method="GET", expires_at=soon())
    assert url is not None
    signature = dict(parse_qsl(urlsplit(url).query))["X-Amz-Signature"]
    forged = "0" if signature[0] != "0" else "1"
    status, body = fetch(with_query(url, **{"X-Amz-Signature": forged + signature[1:]}))
    assert status == 403 and b"SignatureDoesNotMatch" in body
    status, body = fetch(with_query(url, **{"X-Amz-Expires": "604800"}))  # a longer life
    assert status == 403 and b"SignatureDoesNotMatch" in body
    other = url.replace("/model.bin?", "/other.bin?")  # another object, same signature
    assert fetch(other)[0] == 403


def test_an_expired_presigned_get_is_refused(strict: S3Storage) -> None:
    url = strict.presign("model.bin", method="GET", expires_at=soon(1))
    assert url is not None
    time.sleep(2.1)  # past its one-second life: what is checked is the status, not a duration
    status, body = fetch(url)
    assert status == 403 and b"expired" in body.lower()


# -- direct multipart uploads ----------------------------------------------------------------------
def put(url: str, data: bytes) -> int:
    request = urllib.request.Request(
        url, data=data, method="PUT", headers={"Content-Type": "application/octet-stream"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return int(response.status)


def put_status(url: str, data: bytes) -> tuple[int, bytes]:
    try:
        return put(url, data), b""
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_a_presigned_part_url_is_good_for_its_part_only(strict_s3: S3Server) -> None:
    storage = s3_storage(strict_s3)
    upload_id = storage.create("blob")
    url = storage.part_url("blob", upload_id, 1, expires_at=soon())
    for forged in (
        with_query(url, partNumber="2"),
        with_query(url, uploadId="another-upload"),
        url.replace("/blob?", "/other?"),
    ):
        status, body = put_status(forged, b"bytes")
        assert status == 403 and b"SignatureDoesNotMatch" in body
    assert put_status(url, b"bytes")[0] == 200


def test_parts_put_to_presigned_urls_assemble_into_the_object(moto: S3Server) -> None:
    storage = s3_storage(moto)
    data = bytes(PART) + b"tail"
    upload_id = storage.create("blob")
    assert put(storage.part_url("blob", upload_id, 2, expires_at=soon()), b"tail") == 200
    assert [(p.number, p.size) for p in storage.parts("blob", upload_id)] == [(2, 4)]
    assert put(storage.part_url("blob", upload_id, 1, expires_at=soon()), bytes(PART)) == 200
    parts = storage.parts("blob", upload_id)
    assert [(p.number, p.size) for p in parts] == [(1, PART), (2, 4)]
    assert not storage.exists("blob")  # nothing is visible before completion
    assert storage.complete("blob", upload_id, parts) == len(data)
    with storage.open_read("blob") as stream:
        assert stream.read() == data


def test_an_aborted_upload_is_gone_and_aborting_twice_is_fine(moto: S3Server) -> None:
    storage = s3_storage(moto)
    upload_id = storage.create("blob")
    storage.abort("blob", upload_id)
    storage.abort("blob", upload_id)
    with pytest.raises(UploadMissing):
        storage.parts("blob", upload_id)


# -- errors are ours at the boundary ---------------------------------------------------------------
def test_an_unreachable_endpoint_is_storage_unavailable() -> None:
    options = S3Options(
        endpoint_url=f"http://127.0.0.1:{free_port()}",  # nothing listens there
        addressing_style="path",
        access_key_id="x",
        secret_access_key="x",
        connect_timeout=1,
    )
    storage = S3Storage("bucket", options=options)
    for call in (
        storage.check,
        lambda: storage.exists("k"),
        lambda: storage.open_read("k"),
        lambda: storage.put_stream("k", io.BytesIO(b"x"), max_bytes=1),
        lambda: storage.delete("k"),
    ):
        with pytest.raises(StorageUnavailable) as caught:
            call()
        assert caught.value.code == "storage_unavailable"


def test_a_missing_bucket_fails_the_check_and_reads_fail_closed(moto: S3Server) -> None:
    options = S3Options(
        endpoint_url=moto.endpoint,
        addressing_style="path",
        access_key_id=moto.access_key,
        secret_access_key=moto.secret_key,
    )
    storage = S3Storage("no-such-bucket-here", options=options)
    with pytest.raises(StorageUnavailable):
        storage.check()
    with pytest.raises((StorageUnavailable, ArtifactMissing)):
        storage.open_read("k")


def test_wrong_credentials_are_storage_unavailable(strict_s3: S3Server) -> None:
    bucket = strict_s3.new_bucket()
    options = S3Options(
        endpoint_url=strict_s3.endpoint,
        addressing_style="path",
        access_key_id=strict_s3.access_key,
        secret_access_key="not-the-secret",
    )
    with pytest.raises(StorageUnavailable, match="refused"):
        S3Storage(bucket, options=options).check()


def test_storage_urls_name_bucket_and_prefix() -> None:
    storage = storage_from_url("s3://models/prod/blobs/", s3=S3Options(region="eu-west-1"))
    assert isinstance(storage, S3Storage)
    assert (storage.bucket, storage.prefix) == ("models", "prod/blobs/")
    with pytest.raises(ValueError, match="bucket"):
        storage_from_url("s3:///prefix")


def test_the_secret_access_key_stays_out_of_the_options_repr() -> None:
    options = S3Options(access_key_id="AKIAEXAMPLE", secret_access_key="wJalr-not-for-logs")
    assert "wJalr-not-for-logs" not in repr(options)
    assert "AKIAEXAMPLE" in repr(options)
