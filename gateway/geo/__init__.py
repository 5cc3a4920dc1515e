"""The request's country: from a trusted proxy's header or a GeoIP database (MaxMind format).

The country is a weak signal (VPNs); rules should lean on KYC-verified facts. Whatever a client
sends is believed only when the peer that sent it is a trusted proxy.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

import maxminddb
from maxminddb.errors import InvalidDatabaseError

from gateway.settings import Settings
from policies.iso3166 import is_country_code

log = logging.getLogger(__name__)
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class GeoUnavailable(RuntimeError):
    """The configured GeoIP database cannot be opened or read."""


class Headers(Protocol):
    """A request's headers, read by name (a dict or Werkzeug's Headers)."""

    def get(self, key: str, /) -> str | None: ...


class CountryLookup(Protocol):
    """Maps a client address to an ISO 3166-1 alpha-2 country code, or None when unknown."""

    def country(self, address: str) -> str | None: ...

    def close(self) -> None: ...


class NoDatabase:
    """No GeoIP database configured: addresses have no country."""

    def country(self, address: str) -> str | None:
        """Always unknown."""
        return None

    def close(self) -> None:
        """Nothing to release."""


class GeoIPDatabase:
    """A MaxMind-format database (GeoLite2/GeoIP2 Country or City, or any with `country`)."""

    def __init__(self, path: str | Path) -> None:
        try:
            self._reader = maxminddb.open_database(str(path))
        except (OSError, InvalidDatabaseError, ValueError) as exc:
            raise GeoUnavailable(f"cannot open the GeoIP database {path}: {exc}") from exc

    def country(self, address: str) -> str | None:
        """The country the database places `address` in; None if unknown or not an address."""
        try:
            record = self._reader.get(address)
        except ValueError:  # not an IP address, or IPv6 in an IPv4-only database
            return None
        except InvalidDatabaseError:
            log.error("the GeoIP database is corrupt; request countries are unknown")
            return None
        return _iso_code(record)

    def close(self) -> None:
        """Release the memory map."""
        self._reader.close()


def _iso_code(record: object) -> str | None:
    if not isinstance(record, Mapping):
        return None
    country = record.get("country")
    code = country.get("iso_code") if isinstance(country, Mapping) else None
    return code if isinstance(code, str) and is_country_code(code) else None


class RequestGeo:
    """Decides a request's country from its peer address and headers.

    From a trusted proxy: its country header when present and valid, else the GeoIP country of
    the client address it forwarded (the rightmost untrusted `X-Forwarded-For` hop). From any
    other peer every header is ignored and only the peer's own address is looked up.
    """

    def __init__(
        self,
        *,
        trusted_proxies: tuple[str, ...] = (),
        header: str | None = None,
        database: CountryLookup | None = None,
    ) -> None:
        self.proxies: tuple[Network, ...] = tuple(
            ipaddress.ip_network(p, strict=False) for p in trusted_proxies
        )
        self.header = header
        self.database: CountryLookup = database or NoDatabase()

    def country(self, peer: str | None, headers: Headers) -> str | None:
        """The request's ISO 3166-1 country, or None when nothing trustworthy says."""
        if not self.is_trusted(peer):
            return self.database.country(peer) if peer else None
        if self.header:
            claimed = (headers.get(self.header) or "").strip().upper()
            if is_country_code(claimed):
                return claimed
        client = self._forwarded_client(headers.get("X-Forwarded-For") or "")
        return self.database.country(client) if client else None

    def is_trusted(self, peer: str | None) -> bool:
        """Whether `peer` is one of the configured trusted proxies."""
        address = _address(peer)
        return address is not None and any(address in net for net in self.proxies)

    def _forwarded_client(self, forwarded: str) -> str | None:
        hops = [hop.strip() for hop in forwarded.split(",") if hop.strip()]
        for hop in reversed(hops):
            if _address(hop) is None:
                return None  # a malformed hop: nothing left of it can be believed
            if not self.is_trusted(hop):
                return hop
        return None

    def close(self) -> None:
        """Release the database."""
        self.database.close()


def _address(value: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(value or "")
    except ValueError:
        return None


def geo_from_settings(settings: Settings) -> RequestGeo:
    """The request geo of these settings (GeoUnavailable if the database cannot be opened)."""
    database = GeoIPDatabase(settings.geoip_db) if settings.geoip_db else None
    return RequestGeo(
        trusted_proxies=settings.trusted_proxies, header=settings.geo_header, database=database
    )
