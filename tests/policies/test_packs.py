"""Jurisdiction packs: shipped data, matching with dates and partial entries, strict validation."""

from datetime import date
from pathlib import Path

import pytest

from policies import (
    JurisdictionPack,
    ListRef,
    Match,
    PackEntry,
    PackError,
    PackList,
    PackRegistry,
    PackStatus,
    load_packs,
    parse_pack,
)
from policies.iso3166 import COUNTRY_CODES, is_jurisdiction_code

PACKS = load_packs()
OFAC = "pack:us-ofac-comprehensive"
BIS = "pack:us-bis-ai-diffusion-2025"
D5 = {"AF", "BY", "CD", "CF", "CN", "CU", "ER", "HT", "IQ", "IR", "KH", "KP", "LB", "LY", "MM"}
D5 |= {"NI", "RU", "SO", "SS", "SY", "VE", "ZW"}
TIER1 = {"US", "AU", "BE", "CA", "DK", "FI", "FR", "DE", "IE", "IT", "JP", "NL", "NZ", "NO"}
TIER1 |= {"KR", "ES", "SE", "TW", "GB"}
EU = {"AT", "BE", "BG", "HR", "CY", "CZ", "DK", "EE", "FI", "FR", "DE", "GR", "HU", "IE", "IT"}
EU |= {"LV", "LT", "LU", "MT", "NL", "PL", "PT", "RO", "SK", "SI", "ES", "SE"}

# If a pack's content changes, bump its version and update this table in the same change.
HASHES = {
    ("eu", "2020-02-01"): "4cc009dd00a2f894ebe9dad61b1ee3d3de61c441cbb8042daa9edbad16eda510",
    ("us-bis-ai-diffusion-2025", "2026-02-03"): (
        "beedd6448c1037ae9a1d0cca8386b7f710aa793e60998ebc798e61d63067a036"
    ),
    ("us-ofac-comprehensive", "2025-07-01"): (
        "e8c4218f269d222dd06ba87991958c271fa273d3baca50093cac839aef603703"
    ),
}


def pack(pack_id: str) -> JurisdictionPack:
    found = PACKS.get(pack_id)
    assert found is not None
    return found


def codes(pack_id: str, list_name: str) -> set[str]:
    return {entry.code for entry in pack(pack_id).lists[list_name].entries}


def test_shipped_packs_load() -> None:
    assert sorted(p.id for p in PACKS) == [
        "eu",
        "us-bis-ai-diffusion-2025",
        "us-ofac-comprehensive",
    ]
    assert all(p.sources and p.title for p in PACKS)


def test_content_hashes_are_pinned_per_version() -> None:
    assert {(p.id, p.version): p.content_hash for p in PACKS} == HASHES
    assert {(p.id, p.content_hash) for p in load_packs()} == {(p.id, p.content_hash) for p in PACKS}


def test_ofac_data() -> None:
    ofac = pack("us-ofac-comprehensive")
    assert ofac.status is PackStatus.ACTIVE
    entries = {entry.code: entry for entry in ofac.lists["default"].entries}
    assert set(entries) == {"CU", "IR", "KP", "UA-43", "UA-40", "UA-14", "UA-09", "SY"}
    assert entries["UA-43"].effective_from == date(2014, 12, 19)
    assert entries["UA-14"].partial and entries["UA-09"].partial
    assert entries["UA-09"].effective_from == date(2022, 2, 21)
    assert entries["SY"].effective_to == date(2025, 7, 1)


def test_bis_data() -> None:
    bis = pack("us-bis-ai-diffusion-2025")
    assert bis.status is PackStatus.NOT_ENFORCED
    assert bis.enforcement_ended == date(2025, 5, 13)
    assert codes(bis.id, "tier1") == TIER1 and len(TIER1) == 19
    assert codes(bis.id, "d5") == D5 and len(D5) == 22
    assert codes(bis.id, "tier3") == D5 | {"MO"}
    assert bis.notes is not None and "otherwise" in bis.notes
    assert "tier2" not in bis.lists


def test_eu_data() -> None:
    assert codes("eu", "default") == EU and len(EU) == 27


