"""LocalStorage specifics: the readiness check."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from gateway.errors import StorageUnavailable
from gateway.storage import LocalStorage


def test_the_check_fails_when_the_directory_is_gone(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "blobs")
    storage.check()
    shutil.rmtree(tmp_path / "blobs")
    with pytest.raises(StorageUnavailable, match="not a writable directory"):
        storage.check()
