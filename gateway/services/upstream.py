"""Inference upstreams: any OpenAI-compatible server, behind a small Protocol.

Transport errors and upstream statuses are translated here into `UpstreamFailed` with the
status the gateway answers (502 bad answer, 503 unreachable or overloaded, 504 too slow);
no socket, TLS or http.client exception escapes.
"""

from __future__ import annotations

import contextlib
import json
import re
import ssl
import threading
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from http.client import HTTPConnection, HTTPException, HTTPResponse, HTTPSConnection
from typing import Any, Protocol
from urllib.parse import quote, urlsplit

from gateway.errors import UpstreamFailed
from gateway.sockets import readable_while_idle

MAX_EVENT_BYTES = 4 * 1024**2
HEADER_TOKEN = re.compile(r"[\x21-\x7e]+")  # printable ASCII, no spaces or line breaks
PATH_SAFE = "/%:@!$&'()*+,;=-._~"  # left as they are in a request line's path
POOL_SIZE = 32  # idle keep-alive connections kept per upstream; more are opened when needed


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

    def body(self) -> tuple[bytes, dict[str, Any]]:
        """The whole JSON body (non-streaming) as sent, and parsed."""
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


@dataclass(frozen=True)
class _Origin:
    """Where a base URL's connections go, and the path prefix of its requests."""

    https: bool
    host: str
    port: int | None
    prefix: str  # percent-encoded where a request line needs it
    host_header: str


class HttpUpstream:
    """Upstreams over HTTP(S) (http.client), with pooled keep-alive connections per upstream;
    a connection the upstream closed while idle is replaced before it is used, and none is
    retried after a request was sent (a POST may not be sent twice)."""

    def __init__(self, *, timeout: float, connect_timeout: float = 5.0) -> None:
        self.timeout = timeout
        self.connect_timeout = min(connect_timeout, timeout)
        self.tls = ssl.create_default_context()  # the system's CAs, hostnames checked
        self.idle: dict[_Origin, list[HTTPConnection]] = {}
        self.origins: dict[str, _Origin] = {}
        self.lock = threading.Lock()
        # Idle sockets are closed when the upstream is (or when it is collected, as urllib3's
        # pools are), never left to the garbage collector's ResourceWarning.
        self._finalizer = weakref.finalize(self, _close_idle, self.idle)

    def send(self, target: UpstreamTarget, path: str, body: dict[str, Any]) -> UpstreamReply:
        """POST the body; the reply is left unread so a stream can be passed on as it comes."""
        origin = self._origin(target.base_url)
        payload = json.dumps(body).encode()
        request = _request_head(origin, path, len(payload), target.api_key) + payload
        conn = self._checkout(origin)
        assert conn.sock is not None
        response = HTTPResponse(conn.sock, method="POST")
        try:
            # Headers and body in one write (http.client writes them apart): one packet, and
            # one wake-up of the upstream instead of two.
            conn.sock.sendall(request)
            response.begin()
        except (OSError, HTTPException) as exc:
            response.close()
            conn.close()
            raise translate(exc) from None
        reply = HttpReply(response, conn, self, origin)
        if not 200 <= response.status < 300:
            reply.drain()
            refused = (
                " (it refused the gateway's credential)" if response.status in (401, 403) else ""
            )
            raise UpstreamFailed(
                f"the model's upstream answered {response.status}{refused}",
                status=503 if response.status in (429, 503) else 502,
            )
        return reply

    def close(self) -> None:
        """Close pooled connections."""
        with self.lock:
            _close_idle(self.idle)

    def _origin(self, base_url: str) -> _Origin:
        found = self.origins.get(base_url)
        if found is None:
            parts = urlsplit(base_url)
            https, host = parts.scheme == "https", parts.hostname or ""
            found = _Origin(
                https,
                host,
                parts.port,
                quote(parts.path.rstrip("/"), safe=PATH_SAFE),
                _host_header(host, parts.port, 443 if https else 80),
            )
            self.origins[base_url] = found
        return found

    def _checkout(self, origin: _Origin) -> HTTPConnection:
        """An idle connection still open, or a new one (connect errors translated)."""
        with self.lock:
            idle = self.idle.get(origin)
            while idle:
                conn = idle.pop()
                if conn.sock is not None and not readable_while_idle(conn.sock):
                    return conn
                conn.close()
        conn = self._connection(origin)
        try:
            conn.connect()
            assert conn.sock is not None
            conn.sock.settimeout(self.timeout)  # the read timeout from here on
        except (OSError, HTTPException) as exc:
            conn.close()
            raise translate(exc, connecting=True) from None
        return conn

    def _connection(self, origin: _Origin) -> HTTPConnection:
        if origin.https:
            return HTTPSConnection(
                origin.host, origin.port, timeout=self.connect_timeout, context=self.tls
            )
        return HTTPConnection(origin.host, origin.port, timeout=self.connect_timeout)

    def checkin(self, origin: _Origin, conn: HTTPConnection) -> None:
        """Keep a connection whose answer was read to its end for the next request."""
        if conn.sock is None:
            return
        with self.lock:
            idle = self.idle.setdefault(origin, [])
            if len(idle) < POOL_SIZE:
                idle.append(conn)
                return
        conn.close()


