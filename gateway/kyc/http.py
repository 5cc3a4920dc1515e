"""The one small HTTP client for providers' APIs: JSON in and out, a timeout, errors translated."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from typing import Any

from gateway.errors import KycProviderUnavailable

MAX_RESPONSE_BYTES = 4 * 1024 * 1024


class ProviderApi:
    """Calls one provider's API under `base_url` with its credentials; never logs them."""

    def __init__(
        self, provider: str, base_url: str, *, headers: Mapping[str, str], timeout: float
    ) -> None:
        self.provider = provider
        self.base_url = base_url.rstrip("/")
        self._headers = dict(headers)
        self.timeout = timeout

    def get(self, path: str, query: Mapping[str, str | list[str]] | None = None) -> dict[str, Any]:
        """GET a JSON document."""
        suffix = "?" + urllib.parse.urlencode(query, doseq=True) if query else ""
        return self._call("GET", path + suffix, None, None)

    def post_json(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """POST a JSON body, returning the JSON answer."""
        return self._call("POST", path, json.dumps(body).encode(), "application/json")

    def post_form(self, path: str, fields: Mapping[str, str]) -> dict[str, Any]:
        """POST form fields (Stripe's API style), returning the JSON answer."""
        data = urllib.parse.urlencode(fields).encode()
        return self._call("POST", path, data, "application/x-www-form-urlencoded")

    def _call(
        self, method: str, path: str, data: bytes | None, content_type: str | None
    ) -> dict[str, Any]:
        request = urllib.request.Request(  # noqa: S310 (the base URL is operator-configured https)
            self.base_url + path, data=data, method=method, headers=self._headers
        )
        request.add_header("Accept", "application/json")
        if content_type:
            request.add_header("Content-Type", content_type)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310
                raw = response.read(MAX_RESPONSE_BYTES + 1)
        except urllib.error.HTTPError as exc:
            raise self._failed(f"answered HTTP {exc.code} to {method} {_path(path)}") from None
        except OSError:  # URLError, timeouts, refused or reset connections
            raise self._failed(f"could not be reached for {method} {_path(path)}") from None
        return self._decode(raw, method, path)

    def _decode(self, raw: bytes, method: str, path: str) -> dict[str, Any]:
        if len(raw) > MAX_RESPONSE_BYTES:
            raise self._failed(f"sent an oversized answer to {method} {_path(path)}")
        try:
            document = json.loads(raw)
        except ValueError:
            raise self._failed(f"sent a non-JSON answer to {method} {_path(path)}") from None
        if not isinstance(document, dict):
            raise self._failed(f"sent an unexpected answer to {method} {_path(path)}")
        return document

    def _failed(self, what: str) -> KycProviderUnavailable:
        return KycProviderUnavailable(f"the KYC provider {self.provider} {what}")


def _path(path: str) -> str:
    """The path without its query (which may carry references), for messages."""
    return path.split("?", 1)[0]


def segment(value: str) -> str:
    """A provider reference quoted as one URL path segment (it comes from a callback body)."""
    return urllib.parse.quote(value, safe="")
