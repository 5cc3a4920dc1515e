"""Storage fixtures: a moto S3 server and an s3rver, each started once for the package."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from gateway.storage import S3Options, S3Storage
from tests.s3_servers import S3Server, moto_server, s3rver

PART = 5 * 1024 * 1024  # S3's smallest part: multipart paths run with small files


@pytest.fixture(scope="package")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with moto_server(tmp_path_factory.mktemp("moto") / "moto.log") as server:
        yield server


@pytest.fixture(scope="package")
def strict_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """s3rver: unlike moto, it checks presigned signatures and expiry."""
    tmp = tmp_path_factory.mktemp("s3rver")
    with s3rver(tmp / "data", tmp / "s3rver.log") as server:
        yield server


def s3_storage(server: S3Server, prefix: str = "blobs") -> S3Storage:
    """An S3Storage over a fresh bucket of `server`."""
    options = S3Options(
        endpoint_url=server.endpoint,
        region=server.region,
        addressing_style="path",
        access_key_id=server.access_key,
        secret_access_key=server.secret_key,
        part_size=PART,
    )
    return S3Storage(server.new_bucket(), prefix, options=options)
