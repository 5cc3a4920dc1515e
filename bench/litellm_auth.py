"""LiteLLM proxy custom auth for bench/inference.py: one bearer key with a model allow-list and
rpm, tpm and parallel-request limits, in place of a virtual key (which needs LiteLLM's Prisma
database layer: not installed by `litellm[proxy]`, and its engine binaries come from outside the
package index).

Loaded by LiteLLM (`general_settings.custom_auth`) inside .venv-litellm, never by Airlock.
The returned UserAPIKeyAuth is what LiteLLM builds from a virtual key's row (its in-memory key
cache answers a hot key, as here), so its own rate limiter enforces the limits on every request.
"""

from __future__ import annotations

import hashlib
import hmac
import os

from fastapi import Request
from litellm.proxy._types import ProxyErrorTypes, ProxyException, UserAPIKeyAuth

KEY = os.environ["BENCH_LITELLM_KEY"]
KEY_HASH = hashlib.sha256(KEY.encode()).hexdigest()
LIMITS = {
    "rpm_limit": int(os.environ["BENCH_LITELLM_RPM"]),
    "tpm_limit": int(os.environ["BENCH_LITELLM_TPM"]),
    "max_parallel_requests": int(os.environ["BENCH_LITELLM_PARALLEL"]),
}
MODELS = [os.environ["BENCH_LITELLM_MODEL"]]


async def user_api_key_auth(request: Request, api_key: str) -> UserAPIKeyAuth:
    """The bench key's identity and limits; any other key is a 401."""
    if not hmac.compare_digest(api_key.encode(), KEY.encode()):
        raise ProxyException(
            message="Invalid API key",
            type=ProxyErrorTypes.auth_error,
            param="api_key",
            code=401,
        )
    return UserAPIKeyAuth(api_key=KEY_HASH, token=KEY_HASH, models=MODELS, **LIMITS)
