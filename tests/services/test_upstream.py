"""The HTTP upstream client: pooled keep-alive connections, and every transport failure
translated to the status the gateway answers (502, 503 or 504)."""

from __future__ import annotations

import json
import socket
import socketserver
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest

from gateway.devtools.upstream import ReferenceUpstream
from gateway.errors import UpstreamFailed
from gateway.services.upstream import HttpUpstream, UpstreamTarget
from tests.ports import free_port, silent_port

CHAT = {"model": "m", "messages": [{"role": "user", "content": "a b"}], "max_tokens": 2}
ANSWER = b'{"object": "chat.completion", "usage": {"total_tokens": 4}}'


@pytest.fixture
def client() -> Iterator[HttpUpstream]:
    found = HttpUpstream(timeout=2)
    yield found
    found.close()


@dataclass
class Answering:
    """A loopback server's base URL, and the client ports of the connections it accepted."""

    base_url: str
    accepted: list[int]
    closed: threading.Semaphore  # released each time the server has closed a connection


@contextmanager
def answering(reply: bytes, *, close_after: bool) -> Iterator[Answering]:
    """A loopback server answering every request with `reply` (a whole HTTP response), closing
    the connection after each one if `close_after` (as an upstream whose keep-alive ended)."""
    accepted: list[int] = []
    closed = threading.Semaphore(0)

    class Handler(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            accepted.append(self.client_address[1])
            while self._request():
                self.wfile.write(reply)
                self.wfile.flush()
                if close_after:
                    self.connection.shutdown(socket.SHUT_RDWR)
                    closed.release()
                    return

        def _request(self) -> bool:
            length = 0
            while (line := self.rfile.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode().partition(":")
                if name.lower() == "content-length":
                    length = int(value)
            if not line:
                return False
            self.rfile.read(length)
            return True

    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Answering(f"http://127.0.0.1:{server.server_address[1]}/v1", accepted, closed)
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def ok(body: bytes = ANSWER) -> bytes:
    head = f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(body)}"
    return head.encode() + b"\r\n\r\n" + body


def test_a_json_answer_is_read_and_its_connection_reused(
    client: HttpUpstream, upstream: ReferenceUpstream
) -> None:
    target = UpstreamTarget(upstream.base_url, api_key="sk-up")
    first = client.send(target, "/chat/completions", CHAT).body()[1]
    [idle] = [conn for conns in client.idle.values() for conn in conns]
    again = client.send(target, "/chat/completions", CHAT).body()[1]
    assert first == again
    assert first["usage"]["total_tokens"] == 4
    assert [conn for conns in client.idle.values() for conn in conns] == [idle]
    seen = upstream.server.seen[-1]
    assert seen.path == "/v1/chat/completions"
    assert seen.headers["Authorization"] == "Bearer sk-up"
    assert seen.body == CHAT


def test_a_connection_the_upstream_closed_while_idle_is_replaced(client: HttpUpstream) -> None:
    with answering(ok(), close_after=True) as server:
        target = UpstreamTarget(server.base_url)
        for _ in range(3):
            assert client.send(target, "/chat/completions", CHAT).body()[1]["usage"]
            assert server.closed.acquire(timeout=5)  # closed while idle, before the next request
        assert len(server.accepted) == 3  # each request found its idle connection closed


def test_a_stream_is_relayed_event_by_event_and_its_connection_dropped(
    client: HttpUpstream, upstream: ReferenceUpstream
) -> None:
    body = {**CHAT, "stream": True}
    reply = client.send(UpstreamTarget(upstream.base_url), "/chat/completions", body)
    found = list(reply.events())
    assert found[-1] == b"data: [DONE]\n\n"
    assert all(event.startswith(b"data: ") and event.endswith(b"\n\n") for event in found)
    assert not any(client.idle.values())


@pytest.mark.parametrize(("status", "answered"), [(500, 502), (401, 502), (429, 503), (503, 503)])
def test_an_error_status_is_translated_and_its_connection_kept(
    client: HttpUpstream, upstream: ReferenceUpstream, status: int, answered: int
) -> None:
    body = {**CHAT, "airlock_test": {"fail": status}}
    with pytest.raises(UpstreamFailed) as caught:
        client.send(UpstreamTarget(upstream.base_url), "/chat/completions", body)
    assert caught.value.status == answered
    assert str(status) in caught.value.detail
    assert len([conn for conns in client.idle.values() for conn in conns]) == 1


def test_nothing_listening_is_503(client: HttpUpstream) -> None:
    target = UpstreamTarget(f"http://127.0.0.1:{free_port()}/v1")
    assert _failure(client, target) == (503, "the model's upstream cannot be reached")


def test_a_silent_upstream_is_504() -> None:
    client = HttpUpstream(timeout=0.2)
    with silent_port() as port:
        target = UpstreamTarget(f"http://127.0.0.1:{port}/v1")
        assert _failure(client, target) == (504, "the model's upstream did not answer in time")
    client.close()


def test_a_connect_timeout_is_504(client: HttpUpstream, monkeypatch: pytest.MonkeyPatch) -> None:
    def hanging(*_args: Any, **_kw: Any) -> socket.socket:
        raise TimeoutError("timed out")

    monkeypatch.setattr(socket, "create_connection", hanging)
    target = UpstreamTarget("http://upstream.invalid/v1")
    assert _failure(client, target) == (504, "the model's upstream did not answer in time")


def test_a_tls_failure_is_502(client: HttpUpstream, upstream: ReferenceUpstream) -> None:
    target = UpstreamTarget(upstream.base_url.replace("http://", "https://"))
    assert _failure(client, target) == (502, "the model's upstream failed")


def test_a_body_cut_short_is_502(client: HttpUpstream) -> None:
    cut = ok()[:-5]  # the headers promise more than is sent before the connection closes
    with answering(cut, close_after=True) as server:
        reply = client.send(UpstreamTarget(server.base_url), "/chat/completions", CHAT)
        with pytest.raises(UpstreamFailed) as caught:
            reply.body()
    assert (caught.value.status, caught.value.detail) == (
        502,
        "the model's upstream broke off the connection",
    )


@pytest.mark.parametrize("body", [b"not json", b"[1, 2]"])
def test_a_body_that_is_not_a_json_object_is_502(client: HttpUpstream, body: bytes) -> None:
    with answering(ok(body), close_after=False) as server, pytest.raises(UpstreamFailed) as caught:
        client.send(UpstreamTarget(server.base_url), "/chat/completions", CHAT).body()[1]
    assert caught.value.status == 502
    assert "not a JSON object" in caught.value.detail or "not JSON" in caught.value.detail


def _failure(client: HttpUpstream, target: UpstreamTarget) -> tuple[int, str]:
    with pytest.raises(UpstreamFailed) as caught:
        client.send(target, "/chat/completions", CHAT)
    return caught.value.status, caught.value.detail


def test_the_request_names_its_host_type_and_length(
    client: HttpUpstream, upstream: ReferenceUpstream
) -> None:
    client.send(UpstreamTarget(upstream.base_url), "/chat/completions", CHAT).body()[1]
    seen = upstream.seen[-1].headers
    assert seen["Host"] == upstream.base_url.removeprefix("http://").removesuffix("/v1")
    assert seen["Content-Type"] == "application/json"
    assert int(seen["Content-Length"]) == len(json.dumps(CHAT))
    assert "Authorization" not in seen


@pytest.mark.parametrize("key", ["sk-a\r\nX-Injected: 1", "sk a", "sk-ü"])
def test_a_credential_that_is_not_a_token_is_refused_before_sending(
    client: HttpUpstream, upstream: ReferenceUpstream, key: str
) -> None:
    before = len(upstream.seen)
    target = UpstreamTarget(upstream.base_url, api_key=key)
    assert _failure(client, target) == (
        503,
        "the model's upstream credential is not a usable token",
    )
    assert len(upstream.seen) == before


@pytest.mark.parametrize(
    ("url", "host", "prefix"),
    [
        ("https://example.com/v1/", "example.com", "/v1"),
        ("https://example.com:8443/v1", "example.com:8443", "/v1"),
        ("http://[::1]:8000", "[::1]:8000", ""),
        ("http://bücher.example/open ai", "xn--bcher-kva.example", "/open%20ai"),
    ],
)
def test_a_base_url_gives_the_host_header_and_path_prefix(url: str, host: str, prefix: str) -> None:
    origin = HttpUpstream(timeout=1)._origin(url)
    assert (origin.host_header, origin.prefix) == (host, prefix)
