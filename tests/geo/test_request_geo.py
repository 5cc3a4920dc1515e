"""The request country: a trusted proxy's header, else a MaxMind-format GeoIP database."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.geo import GeoIPDatabase, GeoUnavailable, RequestGeo, geo_from_settings
from gateway.settings import load_settings

FIXTURE = Path(__file__).parent.parent / "data" / "geoip-test.mmdb"
PROXY = "10.0.0.5"
HEADER = "X-Airlock-Country"


@pytest.fixture(scope="module")
def database() -> GeoIPDatabase:
    return GeoIPDatabase(FIXTURE)


@pytest.mark.parametrize(
    ("address", "country"),
    [
        ("192.0.2.1", "DE"),
        ("198.51.100.7", "IR"),
        ("198.51.100.200", "UA"),
        ("203.0.113.9", "US"),
        ("2001:db8:1::5", "CU"),
        ("2001:db8:2::1", "GB"),
        ("192.0.2.200", None),  # a record without a country
        ("8.8.8.8", None),  # not in the database
        ("not-an-address", None),
        ("", None),
    ],
)
def test_database_lookup(database: GeoIPDatabase, address: str, country: str | None) -> None:
    assert database.country(address) == country


def test_a_missing_or_corrupt_database_fails_at_startup(tmp_path: Path) -> None:
    with pytest.raises(GeoUnavailable, match="cannot open the GeoIP database"):
        GeoIPDatabase(tmp_path / "absent.mmdb")
    bad = tmp_path / "bad.mmdb"
    bad.write_bytes(b"not a maxmind database" * 10)
    with pytest.raises(GeoUnavailable):
        GeoIPDatabase(bad)


def geo(database: GeoIPDatabase | None = None, header: str | None = HEADER) -> RequestGeo:
    return RequestGeo(trusted_proxies=("10.0.0.0/24",), header=header, database=database)


@pytest.mark.parametrize(
    ("peer", "headers", "country"),
    [
        # From the trusted proxy, its header wins (normalized; invalid values ignored).
        (PROXY, {HEADER: "us"}, "US"),
        (PROXY, {HEADER: " IR "}, "IR"),
        (PROXY, {HEADER: "XX", "X-Forwarded-For": "192.0.2.1"}, "DE"),  # unknown: GeoIP
        (PROXY, {HEADER: "T1"}, None),  # Cloudflare's Tor marker is no country
        # Without the header, the client the proxy forwarded is looked up.
        (PROXY, {"X-Forwarded-For": "203.0.113.9"}, "US"),
        (PROXY, {"X-Forwarded-For": "198.51.100.7, 203.0.113.9, 10.0.0.9"}, "US"),
        (PROXY, {"X-Forwarded-For": "198.51.100.7, garbage"}, None),
        (PROXY, {}, None),
        # Anyone else: headers are spoofable and ignored; the peer's own address is looked up.
        ("203.0.113.9", {HEADER: "IR", "X-Forwarded-For": "198.51.100.7"}, "US"),
        ("198.51.100.7", {HEADER: "US"}, "IR"),
        ("8.8.8.8", {HEADER: "US", "X-Forwarded-For": "203.0.113.9"}, None),
        (None, {HEADER: "US"}, None),
        ("2001:db8:1::5", {HEADER: "US"}, "CU"),
    ],
)
def test_header_only_from_trusted_proxies(
    database: GeoIPDatabase, peer: str | None, headers: dict[str, str], country: str | None
) -> None:
    assert geo(database).country(peer, headers) == country


def test_header_without_a_database() -> None:
    assert geo().country(PROXY, {HEADER: "DE"}) == "DE"
    assert geo().country("203.0.113.9", {HEADER: "DE"}) is None
    assert geo(header=None).country(PROXY, {HEADER: "DE"}) is None


def test_from_settings(tmp_path: Path) -> None:
    env = {
        "AIRLOCK_SECRET_KEY": "k",
        "AIRLOCK_TRUSTED_PROXIES": "10.0.0.5",
        "AIRLOCK_GEO_HEADER": HEADER,
        "AIRLOCK_GEOIP_DB": str(FIXTURE),
    }
    built = geo_from_settings(load_settings(env, data_dir=tmp_path))
    assert built.country(PROXY, {HEADER: "GB"}) == "GB"
    assert built.country("10.0.0.6", {HEADER: "GB"}) is None
    assert built.country("192.0.2.1", {HEADER: "GB"}) == "DE"
    built.close()
    missing = {**env, "AIRLOCK_GEOIP_DB": str(tmp_path / "none.mmdb")}
    with pytest.raises(GeoUnavailable):
        geo_from_settings(load_settings(missing, data_dir=tmp_path))