class HttpReply:
    """An upstream answer read lazily from its socket."""

    def __init__(
        self, response: HTTPResponse, conn: HTTPConnection, owner: HttpUpstream, origin: _Origin
    ) -> None:
        self.response = response
        self.conn = conn
        self.owner = owner
        self.origin = origin

    def body(self) -> tuple[bytes, dict[str, Any]]:
        """The whole body as sent, and as a JSON object; 502 if it is not one."""
        data = self._read()
        try:
            found = json.loads(data)
        except ValueError:
            raise UpstreamFailed("the model's upstream sent a body that is not JSON") from None
        if not isinstance(found, dict):
            raise UpstreamFailed("the model's upstream sent a body that is not a JSON object")
        return data, found

    def drain(self) -> None:
        """Read and drop the body (an error answer), keeping the connection if it can be."""
        with contextlib.suppress(UpstreamFailed):
            self._read()

    def events(self) -> Iterator[bytes]:
        """Complete SSE events, one at a time; a cut stream raises UpstreamFailed."""
        pending = b""
        try:
            # read1, not read(n): read(n) waits for n bytes unless the body is chunked, so an
            # HTTP/1.0 upstream's events would be held until the stream ended.
            while chunk := self.response.read1(64 * 1024):
                pending += chunk.replace(b"\r\n", b"\n")
                while b"\n\n" in pending:
                    event, pending = pending.split(b"\n\n", 1)
                    if event.strip():
                        yield event + b"\n\n"
                if len(pending) > MAX_EVENT_BYTES:
                    raise UpstreamFailed("the model's upstream sent an oversized event")
        except (OSError, HTTPException) as exc:
            raise translate(exc) from None
        finally:
            self.close()

    def close(self) -> None:
        """Drop the connection (an unfinished stream cannot be reused)."""
        self.response.close()
        self.conn.close()

    def _read(self) -> bytes:
        """The whole body; the connection goes back to the pool unless the upstream closes it."""
        try:
            data = self.response.read()
        except (OSError, HTTPException) as exc:
            self.close()
            raise translate(exc) from None
        if self.response.will_close:
            self.close()
        else:
            self.owner.checkin(self.origin, self.conn)
        return data


def _request_head(origin: _Origin, path: str, length: int, api_key: str | None) -> bytes:
    """The request line and headers of a JSON POST (HTTP/1.1, keep-alive)."""
    lines = [
        f"POST {origin.prefix}{path} HTTP/1.1",
        f"Host: {origin.host_header}",
        "Content-Type: application/json",
        "Accept-Encoding: identity",
        "User-Agent: airlock",
        f"Content-Length: {length}",
    ]
    if api_key:
        if not HEADER_TOKEN.fullmatch(api_key):  # a line break would inject headers
            raise UpstreamFailed(
                "the model's upstream credential is not a usable token", status=503
            )
        lines.append(f"Authorization: Bearer {api_key}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _host_header(host: str, port: int | None, default_port: int) -> str:
    """`Host` as http.client writes it: IDNA for non-ASCII names, IPv6 in brackets, the port
    unless it is the scheme's default."""
    try:
        name = host.encode("ascii").decode()
    except UnicodeEncodeError:
        name = host.encode("idna").decode()
    if ":" in name:
        name = f"[{name}]"
    return name if port in (None, default_port) else f"{name}:{port}"


def _close_idle(idle: dict[_Origin, list[HTTPConnection]]) -> None:
    for conns in idle.values():
        for conn in conns:
            conn.close()
    idle.clear()


def translate(exc: BaseException, *, connecting: bool = False) -> UpstreamFailed:
    """Our error for a transport failure: 504 for slowness, 503 unreachable, 502 otherwise."""
    if isinstance(exc, TimeoutError):  # socket timeouts, connecting or reading
        return UpstreamFailed("the model's upstream did not answer in time", status=504)
    if isinstance(exc, ssl.SSLError | ssl.CertificateError):
        return UpstreamFailed("the model's upstream failed", status=502)
    if connecting and isinstance(exc, OSError):  # refused, no route, unknown host
        return UpstreamFailed("the model's upstream cannot be reached", status=503)
    if isinstance(exc, OSError | HTTPException):
        return UpstreamFailed("the model's upstream broke off the connection", status=502)
    return UpstreamFailed("the model's upstream failed", status=502)
