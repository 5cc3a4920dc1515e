"""Write tests/data/geoip-test.mmdb: a tiny MaxMind-format country database for the tests.

Only documentation networks (RFC 5737, RFC 3849), laid out like GeoLite2-Country records.
Regenerate with `pip install mmdb-writer` then `python scripts/make_geoip_fixture.py`.
"""

from __future__ import annotations

from pathlib import Path

from mmdb_writer import MMDBWriter
from netaddr import IPSet

OUT = Path(__file__).resolve().parent.parent / "tests" / "data" / "geoip-test.mmdb"
NETWORKS = {
    "192.0.2.0/24": ("DE", "Germany"),
    "198.51.100.0/25": ("IR", "Iran"),
    "198.51.100.128/25": ("UA", "Ukraine"),
    "203.0.113.0/24": ("US", "United States"),
    "2001:db8:1::/48": ("CU", "Cuba"),
    "2001:db8:2::/48": ("GB", "United Kingdom"),
}


def main() -> None:
    """Write the fixture."""
    writer = MMDBWriter(
        ip_version=6,
        ipv4_compatible=True,
        database_type="Airlock-Test-Country",
        languages=["en"],
        description="Airlock test fixture: documentation networks only",
    )
    for network, (code, name) in NETWORKS.items():
        record = {"country": {"iso_code": code, "names": {"en": name}}}
        writer.insert_network(IPSet([network]), record)
    # An address with a record but no country (like an anycast range in the real databases).
    writer.insert_network(IPSet(["192.0.2.200/32"]), {"continent": {"code": "EU"}})
    OUT.parent.mkdir(parents=True, exist_ok=True)
    writer.to_db_file(str(OUT))


if __name__ == "__main__":
    main()
