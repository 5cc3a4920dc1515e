"""Inference upstreams: any OpenAI-compatible server, behind a small Protocol.

Transport errors and upstream statuses are translated here into `UpstreamFailed` with the
status the gateway answers (502 bad answer, 503 unreachable or overloaded, 504 too slow);
no urllib3 exception escapes.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import urllib3
from urllib3.exceptions import HTTPError, NewConnectionError, ProtocolError, TimeoutError

from gateway.errors import UpstreamFailed

MAX_EVENT_BYTES = 4 * 1024**2


@dataclass(frozen=True)
class UpstreamTarget:
    """Where a model's requests go, the credential sent there (never logged), and the name
    the upstream serves the model under when it is not the Airlock repo id."""

    base_url: str
    api_key: str | None = None
    model: str | None = None

    def __repr__(self) -> str:
        return f"UpstreamTarget({self.base_url!r})"


class UpstreamReply(Protocol):
    """An open answer: a JSON body, or a stream of server-sent events."""

    def json(self) -> dict[str, Any]:
        """The whole JSON body (non-streaming)."""
        ...

    def events(self) -> Iterator[bytes]:
        """Each complete event (`data: ...\\n\\n`) as it arrives."""
        ...

    def close(self) -> None:
        """End the request (also mid-stream: the upstream stops generating)."""
        ...


class Upstream(Protocol):
    """Sends one OpenAI-style request to a model's upstream."""

    def send(self, target: UpstreamTarget, path: str, body: dict[str, Any]) -> UpstreamReply:
        """POST `body` to `target.base_url + path`; UpstreamFailed unless the status is 2xx."""
        ...


class HttpUpstream:
    """Upstreams over HTTP(S) with pooled connections (urllib3)."""

    def __init__(self, *, timeout: float, connect_timeout: float = 5.0) -> None:
        self.pool = urllib3.PoolManager(maxsize=32, block=False, retries=False)
        self.timeout = urllib3.Timeout(connect=min(connect_timeout, timeout), read=timeout)

    def send(self, target: UpstreamTarget, path: str, body: dict[str, Any]) -> UpstreamReply:
        """POST the body; the reply is left unread so a stream can be passed on as it comes."""
        headers = {"Content-Type": "application/json", "Accept-Encoding": "identity"}
        if target.api_key:
            headers["Authorization"] = f"Bearer {target.api_key}"
        url = target.base_url.rstrip("/") + path
        try:
            response = self.pool.request(
                "POST",
                url,
                body=json.dumps(body).encode(),
                headers=headers,
                timeout=self.timeout,
                preload_content=False,
                redirect=False,
            )
        except HTTPError as exc:
            raise translate(exc) from None
        if not 200 <= response.status < 300:
            response.drain_conn()
            response.release_conn()
            refused = (
                " (it refused the gateway's credential)" if response.status in (401, 403) else ""
            )
            raise UpstreamFailed(
                f"the model's upstream answered {response.status}{refused}",
                status=503 if response.status in (429, 503) else 502,
            )
        return HttpReply(response)

    def close(self) -> None:
        """Close pooled connections."""
        self.pool.clear()


class HttpReply:
    """An upstream answer read lazily from its socket."""

    def __init__(self, response: urllib3.BaseHTTPResponse) -> None:
        self.response = response

    def json(self) -> dict[str, Any]:
        """The whole body as a JSON object; 502 if it is not one."""
        try:
            found = json.loads(self.response.read())
        except HTTPError as exc:
            raise translate(exc) from None
        except ValueError:
            raise UpstreamFailed("the model's upstream sent a body that is not JSON") from None
        finally:
            self.close()
        if not isinstance(found, dict):
            raise UpstreamFailed("the model's upstream sent a body that is not a JSON object")
        return found

    def events(self) -> Iterator[bytes]:
        """Complete SSE events, one at a time; a cut stream raises UpstreamFailed."""
        pending = b""
        try:
            # read1, not stream(n): stream(n) waits for n bytes unless the body is chunked, so
            # an HTTP/1.0 upstream's events would be held until the stream ended.
            while chunk := self.response.read1(64 * 1024, decode_content=False):
                pending += chunk.replace(b"\r\n", b"\n")
                while b"\n\n" in pending:
                    event, pending = pending.split(b"\n\n", 1)
                    if event.strip():
                        yield event + b"\n\n"
                if len(pending) > MAX_EVENT_BYTES:
                    raise UpstreamFailed("the model's upstream sent an oversized event")
        except HTTPError as exc:
            raise translate(exc) from None
        finally:
            self.close()

    def close(self) -> None:
        """Drop the connection (an unfinished stream cannot be reused)."""
        self.response.close()
        self.response.release_conn()


def translate(exc: HTTPError) -> UpstreamFailed:
    """Our error for a transport failure: 504 for slowness, 503 unreachable, 502 otherwise."""
    if isinstance(exc, NewConnectionError):  # a ConnectTimeoutError subclass: check it first
        return UpstreamFailed("the model's upstream cannot be reached", status=503)
    if isinstance(exc, TimeoutError):
        return UpstreamFailed("the model's upstream did not answer in time", status=504)
    if isinstance(exc, ProtocolError):
        return UpstreamFailed("the model's upstream broke off the connection", status=502)
    return UpstreamFailed("the model's upstream failed", status=502)
