"""The adapters' pure parts: country codes, subdivisions, signature headers."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from gateway.errors import WebhookRejected
from gateway.kyc.countries import alpha2
from gateway.kyc.normalize import subdivision
from gateway.kyc.signatures import verify_plain, verify_timestamped
from tests.kyc.standins import hex_hmac, timestamped

NOW = datetime(2026, 11, 27, 8, 0, tzinfo=UTC)
T = int(NOW.timestamp())
BODY = b'{"id":"evt_1"}'


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("GBR", "GB"),
        ("deu", "DE"),
        ("DE", "DE"),
        (" us ", "US"),
        ("XKX", "XK"),
        ("UK", None),  # not an assigned code: never silently matched
        ("ZZZ", None),
        ("", None),
        (None, None),
    ],
)
def test_countries_normalize_to_assigned_alpha_2(given: str | None, expected: str | None) -> None:
    assert alpha2(given) == expected


@pytest.mark.parametrize(
    ("country", "region", "expected"),
    [
        ("US", "CA", "US-CA"),
        ("US", "us-ca", "US-CA"),
        ("UA", "43", "UA-43"),
        ("GB", "ENG", "GB-ENG"),
        ("US", "California", None),
        ("US", "", None),
        (None, "CA", None),
        ("US", 7, None),
    ],
)
def test_subdivisions(country: str | None, region: object, expected: str | None) -> None:
    assert subdivision(country, region) == expected


@pytest.mark.parametrize(
    "header",
    [
        timestamped("new", BODY, T),
        timestamped("new", BODY, T).upper().replace("T=", "t=").replace("V1=", "v1="),
        f"t={T},v0=abc,v1={hex_hmac('new', f'{T}.'.encode() + BODY)}",  # other schemes ignored
        f"{timestamped('gone', BODY, T)} {timestamped('new', BODY, T)}",  # Persona rotation
        f"{timestamped('new', BODY, T - 3600)} {timestamped('new', BODY, T)}",
    ],
)
def test_timestamped_signatures_accepted(header: str) -> None:
    verify_timestamped(header, BODY, ["old", "new"], NOW, name="X")


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        (timestamped("other", BODY, T), "signature_mismatch"),
        (timestamped("new", BODY + b" ", T), "signature_mismatch"),
        (timestamped("new", BODY, T - 301), "stale_timestamp"),
        (timestamped("new", BODY, T + 301), "stale_timestamp"),
        (f"t={T},v1=é{'0' * 63}", "signature_mismatch"),  # latin-1 from the wire: no 500
        (f"t={T}", "malformed_signature"),
        (f"t=-5,v1={'0' * 64}", "malformed_signature"),
        (f"t={'9' * 40},v1={'0' * 64}", "malformed_signature"),
        ("", "malformed_signature"),
    ],
)
def test_timestamped_signatures_refused(header: str, reason: str) -> None:
    with pytest.raises(WebhookRejected) as refused:
        verify_timestamped(header, BODY, ["old", "new"], NOW, name="X")
    assert refused.value.reason == reason


def test_plain_signatures() -> None:
    verify_plain(hex_hmac("old", BODY), BODY, ["old", "new"], name="X")
    verify_plain(hex_hmac("new", BODY).upper(), BODY, ["old", "new"], name="X")
    for wrong in (hex_hmac("x", BODY), hex_hmac("new", BODY)[:40], "ü" * 64, ""):
        with pytest.raises(WebhookRejected):
            verify_plain(wrong, BODY, ["old", "new"], name="X")
