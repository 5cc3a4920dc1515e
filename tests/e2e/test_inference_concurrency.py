"""Inference limits under real concurrency: gunicorn (2 workers x 4 threads) sharing the Redis
limiter, PostgreSQL, the reference upstream, and client processes x threads hammering one grant.

The demo world is seeded with its researcher's grant given low limits: 30 requests and 300
tokens a minute, 3 concurrent requests. Each phase starts from full buckets (the grant's
limiter keys are deleted; the grant id is random, so no other run shares them).
"""

from __future__ import annotations

import http.client
import json
import math
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import create_engine, text

from gateway.db.migrate import upgrade
from gateway.db.models import User
from gateway.demo import _principal, demo_policy, seed, wire_upstream
from gateway.devtools.upstream import ReferenceUpstream
from gateway.services.container import build_airlock
from gateway.settings import load_settings
from tests.e2e.live import ROOT
from tests.pg import throwaway_database
from tests.ports import free_port
from tests.processes import stop_process
from tests.redis_server import REDIS_URL, require_redis

pytestmark = pytest.mark.e2e

RPM, TPM, CONCURRENT = 30, 300, 3
PROCESSES, THREADS, SECONDS = 3, 4, 2.5
HELLO = [{"role": "user", "content": "hello there"}]  # 11 bytes: estimated at 3 tokens
SMALL = {"model": "acme/tiny-llm", "messages": HELLO, "max_tokens": 1}
LIMITS = {  # the researcher's tier (weights-vetted) in the demo policy, and what replaces it
    "requests_per_minute: 20": f"requests_per_minute: {RPM}",
    "tokens_per_minute: 4000": f"tokens_per_minute: {TPM}",
    "concurrent_requests: 2": f"concurrent_requests: {CONCURRENT}",
}

# One client process: THREADS threads posting chat completions (a connection each) until the
# deadline; prints one JSON list of [status, tokens used or the refused limit].
HAMMER = r"""
import http.client, json, sys, threading, time
port, token, threads, seconds, max_tokens = sys.argv[1:6]
body = json.dumps({"model": "acme/tiny-llm", "max_tokens": int(max_tokens),
                   "messages": [{"role": "user", "content": "hello there"}]}).encode()
headers = {"Authorization": "Bearer " + token, "Content-Type": "application/json",
           "Connection": "close"}
start, results = threading.Barrier(int(threads)), []

def refused(message):
    for word, name in (("RPM", "rpm"), ("TPM", "tpm"), ("concurrent", "concurrent")):
        if word in message:
            return name
    return message

def worker():
    start.wait()
    deadline, mine = time.monotonic() + float(seconds), []
    while time.monotonic() < deadline:
        conn = http.client.HTTPConnection("127.0.0.1", int(port), timeout=30)
        conn.request("POST", "/v1/chat/completions", body, headers)
        response = conn.getresponse()
        data = json.loads(response.read())
        conn.close()
        if response.status == 200:
            mine.append([200, data["usage"]["total_tokens"]])
        else:
            mine.append([response.status, refused(data["error"]["message"])])
    results.extend(mine)

pool = [threading.Thread(target=worker) for _ in range(int(threads))]
for t in pool:
    t.start()
for t in pool:
    t.join()
print(json.dumps(results))
"""

# A client that opens a slow stream, says so once its first event arrived, then waits to die.
STREAMER = r"""
import http.client, json, sys, time
port, token = sys.argv[1:3]
body = json.dumps({"model": "acme/tiny-llm", "max_tokens": 16, "stream": True,
                   "messages": [{"role": "user", "content": "hello there"}],
                   "airlock_test": {"delay": 0.3}}).encode()
conn = http.client.HTTPConnection("127.0.0.1", int(port), timeout=30)
conn.request("POST", "/v1/chat/completions", body,
             {"Authorization": "Bearer " + token, "Content-Type": "application/json"})
response = conn.getresponse()
assert response.status == 200, response.status
response.readline()
print("streaming", flush=True)
time.sleep(60)
"""


