"""A live `airlock demo` process and what talks to it, for end-to-end tests."""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Server:
    """A live demo deployment."""

    endpoint: str
    tokens: dict[str, str]
    tmp: Path

    def get(self, path: str, role: str) -> Any:
        request = urllib.request.Request(
            self.endpoint + path, headers={"Authorization": f"Bearer {self.tokens[role]}"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.load(response)

    def hub_env(self, name: str, token: str | None = None) -> dict[str, str]:
        """Environment for a client process: our endpoint, a private cache, no Xet."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "AIRLOCK_"))}
        env.update(
            HF_ENDPOINT=self.endpoint,
            HF_HOME=str(self.tmp / f"{name}-home"),
            HF_HUB_CACHE=str(self.tmp / f"{name}-cache"),
            HF_HUB_DISABLE_TELEMETRY="1",
            HF_HUB_ENABLE_HF_TRANSFER="0",
            HF_HUB_DISABLE_XET="1",
            HF_HUB_DISABLE_PROGRESS_BARS="1",
        )
        if token:
            env["HF_TOKEN"] = token
        return env


def wait_healthy(endpoint: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"airlock demo exited with {process.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(endpoint + "/healthz", timeout=1):
                return
        except (urllib.error.URLError, OSError):
            time.sleep(0.1)
    pytest.fail(f"airlock demo did not become healthy in 30 s:\n{log.read_text()}")


def sign_in(page: Any, link: str) -> None:
    """Open a one-time login link in a Playwright page and press its button, as a person does
    (opening the link alone signs nothing in); the home page once signed in."""
    page.goto(link)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url("**/ui/")
