"""What deploy/ must agree with: the variables settings.py reads and the `airlock` commands."""

from __future__ import annotations

import os
import shutil
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path

import click
import pytest

from gateway.cli import main
from gateway.settings import load_settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
VENV_BIN = Path(sys.executable).parent


class RecordingEnv(Mapping[str, str]):
    """An environment holding `values` that remembers every name it was asked for."""

    def __init__(self, values: dict[str, str]) -> None:
        self.values = values
        self.asked: set[str] = set()

    def __getitem__(self, key: str) -> str:
        self.asked.add(key)
        return self.values[key]

    def get(self, key: str, default: object = None) -> object:  # type: ignore[override]
        self.asked.add(key)
        return self.values.get(key, default)

    def __iter__(self) -> Iterator[str]:
        return iter(self.values)

    def __len__(self) -> int:
        return len(self.values)


def settings_variables(tmp_path: Path) -> frozenset[str]:
    """Every environment variable `load_settings` reads, found by letting it read them."""
    env = RecordingEnv({"AIRLOCK_DATA_DIR": str(tmp_path), "AIRLOCK_SECRET_KEY": "x"})
    load_settings(env)
    return frozenset(env.asked)


def cli_command_exists(argv: list[str]) -> bool:
    """Whether `airlock <argv...>` names a command (options after it are not checked)."""
    command: click.Command = main
    for word in argv:
        if word.startswith("-"):
            break
        if not isinstance(command, click.Group):
            break
        found = command.commands.get(word)
        if found is None:
            return False
        command = found
    return not isinstance(command, click.Group)


def wait_http(url: str, timeout: float = 30) -> None:
    """Wait until `url` answers at all (any status), or fail."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except urllib.error.HTTPError:
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def require(tool: str) -> str:
    """The path of `tool`, or skip (fail in CI) when it is not installed."""
    found = shutil.which(tool, path=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin")
    if found:
        return found
    if os.environ.get("CI"):
        pytest.fail(f"{tool} is required in CI")
    pytest.skip(f"{tool} is not installed")


@pytest.fixture(scope="session")
def known_variables(tmp_path_factory: pytest.TempPathFactory) -> frozenset[str]:
    return settings_variables(tmp_path_factory.mktemp("settings"))