@dataclass
class Deployment:
    """The gunicorn gateway and what the test needs to drive and inspect it."""

    port: int
    token: str
    database_url: str
    grant_ids: list[int]

    def reset_limits(self) -> None:
        """Full buckets and no leases for the grant (its keys under the default prefix)."""
        client = redis.Redis.from_url(REDIS_URL, socket_timeout=5)
        try:
            for grant in self.grant_ids:
                for key in client.scan_iter(match=f"airlock:rl:*inf:{grant}:*", count=1000):
                    client.delete(key)
        finally:
            client.close()

    def audit(self, action: str) -> list[dict[str, Any]]:
        engine = create_engine(self.database_url)
        try:
            with engine.connect() as conn:
                rows = conn.execute(
                    text("SELECT payload FROM audit_events WHERE action = :a ORDER BY seq"),
                    {"a": action},
                ).all()
        finally:
            engine.dispose()
        return [row[0] for row in rows]

    def connect(self, body: dict[str, Any]) -> tuple[http.client.HTTPConnection, Any]:
        """POST a chat completion; the open connection and its unread response."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        headers = {"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"}
        conn.request("POST", "/v1/chat/completions", json.dumps(body).encode(), headers)
        return conn, conn.getresponse()

    def call(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """POST a chat completion; its status and JSON body."""
        conn, response = self.connect(body)
        try:
            return response.status, json.loads(response.read())
        finally:
            conn.close()


def seed_world(env: dict[str, str], data_dir: Path, upstream: ReferenceUpstream) -> str:
    """The demo world with the test's limits and upstream; the researcher's token."""
    airlock = build_airlock(load_settings(env))
    try:
        tokens = seed(airlock, data_dir)
        wire_upstream(airlock, upstream.base_url)
        source = demo_policy()
        for old, new in LIMITS.items():
            assert source.count(old) == 2, old  # the two inference tiers
            source = source.replace(old, new)
        with airlock.db.session() as session:
            alice = session.query(User).filter_by(username="alice").one()
            publisher = _principal(airlock, session, alice)
            airlock.policies.apply(session, principal=publisher, source=source)
    finally:
        airlock.close()
    return tokens["researcher"]


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    require_redis()
    tmp = tmp_path_factory.mktemp("inference-concurrency")
    upstream = ReferenceUpstream().start()
    with throwaway_database() as database_url:
        upgrade(database_url)
        engine = create_engine(database_url)
        with engine.begin() as conn:  # a random grant id: its limiter keys are this run's own
            conn.execute(text(f"SELECT setval('grants_id_seq', {secrets.randbelow(10**9) + 1})"))
        env = {k: v for k, v in os.environ.items() if not k.startswith("AIRLOCK_")}
        env.update(
            AIRLOCK_DATA_DIR=str(tmp),
            AIRLOCK_DATABASE_URL=database_url,
            AIRLOCK_REDIS_URL=REDIS_URL,
            AIRLOCK_SECRET_KEY="concurrency-test",
            PROMETHEUS_MULTIPROC_DIR=str(tmp / "metrics"),
        )
        (tmp / "metrics").mkdir()
        token = seed_world(env, tmp, upstream)
        with engine.connect() as conn:
            grants = [int(g) for g in conn.execute(text("SELECT id FROM grants")).scalars()]
        engine.dispose()
        port = free_port()
        argv = [
            str(Path(sys.executable).parent / "gunicorn"),
            "--config",
            "deploy/gunicorn.conf.py",
        ]
        argv += ["--bind", f"127.0.0.1:{port}", "--workers", "2", "--threads", "4"]
        log = (tmp / "gunicorn.log").open("wb")
        server = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        found = Deployment(port, token, database_url, grants)
        try:
            wait_ready(port, server, tmp / "gunicorn.log")
            yield found
        finally:
            stop_process(server, grace=20)
            log.close()
            found.reset_limits()
            upstream.stop()


def wait_ready(port: int, server: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"gunicorn exited with {server.returncode}:\n{log.read_text()}")
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
        try:
            conn.request("GET", "/readyz")
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        finally:
            conn.close()
        time.sleep(0.1)
    pytest.fail(f"gunicorn was not ready in 30 s:\n{log.read_text()}")


def hammer(deployment: Deployment, max_tokens: int) -> tuple[list[list[Any]], float]:
    """PROCESSES x THREADS clients for SECONDS; every outcome, and the whole run's duration."""
    deployment.reset_limits()
    began = time.monotonic()
    args = [str(deployment.port), deployment.token, str(THREADS), str(SECONDS), str(max_tokens)]
    clients = [
        subprocess.Popen([sys.executable, "-c", HAMMER, *args], stdout=subprocess.PIPE, text=True)
        for _ in range(PROCESSES)
    ]
    outcomes: list[list[Any]] = []
    for client in clients:
        out, _ = client.communicate(timeout=60)
        assert client.returncode == 0
        outcomes += json.loads(out)
    return outcomes, time.monotonic() - began


def refill(quota: int, seconds: float) -> int:
    """What a GCRA bucket of `quota` a minute refills in `seconds`, rounded up."""
    return math.ceil(quota * seconds / 60)


