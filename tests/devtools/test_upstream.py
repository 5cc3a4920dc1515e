"""The reference upstream speaks the OpenAI wire format and obeys its test controls."""

from __future__ import annotations

import json
from typing import Any

import pytest
import urllib3

from gateway.devtools.upstream import ReferenceUpstream, completion_text


def post(upstream: ReferenceUpstream, path: str, body: dict[str, Any], **kw: Any) -> Any:
    return urllib3.request(
        "POST", upstream.base_url + path, json=body, preload_content=kw.pop("preload", True), **kw
    )


def events(raw: bytes) -> list[str]:
    assert raw.endswith(b"\n\n")
    return [e.removeprefix("data: ") for e in raw.decode().split("\n\n") if e]


def test_models_lists_the_demo_model(upstream: ReferenceUpstream) -> None:
    answer = urllib3.request("GET", upstream.base_url + "/models").json()
    assert answer["object"] == "list"
    assert [m["id"] for m in answer["data"]] == ["acme/tiny-llm"]


def test_chat_is_deterministic_and_counts_words(upstream: ReferenceUpstream) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "one two three"}]}
    first = post(upstream, "/chat/completions", {**body, "max_tokens": 5}).json()
    again = post(upstream, "/chat/completions", {**body, "max_tokens": 5}).json()
    assert first == again
    assert first["object"] == "chat.completion"
    assert first["choices"][0]["message"]["content"] == completion_text("one two three", 5)
    assert first["usage"] == {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}


def test_stream_with_usage_ends_with_a_usage_chunk_then_done(upstream: ReferenceUpstream) -> None:
    body = {
        "model": "m",
        "messages": [{"role": "user", "content": "a b"}],
        "max_tokens": 3,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    answer = post(upstream, "/chat/completions", body)
    assert answer.headers["Content-Type"] == "text/event-stream"
    found = events(answer.data)
    assert found[-1] == "[DONE]"
    chunks = [json.loads(e) for e in found[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert all(c["usage"] is None for c in chunks[:-1])
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5}
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks[:-1])
    assert text == completion_text("a b", 3)


def test_stream_without_usage_has_no_usage_field(upstream: ReferenceUpstream) -> None:
    body = {"model": "m", "prompt": "x", "max_tokens": 2, "stream": True}
    chunks = [json.loads(e) for e in events(post(upstream, "/completions", body).data)[:-1]]
    assert all("usage" not in c and c["object"] == "text_completion" for c in chunks)


def test_fail_by_header_and_by_body(upstream: ReferenceUpstream) -> None:
    body = {"model": "m", "prompt": "x"}
    by_header = post(upstream, "/completions", body, headers={"x-upstream-behave": '{"fail":502}'})
    assert by_header.status == 502
    assert by_header.json()["error"]["message"] == "told to fail with 502"
    by_body = post(upstream, "/completions", {**body, "airlock_test": {"fail": 503}})
    assert by_body.status == 503


def test_cut_stream_stops_after_n_chunks_without_done(upstream: ReferenceUpstream) -> None:
    body = {"model": "m", "prompt": "x y", "stream": True, "airlock_test": {"cut_after": 2}}
    raw = post(upstream, "/completions", body).data
    assert len(events(raw)) == 2
    assert b"[DONE]" not in raw


def test_stall_outlasts_a_client_timeout(upstream: ReferenceUpstream) -> None:
    body = {"model": "m", "prompt": "x", "airlock_test": {"stall": 1}}
    with pytest.raises(urllib3.exceptions.ReadTimeoutError):
        post(upstream, "/completions", body, timeout=urllib3.Timeout(read=0.2), retries=False)


def test_embeddings_report_prompt_tokens(upstream: ReferenceUpstream) -> None:
    answer = post(upstream, "/embeddings", {"model": "m", "input": ["a b", "c"]}).json()
    assert [d["index"] for d in answer["data"]] == [0, 1]
    assert answer["usage"] == {"prompt_tokens": 3, "total_tokens": 3}


def test_bad_json_is_a_400(upstream: ReferenceUpstream) -> None:
    answer = urllib3.request("POST", upstream.base_url + "/completions", body=b"{")
    assert answer.status == 400
    assert answer.json()["error"]["type"] == "upstream_error"


def test_with_an_api_key_only_its_bearer_is_served() -> None:
    server = ReferenceUpstream(api_key="dev-key").start()
    try:
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "dev-key"}):
            refused = post(server, "/chat/completions", body, headers=headers)
            assert refused.status == 401
            assert refused.json()["error"]["code"] == "invalid_api_key"
            assert set(refused.json()["error"]) == {"message", "type", "param", "code"}
            assert "dev-key" not in refused.data.decode()
        listed = urllib3.request("GET", server.base_url + "/models")
        assert listed.status == 401
        bearer = {"Authorization": "Bearer dev-key"}
        served = post(server, "/chat/completions", body, headers=bearer)
        assert served.status == 200 and served.json()["object"] == "chat.completion"
        assert [s.headers.get("Authorization") for s in server.seen] == [
            None,
            "Bearer wrong",
            "dev-key",
            "Bearer dev-key",
        ]
    finally:
        server.stop()