def test_iso_country_list() -> None:
    assert len(COUNTRY_CODES) == 250  # 249 assigned plus XK
    assert {"GB", "NO", "XK"} <= COUNTRY_CODES and "UK" not in COUNTRY_CODES
    assert is_jurisdiction_code("UA-43") and not is_jurisdiction_code("ZZ-1")


@pytest.mark.parametrize(
    ("ref", "code", "on", "expected"),
    [
        (OFAC, "CU", "2026-01-01", Match.FULL),
        (OFAC, "CU-03", "2026-01-01", Match.FULL),
        (OFAC, "UA-43", "2014-12-19", Match.FULL),
        (OFAC, "UA-43", "2014-12-18", Match.NONE),
        (OFAC, "UA-40", "2026-01-01", Match.FULL),
        (OFAC, "UA", "2026-01-01", Match.PARTIAL),
        (OFAC, "UA", "2014-01-01", Match.NONE),
        (OFAC, "UA-14", "2022-02-21", Match.PARTIAL),
        (OFAC, "UA-14", "2022-02-20", Match.NONE),
        (OFAC, "UA-46", "2026-01-01", Match.NONE),
        (OFAC, "SY", "2025-06-30", Match.FULL),
        (OFAC, "SY", "2025-07-01", Match.NONE),
        (OFAC, "DE", "2026-01-01", Match.NONE),
        (f"{BIS}#d5", "KH", "2026-02-02", Match.FULL),
        (f"{BIS}#d5", "KH", "2026-02-03", Match.NONE),
        (f"{BIS}#tier3", "KH", "2026-02-03", Match.NONE),
        (f"{BIS}#tier3", "MO", "2026-01-01", Match.FULL),
        (f"{BIS}#tier1", "NO", "2026-01-01", Match.FULL),
        ("pack:eu", "FR-75C", "2026-01-01", Match.FULL),
        ("pack:eu#default", "GB", "2026-01-01", Match.NONE),
        ("CN", "CN-BJ", "2026-01-01", Match.FULL),
        ("UA-43", "UA", "2026-01-01", Match.PARTIAL),
        ("UA-43", "UA-43", "2026-01-01", Match.FULL),
        ("UA-43", "UA-40", "2026-01-01", Match.NONE),
    ],
)
def test_matches(ref: str, code: str, on: str, expected: Match) -> None:
    assert PACKS.matches(ref, code, date.fromisoformat(on)) is expected


def scan(plist: PackList, code: str, on: date) -> tuple[Match, PackEntry | None]:
    """The matching rule stated plainly: every entry in list order, first full match wins."""
    best: tuple[Match, PackEntry | None] = (Match.NONE, None)
    for entry in plist.entries:
        found = entry.match(code) if entry.in_effect(on) else Match.NONE
        if found is Match.FULL:
            return found, entry
        if found is Match.PARTIAL and best[1] is None:
            best = (found, entry)
    return best


def test_matching_by_country_index_agrees_with_a_scan_of_every_entry() -> None:
    listed = {e.code for p in PACKS for pl in p.lists.values() for e in pl.entries}
    probes = listed | set(COUNTRY_CODES) | {"UA-99", "RU-CRIMEA", "US-CA", "XK"}
    days = [date(2000, 1, 1), date(2022, 2, 21), date(2022, 2, 22), date(2026, 1, 1)]
    for plist in (pl for p in PACKS for pl in p.lists.values()):
        for code in probes:
            for day in days:
                assert plist.match(code, day) == scan(plist, code, day), (plist.name, code, day)


def test_resolve() -> None:
    assert PACKS.resolve("pack:eu") == ListRef("eu", "2020-02-01", "default")
    assert PACKS.resolve(f"{BIS}#tier1") == ("us-bis-ai-diffusion-2025", "2026-02-03", "tier1")
    assert PACKS.resolve("UA-43") == "UA-43"


