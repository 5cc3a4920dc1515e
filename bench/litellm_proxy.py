"""LiteLLM's proxy as a comparison for bench/inference.py, run from its own venv (.venv-litellm,
built by `make bench-litellm`; never a project dependency).

The proxy serves one model, `openai/<model>` at the reference upstream's api_base, behind one
bearer key with a model allow-list and rpm, tpm and parallel-request limits (litellm_auth.py).
It runs with uvicorn (LiteLLM's default server) and `--num_workers` processes, no database.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import harness
import yaml

VENV = harness.BENCH_DIR.parent / ".venv-litellm"
BINARY = VENV / "bin" / "litellm"
BUILD_HINT = "make bench-litellm (builds .venv-litellm with litellm[proxy] from PyPI)"


@dataclass(frozen=True)
class KeyLimits:
    """The bench key's limits, as LiteLLM names them on a virtual key."""

    rpm: int
    tpm: int
    parallel: int


def available() -> bool:
    """Whether .venv-litellm has been built."""
    return BINARY.exists()


def version() -> str:
    """The installed LiteLLM version (read from the venv's metadata, without importing it)."""
    for meta in (VENV / "lib").glob("python3*/site-packages/litellm-*.dist-info/METADATA"):
        for line in meta.read_text().splitlines():
            if line.startswith("Version: "):
                return line.split(": ", 1)[1]
    return "unknown"


def config(model: str, upstream: str) -> dict[str, object]:
    """The proxy's config.yaml: the one model at the upstream, auth by litellm_auth.py."""
    return {
        "model_list": [
            {
                "model_name": model,
                "litellm_params": {"model": f"openai/{model}", "api_base": upstream},
            }
        ],
        "general_settings": {
            "master_key": "sk-bench-master-unused",
            "custom_auth": "litellm_auth.user_api_key_auth",
            "disable_spend_logs": True,
        },
        "litellm_settings": {"set_verbose": False, "request_timeout": 30, "num_retries": 0},
    }


@contextmanager
def serve(
    *, model: str, upstream: str, key: str, limits: KeyLimits, workers: int, workdir: Path
) -> Iterator[harness.Server]:
    """LiteLLM's proxy on a free loopback port until the context exits."""
    root = workdir / "litellm"
    root.mkdir(exist_ok=True)
    (root / "config.yaml").write_text(yaml.safe_dump(config(model, upstream), sort_keys=False))
    shutil.copy(harness.BENCH_DIR / "litellm_auth.py", root / "litellm_auth.py")
    port = harness.free_port()
    command = [str(BINARY), "--config", str(root / "config.yaml"), "--host", harness.HOST]
    command += ["--port", str(port), "--num_workers", str(workers)]
    # uvicorn kills a worker that misses a 5 s health ping; a starting LiteLLM worker on the
    # busy 2-CPU machine often does, and was restarted in a loop, serving with one worker.
    command += ["--timeout_worker_healthcheck", "60"]
    log = root / "proxy.log"
    with harness._process(command, env=_env(root, key, model, limits), cwd=root, log=log) as proc:
        url = f"http://{harness.HOST}:{port}"
        harness._wait_http(url + "/health/liveliness", log, proc, timeout=180)
        _settle(proc.pid)
        yield harness.Server(url, proc.pid)


def _settle(pgid: int, timeout: float = 120.0) -> None:
    """Wait until every worker has finished starting (the first to answer is not the last)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        before = sum(harness.group_cpu(pgid))
        time.sleep(1.0)
        if sum(harness.group_cpu(pgid)) - before < 0.2:
            return


def _env(root: Path, key: str, model: str, limits: KeyLimits) -> dict[str, str]:
    """No network at start-up (the bundled cost map), errors only in the log, no .env file."""
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(root),
        "PYTHONPATH": str(root),
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "LITELLM_LOG": "ERROR",
        "LITELLM_MODE": "PRODUCTION",
        "OPENAI_API_KEY": "sk-upstream-unused",
        "BENCH_LITELLM_KEY": key,
        "BENCH_LITELLM_MODEL": model,
        "BENCH_LITELLM_RPM": str(limits.rpm),
        "BENCH_LITELLM_TPM": str(limits.tpm),
        "BENCH_LITELLM_PARALLEL": str(limits.parallel),
    }
