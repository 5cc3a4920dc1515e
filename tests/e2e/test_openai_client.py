"""The official `openai` SDK against a live `airlock demo`: the demo wires acme/tiny-llm to
the reference upstream and gives the researcher a low-limit inference grant."""

from __future__ import annotations

from typing import Any

import httpx2
import openai
import pytest

from tests.e2e.live import Server

MODEL = "acme/tiny-llm"
HELLO = [{"role": "user", "content": "hello there"}]


def sdk(server: Server, key: str, **kw: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.endpoint}/v1", api_key=key, **kw)


def test_demo_json_names_the_inference_model(server: Server) -> None:
    import json

    demo = json.loads((server.tmp / "data" / "demo.json").read_text())
    assert demo["models"] == {"weights": MODEL, "inference": MODEL}


def test_lists_only_permitted_models(server: Server) -> None:
    assert [m.id for m in sdk(server, server.tokens["researcher"]).models.list()] == [MODEL]
    assert list(sdk(server, server.tokens["outsider"]).models.list()) == []


def test_chat_completion(server: Server) -> None:
    client = sdk(server, server.tokens["researcher"])
    answer = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=5)
    assert answer.choices[0].message.content
    assert answer.usage is not None and answer.usage.completion_tokens == 5
    raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=HELLO)
    assert raw.headers["x-ratelimit-limit-requests"] == "20"
    assert raw.headers["x-request-id"]


def test_streaming_with_usage(server: Server) -> None:
    client = sdk(server, server.tokens["researcher"])
    stream = client.chat.completions.create(
        model=MODEL,
        messages=HELLO,
        max_tokens=4,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len(text.split()) == 4
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 2 + 4


def test_embeddings(server: Server) -> None:
    answer = sdk(server, server.tokens["researcher"]).embeddings.create(
        model=MODEL, input=["one two", "three"]
    )
    assert [d.index for d in answer.data] == [0, 1]
    assert answer.usage.prompt_tokens == 3


def test_bad_key_is_authentication_error(server: Server) -> None:
    with pytest.raises(openai.AuthenticationError) as caught:
        sdk(server, "alk_not-a-real-key").chat.completions.create(model=MODEL, messages=HELLO)
    assert caught.value.code == "invalid_api_key"
    assert "alk_not-a-real-key" not in str(caught.value)
    assert caught.value.request_id


def test_model_outside_the_grant_is_permission_denied(server: Server) -> None:
    with pytest.raises(openai.PermissionDeniedError) as caught:
        sdk(server, server.tokens["outsider"]).chat.completions.create(model=MODEL, messages=HELLO)
    assert caught.value.code == "model_not_permitted"


def test_unknown_model_is_not_found(server: Server) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        sdk(server, server.tokens["researcher"]).chat.completions.create(
            model="acme/nothing", messages=HELLO
        )
    assert caught.value.code == "model_not_found"


def test_too_large_for_the_whole_limit_is_tried_once(server: Server) -> None:
    attempts: list[httpx2.Request] = []
    http = httpx2.Client(event_hooks={"request": [attempts.append]})
    client = sdk(server, server.tokens["researcher"], http_client=http, max_retries=2)
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=5000)
    assert caught.value.code == "rate_limit_exceeded"
    assert caught.value.response.headers["x-should-retry"] == "false"
    assert len(attempts) == 1