@pytest.mark.parametrize(
    ("ref", "error", "message"),
    [
        ("pack:nope", LookupError, "unknown jurisdiction pack 'nope'"),
        (f"{BIS}#tier2", LookupError, "lists: d5, tier1, tier3"),
        ("pack:", ValueError, "well-formed"),
        ("UK", ValueError, "ISO 3166"),
        ("ua-43", ValueError, "ISO 3166"),
    ],
)
def test_resolve_errors(ref: str, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        PACKS.resolve(ref)


def test_used_by() -> None:
    refs = [OFAC, f"{BIS}#tier1", f"{BIS}#tier3", "CN", "pack:missing"]
    used = PACKS.used_by(refs)
    assert [(pack_id, version) for pack_id, version, _ in used] == [
        ("us-bis-ai-diffusion-2025", "2026-02-03"),
        ("us-ofac-comprehensive", "2025-07-01"),
    ]


MINIMAL = """\
id: sample
version: "1"
title: Sample
status: active
sources: [https://example.org]
lists:
  default:
    - CU
    - {code: UA-43, effective_from: 2014-12-19, note: Crimea}
"""


def test_hash_ignores_formatting_but_not_content() -> None:
    reformatted = """\
title: Sample
id: sample
lists: {default: [{code: CU}, {note: Crimea, effective_from: "2014-12-19", code: UA-43}]}
status: active
version: '1'
sources:
  - https://example.org
"""
    original = parse_pack(MINIMAL)
    assert parse_pack(reformatted).content_hash == original.content_hash
    assert parse_pack(MINIMAL.replace("CU", "IR")).content_hash != original.content_hash


@pytest.mark.parametrize(
    ("old", "new", "path", "line", "message"),
    [
        ("    - CU", "    - UK", "lists.default[0].code", 8, "ISO 3166"),
        ("    - CU", "    - cu", "lists.default[0].code", 8, "ISO 3166"),
        ("2014-12-19", "2014-13-19", "lists.default[1].effective_from", 9, "YYYY-MM-DD"),
        ("note: Crimea", "effective_to: 2014-01-01", "lists.default[1].effective_to", 9, "later"),
        ("note: Crimea", "partial: yes", "lists.default[1].partial", 9, "true or false"),
        ("note: Crimea", "notes: Crimea", "lists.default[1].notes", 9, "did you mean 'note'"),
        ("status: active", "status: enforced", "status", 4, "not_enforced"),
        ("sources: [https://example.org]", "sources: []", "sources", 5, "empty"),
        ("title: Sample\n", "", "title", 1, "required"),
        ("  default:", "  Default List:", "lists.Default List", 7, "list name"),
        ("    - CU", "    - UA-43", "lists.default[1]", 9, "twice"),
        ("id: sample", "id: Sample Pack", "id", 1, "pack id"),
    ],
)
def test_strict_pack_validation(old: str, new: str, path: str, line: int, message: str) -> None:
    with pytest.raises(PackError) as caught:
        parse_pack(MINIMAL.replace(old, new), source="sample.yaml")
    matching = [issue for issue in caught.value.issues if issue.path == path]
    assert matching and matching[0].line == line, caught.value.issues
    assert message in matching[0].message
    assert str(caught.value).startswith("sample.yaml:")


def test_relisting_after_a_gap_is_allowed() -> None:
    text = MINIMAL + "    - {code: CU, effective_from: 2020-01-01}\n"
    text = text.replace("    - CU\n", "    - {code: CU, effective_to: 2019-01-01}\n")
    assert len(parse_pack(text).lists["default"].entries) == 3


def test_load_packs_from_a_directory(tmp_path: Path) -> None:
    (tmp_path / "sample.yaml").write_text(MINIMAL, encoding="utf-8")
    (tmp_path / "README.md").write_text("not a pack", encoding="utf-8")
    registry = load_packs(tmp_path)
    assert [p.id for p in registry] == ["sample"] and len(registry) == 1


def test_load_packs_reports_the_bad_file(tmp_path: Path) -> None:
    (tmp_path / "sample.yaml").write_text(MINIMAL.replace("CU", "XX"), encoding="utf-8")
    with pytest.raises(PackError) as caught:
        load_packs(tmp_path)
    assert caught.value.source == "sample.yaml"


def test_pack_id_must_match_file_name(tmp_path: Path) -> None:
    (tmp_path / "other.yaml").write_text(MINIMAL, encoding="utf-8")
    with pytest.raises(PackError, match="file name"):
        load_packs(tmp_path)


def test_registry_refuses_duplicate_ids() -> None:
    sample = parse_pack(MINIMAL)
    with pytest.raises(ValueError, match="twice"):
        PackRegistry([sample, sample])
