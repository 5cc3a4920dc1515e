"""A reference OpenAI-compatible upstream: a development tool for tests and the demo, never
a model server.

It answers deterministically: the completion is words drawn from a fixed vocabulary by the
SHA-256 of the request's prompt text. Tokens are whitespace-separated words: the prompt's
are counted over every message's text content (or the `prompt`/`input` strings), the
completion has `min(max_tokens, 16)` words (`max_completion_tokens` is honoured too).

Tests steer it with a JSON object, given either as the `x-upstream-behave` request header or
as the request body's `airlock_test` field (which passes through a gateway unchanged):
- `{"fail": 503}` answers that status with an OpenAI error body;
- `{"stall": 2.5}` sleeps that many seconds before answering;
- `{"cut_after": 2}` (streaming only) sends that many chunks, then drops the connection;
- `{"delay": 0.05}` (streaming only) waits that many seconds before each chunk.

Started with an API key (`ReferenceUpstream(api_key=...)`, `airlock dev-upstream --api-key`), it
answers 401 in OpenAI's error format (`invalid_api_key`) to any request without
`Authorization: Bearer <key>`, as vLLM's `--api-key` does. It keeps the last requests it got
(`seen`: path, headers, body) for tests to inspect.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

CREATED = 1_767_225_600  # a fixed timestamp: answers are reproducible byte for byte
MAX_WORDS = 16
MODELS = ("acme/tiny-llm",)
VOCABULARY = (
    "airlock",
    "gate",
    "model",
    "tier",
    "grant",
    "token",
    "stream",
    "limit",
    "policy",
    "audit",
    "review",
    "weights",
    "quota",
    "lease",
    "signal",
    "chunk",
)
EMBEDDING_SIZE = 8
SEEN = 64  # requests remembered


@dataclass(frozen=True)
class Seen:
    """One request the reference upstream received."""

    path: str
    headers: dict[str, str]
    body: Any


def count_tokens(text: str) -> int:
    """The reference tokenizer: whitespace-separated words."""
    return len(text.split())


def completion_text(prompt: str, words: int) -> str:
    """The deterministic completion of `prompt`, `words` words long."""
    digest = hashlib.sha256(prompt.encode()).digest()
    return " ".join(VOCABULARY[digest[i % len(digest)] % len(VOCABULARY)] for i in range(words))


def prompt_of(body: dict[str, Any]) -> str:
    """The text a request asks about: messages' contents, a prompt or an input."""
    if isinstance(body.get("messages"), list):
        parts = []
        for message in body["messages"]:
            content = message.get("content") if isinstance(message, dict) else None
            if isinstance(content, str):
                parts.append(content)
            elif isinstance(content, list):
                parts += [p.get("text", "") for p in content if isinstance(p, dict)]
        return "\n".join(parts)
    value = body.get("prompt", body.get("input", ""))
    return "\n".join(value) if isinstance(value, list) else str(value)


def output_words(body: dict[str, Any]) -> int:
    """How many words to generate: the request's cap, at most MAX_WORDS."""
    cap = body.get("max_completion_tokens") or body.get("max_tokens") or MAX_WORDS
    return max(0, min(int(cap), MAX_WORDS))


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    """An OpenAI usage object."""
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def error_body(status: int, message: str) -> dict[str, Any]:
    """An OpenAI error body."""
    return {"error": {"message": message, "type": "upstream_error", "param": None, "code": None}}


def key_error_body() -> dict[str, Any]:
    """OpenAI's answer to a missing or wrong API key."""
    message = "Incorrect API key provided. Send it as 'Authorization: Bearer <key>'."
    error = {"message": message, "type": "invalid_request_error", "param": None}
    return {"error": {**error, "code": "invalid_api_key"}}