def test_requests_never_exceed_the_request_limit(deployment: Deployment) -> None:
    served_before = len(deployment.audit("inference:serve"))
    denied_before = len(deployment.audit("inference:deny"))
    outcomes, elapsed = hammer(deployment, max_tokens=1)  # 3 + 1 tokens each: tokens never bind
    admitted = [o for o in outcomes if o[0] == 200]
    refused = [o[1] for o in outcomes if o[0] != 200]
    assert {o[0] for o in outcomes} <= {200, 429}
    assert set(refused) <= {"rpm", "concurrent"}
    assert "rpm" in refused
    assert RPM <= len(admitted) <= RPM + refill(RPM, elapsed)
    # the audit agrees: one serve event per 200, one deny event per 429
    served = deployment.audit("inference:serve")[served_before:]
    assert [e["upstream_status"] for e in served] == [200] * len(admitted)
    assert len(deployment.audit("inference:deny")) - denied_before == len(refused)


def test_tokens_never_exceed_the_token_limit(deployment: Deployment) -> None:
    served_before = len(deployment.audit("inference:serve"))
    # Each request reserves 3 (prompt estimate) + 40 (max_tokens) and uses 2 + 16 (the upstream
    # writes 16 words at most): 25 tokens of over-reservation each, refunded when it ends.
    outcomes, elapsed = hammer(deployment, max_tokens=40)
    admitted = [o[1] for o in outcomes if o[0] == 200]
    refused = [o[1] for o in outcomes if o[0] != 200]
    assert "tpm" in refused
    assert "rpm" not in refused
    served = deployment.audit("inference:serve")[served_before:]
    assert sorted(e["tokens_used"] for e in served) == sorted(admitted)
    assert all(e["tokens_reserved"] == 3 + 40 for e in served)
    assert all(e["tokens_used"] == 2 + 16 for e in served)
    # What was charged once settled is what was used; reservations can only have held back
    # admissions (used <= reserved), never let more through than the minute's tokens.
    assert sum(admitted) <= TPM + refill(TPM, elapsed)
    # and the refunds were real: more was admitted than reservations alone would fit
    assert len(admitted) * 43 > TPM


def test_a_killed_client_frees_its_lease_and_is_reconciled(deployment: Deployment) -> None:
    deployment.reset_limits()
    served_before = len(deployment.audit("inference:serve"))
    args = [str(deployment.port), deployment.token]
    victim = subprocess.Popen(
        [sys.executable, "-c", STREAMER, *args], stdout=subprocess.PIPE, text=True
    )
    held: list[tuple[http.client.HTTPConnection, Any]] = []
    try:
        assert victim.stdout is not None and victim.stdout.readline() == "streaming\n"
        slow = {"model": "acme/tiny-llm", "messages": HELLO, "max_tokens": 16, "stream": True}
        slow["airlock_test"] = {"delay": 0.3}
        for _ in range(CONCURRENT - 1):
            held.append(deployment.connect(slow))
            assert held[-1][1].status == 200
            held[-1][1].readline()
        status, body = deployment.call(SMALL)
        assert status == 429 and "concurrent requests" in body["error"]["message"]
        victim.send_signal(signal.SIGKILL)
        victim.wait(10)
        assert wait_for_a_free_slot(deployment)["usage"]["total_tokens"] == 2 + 1
        for _, stream in held:
            assert stream.read().endswith(b"data: [DONE]\n\n")
    finally:
        for conn, _ in held:
            conn.close()
        if victim.poll() is None:
            victim.kill()
            victim.wait()
        if victim.stdout is not None:
            victim.stdout.close()
    served = deployment.audit("inference:serve")[served_before:]
    statuses = [e["upstream_status"] for e in served]
    # the killed stream ended first, and the slot it freed let the probe in while the two held
    # streams were still running
    assert statuses == ["client_disconnected", 200, 200, 200]
    killed, probe = served[0], served[1]
    assert killed["tokens_reserved"] == 3 + 16 and killed["usage_reported"] is False
    # charged the prompt estimate and the content chunks sent before the kill, not the cap:
    # the victim read one, and the upstream writes one word every 0.3 s
    assert 1 <= killed["chunks_delivered"] < 16
    assert killed["tokens_used"] == 3 + killed["chunks_delivered"]
    assert probe["tokens_used"] == 3


def wait_for_a_free_slot(deployment: Deployment) -> dict[str, Any]:
    """Retry a small request until the limiter admits it (the gateway notices the kill at its
    next write), for at most 10 s; the admitted answer."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        status, body = deployment.call(SMALL)
        if status == 200:
            return body
        assert status == 429 and "concurrent requests" in body["error"]["message"]
        time.sleep(0.05)
    pytest.fail("the killed client's lease was not freed within 10 s")
