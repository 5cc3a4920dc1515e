"""A small HTTP client of the /api/v1 surface for the CLI (standard library only)."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import quote

CHUNK = 1024 * 1024


class ApiError(Exception):
    """A problem-details error from the server."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(body.get("detail") or body.get("title") or f"HTTP {status}")
        self.status = status
        self.body = body


@dataclass(frozen=True)
class ApiClient:
    """Talks to one Airlock endpoint with one token."""

    endpoint: str
    token: str | None
    timeout: float = 60.0

    def request(
        self,
        method: str,
        path: str,
        payload: Any = None,
        *,
        data: BinaryIO | None = None,
        length: int | None = None,
        content_type: str = "application/json",
    ) -> Any:
        """One request; JSON in and out; raises ApiError with the server's problem details."""
        body: Any = data
        headers = {"Accept": "application/json", "User-Agent": "airlock-cli"}
        if payload is not None:
            body = json.dumps(payload).encode()
        if body is not None:
            headers["Content-Type"] = content_type
        if length is not None:
            headers["Content-Length"] = str(length)
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        req = urllib.request.Request(  # noqa: S310 (the endpoint is the user's own Airlock)
            self.endpoint.rstrip("/") + path, data=body, method=method, headers=headers
        )
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:  # noqa: S310
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            raise ApiError(exc.code, _problem(exc.read(), exc.code)) from None
        return json.loads(raw) if raw else None


def _problem(raw: bytes, status: int) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except ValueError:
        return {"detail": raw.decode("utf-8", "replace")[:500] or f"HTTP {status}"}
    return body if isinstance(body, dict) else {"detail": str(body)}


def client_from_env(endpoint: str | None, token: str | None) -> ApiClient:
    """A client from flags or the AIRLOCK_ENDPOINT / AIRLOCK_TOKEN variables."""
    return ApiClient(
        endpoint or os.environ.get("AIRLOCK_ENDPOINT", "http://127.0.0.1:8000"),
        token or os.environ.get("AIRLOCK_TOKEN"),
    )


def repo_path(repo_id: str) -> str:
    """`org/name` as two URL path segments."""
    org, _, name = repo_id.partition("/")
    return f"/api/v1/models/{quote(org, safe='')}/{quote(name, safe='')}"


@dataclass(frozen=True)
class LocalFile:
    """A file found in a directory to push."""

    path: str
    source: Path
    size: int
    sha256: str


class _Progress:
    """Wraps a file, reporting bytes read."""

    def __init__(self, handle: BinaryIO, report: Callable[[int], None]) -> None:
        self.handle = handle
        self.report = report

    def read(self, size: int = -1) -> bytes:
        chunk = self.handle.read(CHUNK if size < 0 else min(size, CHUNK))
        self.report(len(chunk))
        return chunk


def upload(client: ApiClient, repo_id: str, file: LocalFile, report: Callable[[int], None]) -> Any:
    """Stream one file's bytes to the content-addressed upload endpoint."""
    with file.source.open("rb") as handle:
        return client.request(
            "PUT",
            f"{repo_path(repo_id)}/blobs/{file.sha256}",
            data=_Progress(handle, report),  # type: ignore[arg-type]
            length=file.size,
            content_type="application/octet-stream",
        )