class UpstreamHandler(BaseHTTPRequestHandler):
    """Routes /v1/models, /v1/chat/completions, /v1/completions and /v1/embeddings."""

    protocol_version = "HTTP/1.1"
    server_version = "airlock-reference-upstream/1"
    disable_nagle_algorithm = True  # headers and body are separate writes: no 40 ms stalls

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: tests and the demo do not want access logs."""

    def do_GET(self) -> None:
        """`GET /v1/models`."""
        if not self._authorized():
            return None
        if self.path.split("?")[0] != "/v1/models":
            return self._json(404, error_body(404, "unknown path"))
        data = [{"id": m, "object": "model", "created": CREATED, "owned_by": "ref"} for m in MODELS]
        return self._json(200, {"object": "list", "data": data})

    def do_POST(self) -> None:
        """The three generation endpoints."""
        path = self.path.split("?")[0]
        routes = {
            "/v1/chat/completions": self._chat,
            "/v1/completions": self._completion,
            "/v1/embeddings": self._embeddings,
        }
        length = int(self.headers.get("Content-Length") or 0)
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
        except ValueError:
            return self._json(400, error_body(400, "the body is not JSON"))
        server: _Server = self.server  # type: ignore[assignment]
        server.seen.append(Seen(path, dict(self.headers.items()), body))
        if not self._authorized():
            return None
        if path not in routes:
            return self._json(404, error_body(404, "unknown path"))
        if not isinstance(body, dict):
            return self._json(400, error_body(400, "the body is not a JSON object"))
        behave = self._behaviour(body)
        if behave.get("stall"):
            time.sleep(float(behave["stall"]))
        if behave.get("fail"):
            status = int(behave["fail"])
            return self._json(status, error_body(status, f"told to fail with {status}"))
        return routes[path](body, behave)

    def _authorized(self) -> bool:
        """True without an API key or with the right bearer; otherwise answers 401."""
        key = getattr(self.server, "api_key", None)
        if key is None:
            return True
        sent = self.headers.get("Authorization", "")
        if hmac.compare_digest(sent.encode(), f"Bearer {key}".encode()):
            return True
        self._json(401, key_error_body())
        return False

    def _behaviour(self, body: dict[str, Any]) -> dict[str, Any]:
        header = self.headers.get("x-upstream-behave")
        found = json.loads(header) if header else body.pop("airlock_test", None)
        return found if isinstance(found, dict) else {}

    def _chat(self, body: dict[str, Any], behave: dict[str, Any]) -> None:
        self._generate(body, behave, chat=True)

    def _completion(self, body: dict[str, Any], behave: dict[str, Any]) -> None:
        self._generate(body, behave, chat=False)

    def _generate(self, body: dict[str, Any], behave: dict[str, Any], *, chat: bool) -> None:
        prompt = prompt_of(body)
        text = completion_text(prompt, output_words(body))
        counts = usage(count_tokens(prompt), count_tokens(text))
        model = str(body.get("model", MODELS[0]))
        ident = "cmpl-" + hashlib.sha256(prompt.encode()).hexdigest()[:24]
        if body.get("stream"):
            return self._stream(ident, model, text, counts, body, behave, chat=chat)
        if chat:
            choice: dict[str, Any] = {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": "length" if counts["completion_tokens"] else "stop",
            }
            obj = "chat.completion"
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": "length"}
            obj = "text_completion"
        answer = {"id": ident, "object": obj, "created": CREATED, "model": model}
        self._json(200, {**answer, "choices": [choice], "usage": counts})

    def _stream(
        self,
        ident: str,
        model: str,
        text: str,
        counts: dict[str, int],
        body: dict[str, Any],
        behave: dict[str, Any],
        *,
        chat: bool,
    ) -> None:
        options = body.get("stream_options") or {}
        with_usage = isinstance(options, dict) and bool(options.get("include_usage"))
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        obj = "chat.completion.chunk" if chat else "text_completion"
        head = {"id": ident, "object": obj, "created": CREATED, "model": model}
        extra = {"usage": None} if with_usage else {}
        words = text.split()
        chunks = [
            {**head, "choices": [_delta(chat, (" " if i else "") + w, None)], **extra}
            for i, w in enumerate(words)
        ]
        chunks.append({**head, "choices": [_delta(chat, "", "length")], **extra})
        if with_usage:
            chunks.append({**head, "choices": [], "usage": counts})
        cut = behave.get("cut_after")
        delay = float(behave.get("delay") or 0)
        for n, chunk in enumerate(chunks):
            if cut is not None and n >= int(cut):
                self.wfile.flush()
                return  # drop the connection mid-stream, without [DONE]
            if delay:
                time.sleep(delay)
            self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
            self.wfile.flush()
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()

    def _embeddings(self, body: dict[str, Any], behave: dict[str, Any]) -> None:
        raw = body.get("input", "")
        inputs = raw if isinstance(raw, list) else [raw]
        data = [
            {"object": "embedding", "index": i, "embedding": _vector(str(item))}
            for i, item in enumerate(inputs)
        ]
        tokens = sum(count_tokens(str(item)) for item in inputs)
        model = str(body.get("model", MODELS[0]))
        answer = {"object": "list", "data": data, "model": model}
        self._json(200, {**answer, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})

    def _json(self, status: int, body: dict[str, Any]) -> None:
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


def _delta(chat: bool, text: str, finish: str | None) -> dict[str, Any]:
    if chat:
        delta = {"content": text} if text else {}
        return {"index": 0, "delta": delta, "finish_reason": finish}
    return {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}


def _vector(text: str) -> list[float]:
    digest = hashlib.sha256(text.encode()).digest()
    return [round(b / 255, 6) for b in digest[:EMBEDDING_SIZE]]


class _Server(ThreadingHTTPServer):
    api_key: str | None = None
    seen: deque[Seen]

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Quiet about a gateway that hung up mid-answer (a client left: expected, tested)."""
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


class ReferenceUpstream:
    """The reference upstream on a loopback port, served from a daemon thread."""

    def __init__(
        self, host: str = "127.0.0.1", port: int = 0, *, api_key: str | None = None
    ) -> None:
        self.server = _Server((host, port), UpstreamHandler)
        self.server.daemon_threads = True
        self.server.api_key = api_key
        self.server.seen = deque(maxlen=SEEN)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        """The OpenAI-style base URL, ending in /v1."""
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}/v1"

    @property
    def seen(self) -> deque[Seen]:
        """The latest requests received, oldest first."""
        return self.server.seen

    def start(self) -> ReferenceUpstream:
        """Begin serving in the background."""
        self.thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self.server.shutdown()
        self.server.server_close()
