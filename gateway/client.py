"""A small HTTP client of the /api/v1 surface for the CLI (standard library only)."""

from __future__ import annotations

import json
import os
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import quote

CHUNK = 1024 * 1024
PART_BATCH = 50  # part URLs asked for at a time: they expire, so not all of them up front
PART_ATTEMPTS = 3


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


class StorageError(Exception):
    """The object store refused a part PUT (its XML error, shortened)."""

    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"object storage answered {status} to a part PUT: {body}")
        self.status = status


@dataclass(frozen=True)
class Sent:
    """What pushing one file did: whether bytes were stored, and the parts sent or skipped."""

    sha256: str
    stored: bool
    parts_sent: int = 0
    parts_skipped: int = 0


class _Progress:
    """Wraps a file, reporting bytes read (at most `limit` of them)."""

    def __init__(
        self, handle: BinaryIO, report: Callable[[int], None], limit: int | None = None
    ) -> None:
        self.handle = handle
        self.report = report
        self.left = limit

    def read(self, size: int = -1) -> bytes:
        want = CHUNK if size < 0 else min(size, CHUNK)
        if self.left is not None:
            want = min(want, self.left)
            self.left -= want
        chunk = self.handle.read(want) if want else b""
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


def send_file(
    client: ApiClient,
    repo_id: str,
    file: LocalFile,
    report: Callable[[int], None],
    *,
    on_part: Callable[[int], None] | None = None,
    concurrency: int = 4,
) -> Sent:
    """Send one file the way the server says: skip it, stream it, or PUT its parts to S3.

    A multipart upload resumes where an earlier, interrupted push left it: parts the store
    already holds at the right size are skipped.
    """
    plan = client.request(
        "POST", f"{repo_path(repo_id)}/uploads", {"sha256": file.sha256, "size": file.size}
    )
    if plan["method"] == "stored":
        report(file.size)
        return Sent(file.sha256, stored=False)
    if plan["method"] == "stream":
        result = upload(client, repo_id, file, report)
        return Sent(file.sha256, stored=bool(result["stored"]))
    return _multipart(client, repo_id, file, plan, report, on_part, concurrency)


def _multipart(
    client: ApiClient,
    repo_id: str,
    file: LocalFile,
    plan: dict[str, Any],
    report: Callable[[int], None],
    on_part: Callable[[int], None] | None,
    concurrency: int,
) -> Sent:
    base = f"{repo_path(repo_id)}/uploads/{plan['upload_id']}"
    done = {part["number"] for part in plan["uploaded"]}
    report(sum(part["size"] for part in plan["uploaded"]))
    missing = [n for n in range(1, plan["part_count"] + 1) if n not in done]
    lock = threading.Lock()

    def locked_report(count: int) -> None:
        with lock:
            report(count)

    def send(part: dict[str, Any]) -> int:
        offset = (part["number"] - 1) * plan["part_size"]
        put_part(part["url"], file.source, offset, part["size"], locked_report)
        return int(part["number"])

    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        pending: set[Future[int]] = set()
        try:
            for part in _part_urls(client, base, missing):
                pending.add(pool.submit(send, part))
                if len(pending) >= 2 * concurrency:
                    pending = _settle(pending, on_part, FIRST_COMPLETED)
            _settle(pending, on_part, "ALL_COMPLETED")
        except BaseException:
            for future in pending:
                future.cancel()
            raise
    client.request("POST", f"{base}/complete")
    return Sent(file.sha256, stored=True, parts_sent=len(missing), parts_skipped=len(done))


def _part_urls(client: ApiClient, base: str, numbers: list[int]) -> Iterator[dict[str, Any]]:
    """Presigned part URLs, asked for a batch at a time as the upload goes."""
    for start in range(0, len(numbers), PART_BATCH):
        batch = numbers[start : start + PART_BATCH]
        yield from client.request("POST", f"{base}/parts", {"numbers": batch})["parts"]


def _settle(
    pending: set[Future[int]], on_part: Callable[[int], None] | None, when: str
) -> set[Future[int]]:
    finished, still = wait(pending, return_when=when)
    for future in finished:
        number = future.result()  # re-raises a part's failure
        if on_part is not None:
            on_part(number)
    return still


def put_part(url: str, source: Path, offset: int, size: int, report: Callable[[int], None]) -> None:
    """PUT `size` bytes of `source` from `offset` to a presigned URL (no Airlock token)."""
    for attempt in range(1, PART_ATTEMPTS + 1):
        sent = 0

        def counted(count: int) -> None:
            nonlocal sent
            sent += count
            report(count)

        try:
            _put_once(url, source, offset, size, counted)
            return
        except StorageError as exc:
            report(-sent)  # a retry sends these bytes again
            if attempt == PART_ATTEMPTS or exc.status < 500:
                raise
        except OSError as exc:  # URLError included: the store is unreachable
            report(-sent)
            if attempt == PART_ATTEMPTS:
                raise StorageError(0, f"cannot reach object storage ({exc})") from None


def _put_once(
    url: str, source: Path, offset: int, size: int, report: Callable[[int], None]
) -> None:
    with source.open("rb") as handle:
        handle.seek(offset)
        req = urllib.request.Request(  # noqa: S310 (a presigned URL our gateway handed out)
            url,
            data=_Progress(handle, report, size),
            method="PUT",
            headers={
                "Content-Length": str(size),
                "Content-Type": "application/octet-stream",  # urllib would say form data
                "User-Agent": "airlock-cli",
            },
        )
        try:
            with urllib.request.urlopen(req, timeout=300) as resp:  # noqa: S310
                resp.read()
        except urllib.error.HTTPError as exc:
            body = exc.read().decode("utf-8", "replace")[:300]
            raise StorageError(exc.code, body) from None
