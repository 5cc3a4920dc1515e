"""The last 1.x `openai` SDK (1.109, from its own venv) against a live `airlock demo`: the demo
wires acme/tiny-llm to the reference upstream and gives the researcher a low-limit grant
(20 requests and 4000 tokens a minute, 2 concurrent requests)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.live import ROOT, Server

pytestmark = pytest.mark.e2e

MODEL = "acme/tiny-llm"

# Runs inside the 1.x interpreter; prints one JSON line with what each call gave.
CLIENT = r"""
import json, sys, time
import httpx, openai

endpoint, tokens = sys.argv[1], json.loads(sys.argv[2])
MODEL, HELLO = "acme/tiny-llm", [{"role": "user", "content": "hello there"}]
out = {"version": openai.__version__}


def sdk(key, **kw):
    return openai.OpenAI(base_url=endpoint + "/v1", api_key=key, **kw)


def counted(log):
    # every attempt the SDK makes: ("request", t) and ("response", t, status, retry-after-ms)
    def on_request(request):
        log.append(["request", time.monotonic()])

    def on_response(response):
        ms = response.headers.get("retry-after-ms")
        log.append(["response", time.monotonic(), response.status_code, ms])

    http = httpx.Client(event_hooks={"request": [on_request], "response": [on_response]})
    return sdk(tokens["researcher"], http_client=http, max_retries=2)


def refusal(call):
    try:
        call()
        return ["no error"]
    except openai.APIStatusError as exc:
        return [type(exc).__name__, exc.code, str(exc), exc.request_id,
                exc.response.headers.get("x-should-retry")]


rob = sdk(tokens["researcher"])
out["models"] = [m.id for m in rob.models.list()]
out["outsider_models"] = [m.id for m in sdk(tokens["outsider"]).models.list()]

answer = rob.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=5)
out["chat"] = [answer.choices[0].message.content, answer.usage.completion_tokens]

stream = rob.chat.completions.create(
    model=MODEL, messages=HELLO, max_tokens=4, stream=True,
    stream_options={"include_usage": True},
)
chunks = list(stream)
out["stream_text"] = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
out["stream_last"] = [chunks[-1].choices, chunks[-1].usage and chunks[-1].usage.total_tokens]
out["stream_usage_elsewhere"] = [c.usage for c in chunks[:-1] if c.usage is not None]

emb = rob.embeddings.create(model=MODEL, input=["one two", "three"])
out["embeddings"] = [
    [d.index for d in emb.data], len(emb.data[0].embedding), emb.usage.prompt_tokens
]

chat = lambda client, model=MODEL, **kw: (
    lambda: client.chat.completions.create(model=model, messages=HELLO, **kw)
)
out["bad_key"] = refusal(chat(sdk("alk_not-a-real-key")))
out["outsider"] = refusal(chat(sdk(tokens["outsider"])))
out["unknown"] = refusal(chat(rob, "acme/nothing"))

# larger than the whole token limit: 429 with x-should-retry: false, tried once
log = []
out["too_large"] = refusal(chat(counted(log), max_tokens=5000)) + [len(log) // 2]

# both concurrent slots held by slow streams: every attempt refused, RateLimitError at the end
slow = {"airlock_test": {"delay": 0.3}}
held = [
    rob.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=12, stream=True,
                                extra_body=slow)
    for _ in range(2)
]
log = []
out["concurrent"] = refusal(chat(counted(log), max_tokens=1)) + [
    [e[2] for e in log if e[0] == "response"]
]
out["held_streams"] = [
    len([c for c in s if c.choices and c.choices[0].delta.content]) for s in held
]

# use up the requests per minute: the first 429's Retry-After is waited out, the retry admitted
log = []
client = counted(log)
for _ in range(40):
    client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=1)
    if any(e[0] == "response" and e[2] == 429 for e in log):
        break
out["rpm_log"] = log
print(json.dumps(out, default=str))
"""


def openai1_python() -> str:
    python = os.environ.get("AIRLOCK_OPENAI1_PYTHON") or str(ROOT / ".venv-openai1/bin/python")
    if not Path(python).is_file():
        message = (
            f"openai 1.x interpreter not found at {python}: run `make test` (it creates "
            ".venv-openai1) or point AIRLOCK_OPENAI1_PYTHON at a Python with openai 1.109"
        )
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return python


@pytest.fixture(scope="module")
def result(server: Server) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRLOCK_", "OPENAI_"))}
    tokens = json.dumps({k: server.tokens[k] for k in ("researcher", "outsider")})
    command = [openai1_python(), "-c", CLIENT, server.endpoint, tokens]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=90, check=False)
    assert done.returncode == 0, f"the openai 1.x client failed:\n{done.stdout}\n{done.stderr}"
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def test_it_is_the_last_1x(result: dict[str, Any]) -> None:
    assert result["version"].startswith("1.109.")


def test_lists_only_permitted_models(result: dict[str, Any]) -> None:
    assert result["models"] == [MODEL]
    assert result["outsider_models"] == []


def test_chat_streaming_and_embeddings(result: dict[str, Any]) -> None:
    content, completion_tokens = result["chat"]
    assert content and completion_tokens == 5
    assert len(result["stream_text"].split()) == 4
    assert result["stream_last"] == [[], 2 + 4]  # "hello there" + 4 words
    assert result["stream_usage_elsewhere"] == []
    assert result["embeddings"] == [[0, 1], 8, 3]


def test_refusals_are_the_sdks_exceptions(result: dict[str, Any]) -> None:
    kind, code, message, request_id, _ = result["bad_key"]
    assert (kind, code) == ("AuthenticationError", "invalid_api_key")
    assert "alk_not-a-real-key" not in message
    assert request_id
    assert result["outsider"][:2] == ["PermissionDeniedError", "model_not_permitted"]
    assert result["unknown"][:2] == ["NotFoundError", "model_not_found"]


def test_too_large_for_the_whole_limit_is_tried_once(result: dict[str, Any]) -> None:
    kind, code, _, _, should_retry, attempts = result["too_large"]
    assert (kind, code, should_retry) == ("RateLimitError", "rate_limit_exceeded", "false")
    assert attempts == 1


def test_over_the_concurrent_limit_is_rate_limit_error_after_the_retries(
    result: dict[str, Any],
) -> None:
    assert len(result["concurrent"]) == 6, result["concurrent"]
    kind, code, message, _, _, statuses = result["concurrent"]
    assert (kind, code) == ("RateLimitError", "rate_limit_exceeded")
    assert "concurrent requests" in message
    assert statuses == [429, 429, 429]  # the first attempt and the SDK's two retries
    assert result["held_streams"] == [12, 12]  # the held streams were served whole


def test_retry_after_is_honoured(result: dict[str, Any]) -> None:
    log = result["rpm_log"]
    refused = next(i for i, e in enumerate(log) if e[0] == "response" and e[2] == 429)
    wait = int(log[refused][3]) / 1000
    retry = log[refused + 1]
    assert retry[0] == "request"
    assert retry[1] - log[refused][1] >= wait - 0.001  # the SDK slept out retry-after-ms
    assert log[refused + 2][2] == 200  # and its retry was admitted
    admitted = [e for e in log if e[0] == "response" and e[2] == 200]
    assert len(admitted) <= 20
