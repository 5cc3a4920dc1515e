"""Small parsers shared by the adapters: timestamps, dates, JSON shapes, subdivisions."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, time
from typing import Any

from gateway.errors import InvalidInput
from gateway.kyc.countries import alpha2


def load_json(raw_body: bytes) -> dict[str, Any]:
    """A callback body as a JSON object, else a 422."""
    try:
        document = json.loads(raw_body)
    except (ValueError, RecursionError):
        raise InvalidInput("the callback body is not valid JSON") from None
    if not isinstance(document, dict):
        raise InvalidInput("the callback body is not a JSON object")
    return document


def dig(document: Any, *path: str | int) -> Any:
    """`document[p0][p1]...`, or None where any step is missing or of the wrong shape."""
    for step in path:
        if (
            isinstance(step, int)
            and isinstance(document, list)
            and -len(document) <= step < len(document)
        ):
            document = document[step]
        elif isinstance(step, str) and isinstance(document, dict):
            document = document.get(step)
        else:
            return None
    return document


def required_text(document: Any, *path: str | int) -> str:
    """A non-empty string field of a callback body, else a 422 naming it."""
    value = dig(document, *path)
    if not isinstance(value, str) or not value or len(value) > 200:
        where = ".".join(str(p) for p in path)
        raise InvalidInput(f"the callback body lacks {where}")
    return value


def iso_time(value: Any) -> datetime | None:
    """An ISO 8601 timestamp as aware UTC, or None."""
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def unix_time(value: Any) -> datetime | None:
    """A Unix timestamp in seconds as aware UTC, or None."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**37:
        return None
    return datetime.fromtimestamp(value, UTC)


def day_end(value: date | None) -> datetime | None:
    """The last instant (UTC) of a calendar date, e.g. a document's expiry date."""
    return None if value is None else datetime.combine(value, time.max, UTC)


def iso_date(value: Any) -> date | None:
    """A `YYYY-MM-DD` date, or None."""
    if not isinstance(value, str):
        return None
    try:
        return date.fromisoformat(value[:10])
    except ValueError:
        return None


def subdivision(country: str | None, code: Any) -> str | None:
    """An ISO 3166-2 code from a country and a provider's region (`CA`, `US-CA`), or None."""
    if country is None or not isinstance(code, str) or not code.strip():
        return None
    upper = code.strip().upper()
    local = upper.removeprefix(country + "-")
    if not local.isalnum() or not 1 <= len(local) <= 3:
        return None
    return f"{country}-{local}"


def country(value: Any) -> str | None:
    """An alpha-2 country from a provider's alpha-2 or alpha-3 code, or None."""
    return alpha2(value) if isinstance(value, str) else None
