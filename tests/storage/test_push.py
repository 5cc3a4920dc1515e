"""`airlock push` to a gateway over S3: parts go straight to storage, and a rerun resumes."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from gateway.app import create_app
from gateway.cli import main
from gateway.client import ApiClient, LocalFile, send_file
from gateway.db.models import MultipartUpload, Role
from gateway.services.container import Airlock, build_airlock
from gateway.settings import Settings
from gateway.storage import S3Storage
from tests.factories import Actor, World
from tests.ports import serving
from tests.s3_servers import S3Server, part_puts
from tests.storage.conftest import PART

BIG = bytes(range(251)) * (2 * PART // 251 + 1)  # three parts, the last a partial one
FILES = {"config.json": b'{"model_type": "test"}', "weights/big.raw": BIG, "empty.txt": b""}


@dataclass
class Live:
    """A gateway over S3 served on a loopback port, and a publisher of acme."""

    endpoint: str
    airlock: Airlock
    publisher: Actor

    @property
    def storage(self) -> S3Storage:
        assert isinstance(self.airlock.storage, S3Storage)
        return self.airlock.storage


@pytest.fixture
def live(settings: Settings, moto: S3Server) -> Iterator[Live]:
    airlock = build_airlock(
        settings.with_overrides(**moto.overrides(moto.new_bucket()), upload_part_bytes=PART)
    )
    world = World(airlock)
    world.org("acme")
    publisher = world.actor("pat", org="acme", role=Role.PUBLISHER)
    try:
        with serving(create_app(airlock=airlock)) as url:
            yield Live(url, airlock, publisher)
    finally:
        airlock.close()


def model_dir(tmp_path: Path) -> Path:
    for name, data in FILES.items():
        (tmp_path / "model" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "model" / name).write_bytes(data)
    return tmp_path / "model"


def push(live: Live, directory: Path) -> tuple[int, str]:
    args = ["push", str(directory), "acme/big", "--endpoint", live.endpoint]
    result = CliRunner().invoke(main, [*args, "--token", live.publisher.token])
    return result.exit_code, result.output


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_push_sends_parts_straight_to_s3_and_commits(
    live: Live, moto: S3Server, tmp_path: Path
) -> None:
    before = part_puts(moto)
    code, output = push(live, model_dir(tmp_path))
    assert code == 0, output
    assert "acme/big@" in output and "3 files" in output and "vetting: " in output
    assert part_puts(moto) - before == 5  # three parts of the big file, one for each other
    with live.airlock.db.session() as s:
        assert s.scalars(select(MultipartUpload)).all() == []  # completed uploads leave no row
    code, output = push(live, model_dir(tmp_path))  # again: everything is stored already
    assert code == 0 and part_puts(moto) - before == 5


def test_an_interrupted_push_resumes_sending_only_the_missing_parts(
    live: Live, moto: S3Server, tmp_path: Path
) -> None:
    directory = model_dir(tmp_path)
    ApiClient(live.endpoint, live.publisher.token).request(
        "POST", "/api/v1/models", {"repo_id": "acme/big"}
    )
    big = LocalFile("weights/big.raw", directory / "weights/big.raw", len(BIG), digest(BIG))

    def interrupt(number: int) -> None:
        raise KeyboardInterrupt  # the publisher presses Ctrl-C once a part has landed

    client = ApiClient(live.endpoint, live.publisher.token)
    with pytest.raises(KeyboardInterrupt):
        send_file(client, "acme/big", big, lambda _: None, on_part=interrupt, concurrency=1)
    with live.airlock.db.session() as s:
        upload = s.scalars(select(MultipartUpload)).one()
    landed = len(live.storage.parts(upload.storage_key, upload.storage_upload_id))
    assert 1 <= landed < 3

    before = part_puts(moto)
    code, output = push(live, directory)
    assert code == 0, output
    assert (
        f"resumed weights/big.raw: {landed} parts were already uploaded, sent {3 - landed}"
        in output
    )
    assert part_puts(moto) - before == (3 - landed) + 2  # the missing parts, and the small files
    with live.storage.open_read(upload.storage_key) as stream:
        assert digest(stream.read()) == digest(BIG)
