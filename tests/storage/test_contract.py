"""One contract, two backends: LocalStorage and S3Storage (on a moto S3 server) behave alike."""

from __future__ import annotations

import hashlib
import io
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from gateway.errors import ArtifactMissing, InvalidInput, PayloadTooLarge
from gateway.storage import LocalStorage, S3Storage, Storage
from tests.s3_servers import S3Server
from tests.storage.conftest import PART, s3_storage

BIG = os.urandom(2 * PART + 12345)  # three parts on S3


@pytest.fixture(params=["local", "s3"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    if request.param == "local":
        return LocalStorage(tmp_path / "blobs")
    server: S3Server = request.getfixturevalue("moto")
    return s3_storage(server)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def leftovers(storage: Storage) -> list[str]:
    """Temporary files or unfinished multipart uploads a failed write left behind."""
    if isinstance(storage, LocalStorage):
        return [p.name for p in storage.root.rglob(".upload-*")]
    assert isinstance(storage, S3Storage)
    listing = storage.client.list_multipart_uploads(Bucket=storage.bucket)
    return [u["Key"] for u in listing.get("Uploads", [])]


@pytest.mark.parametrize("data", [b"", b"small blob", BIG], ids=["empty", "small", "multipart"])
def test_what_is_written_reads_back_with_its_size_and_digest(storage: Storage, data: bytes) -> None:
    stored = storage.put_stream(
        "a/b", io.BytesIO(data), max_bytes=len(BIG), expected_sha256=sha(data)
    )
    assert (stored.key, stored.size, stored.sha256) == ("a/b", len(data), sha(data))
    assert storage.exists("a/b")
    with storage.open_read("a/b") as stream:
        assert stream.read() == data
    assert leftovers(storage) == []


def test_reads_seek_anywhere(storage: Storage) -> None:
    storage.put_stream("big", io.BytesIO(BIG), max_bytes=len(BIG))
    with storage.open_read("big") as stream:
        stream.seek(PART + 7)
        assert stream.read(10) == BIG[PART + 7 : PART + 17]
        stream.seek(0)
        assert stream.read(4) == BIG[:4]
        stream.seek(-3, io.SEEK_END)
        assert stream.read() == BIG[-3:]


@pytest.mark.parametrize("data", [b"small blob", BIG], ids=["small", "multipart"])
def test_a_wrong_digest_leaves_nothing_behind(storage: Storage, data: bytes) -> None:
    with pytest.raises(InvalidInput, match="does not match"):
        storage.put_stream("k", io.BytesIO(data), max_bytes=len(BIG), expected_sha256=sha(b"other"))
    assert not storage.exists("k")
    assert leftovers(storage) == []


@pytest.mark.parametrize("data", [b"small blob", BIG], ids=["small", "multipart"])
def test_too_many_bytes_leave_nothing_behind(storage: Storage, data: bytes) -> None:
    with pytest.raises(PayloadTooLarge):
        storage.put_stream("k", io.BytesIO(data), max_bytes=len(data) - 1)
    assert not storage.exists("k")
    assert leftovers(storage) == []


def test_a_missing_object_is_artifact_missing_and_deleting_it_is_a_no_op(storage: Storage) -> None:
    assert not storage.exists("nope")
    with pytest.raises(ArtifactMissing):
        storage.open_read("nope")
    storage.delete("nope")
    storage.put_stream("gone", io.BytesIO(b"x"), max_bytes=1)
    storage.delete("gone")
    assert not storage.exists("gone")


def test_list_keys_names_every_object_under_a_prefix_sorted(storage: Storage) -> None:
    assert storage.list_keys("audit/checkpoints/") == []
    for key in ("audit/checkpoints/02.note", "audit/checkpoints/01.note", "audit/other", "x"):
        storage.put_stream(key, io.BytesIO(b"n"), max_bytes=1)
    assert storage.list_keys("audit/checkpoints/") == [
        "audit/checkpoints/01.note",
        "audit/checkpoints/02.note",
    ]
    with pytest.raises(InvalidInput):
        storage.list_keys("../")


def test_keys_cannot_escape_the_root(storage: Storage) -> None:
    with pytest.raises(InvalidInput):
        storage.put_stream("../outside", io.BytesIO(b"x"), max_bytes=1)


def test_the_readiness_check_passes_on_a_working_backend(storage: Storage) -> None:
    storage.check()


def test_local_serves_its_own_urls_and_s3_presigns(storage: Storage) -> None:
    storage.put_stream("k", io.BytesIO(b"x"), max_bytes=1)
    expires = datetime.now(UTC) + timedelta(minutes=5)
    url = storage.presign("k", method="GET", expires_at=expires)
    if isinstance(storage, LocalStorage):
        assert url is None
        assert storage.local_path("k") == storage.root / "k"
        assert storage.direct_uploads() is None
    else:
        assert url is not None and "X-Amz-Signature=" in url
        assert storage.local_path("k") is None
        assert storage.direct_uploads() is storage
