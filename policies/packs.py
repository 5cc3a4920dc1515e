"""Jurisdiction packs: versioned, sourced lists of countries and subdivisions with dates."""

import hashlib
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import date
from functools import cached_property
from pathlib import Path
from typing import NamedTuple

from policies._document import Reader, child, read_document
from policies.errors import PackError, PolicyIssue
from policies.iso3166 import is_jurisdiction_code
from policies.vocab import Match, PackStatus

PACK_ID = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
LIST_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
_VERSION = re.compile(r"[0-9A-Za-z][0-9A-Za-z.-]{0,31}")
_REFERENCE = re.compile(r"pack:([^#]*)(?:#(.*))?")
DEFAULT_LIST = "default"
CUSTOM_PREFIX = "custom-"  # a policy's own packs; shipped packs never use it, so never shadowed
_MAX_MERGED = 256
PACKS_DIR = Path(__file__).with_name("packs")


def _iso(day: date | None) -> str | None:
    return day.isoformat() if day is not None else None


@dataclass(frozen=True)
class PackEntry:
    """One listed country or subdivision, with the dates between which the listing holds."""

    code: str
    effective_from: date | None = None
    effective_to: date | None = None
    partial: bool = False
    note: str | None = None

    def in_effect(self, on: date) -> bool:
        """Whether the listing holds on `on` (effective_to is exclusive)."""
        started = self.effective_from is None or self.effective_from <= on
        return started and (self.effective_to is None or on < self.effective_to)

    def match(self, code: str) -> Match:
        """How the signal `code` relates to this entry, ignoring dates."""
        if code == self.code or code.startswith(f"{self.code}-"):
            return Match.PARTIAL if self.partial else Match.FULL
        return Match.PARTIAL if self.code.startswith(f"{code}-") else Match.NONE

    def to_dict(self) -> dict[str, object]:
        """Canonical JSON-ready form."""
        return {
            "code": self.code,
            "effective_from": _iso(self.effective_from),
            "effective_to": _iso(self.effective_to),
            "partial": self.partial,
            "note": self.note,
        }


@dataclass(frozen=True)
class PackList:
    """A named list of entries inside a pack."""

    name: str
    entries: tuple[PackEntry, ...]

    def match(self, code: str, on: date) -> tuple[Match, PackEntry | None]:
        """The strongest match of `code` among entries in effect on `on`, and its entry."""
        best: tuple[Match, PackEntry | None] = (Match.NONE, None)
        for entry in self._by_country.get(_country(code), ()):
            found = entry.match(code) if entry.in_effect(on) else Match.NONE
            if found is Match.FULL:
                return found, entry
            if found is Match.PARTIAL and best[1] is None:
                best = (found, entry)
        return best

    @cached_property
    def _by_country(self) -> dict[str, tuple[PackEntry, ...]]:
        """Entries by the country part of their code, in list order: only an entry of the
        same country can match a code (equal, one a subdivision of the other)."""
        found: dict[str, list[PackEntry]] = {}
        for entry in self.entries:
            found.setdefault(_country(entry.code), []).append(entry)
        return {country: tuple(entries) for country, entries in found.items()}


def _country(code: str) -> str:
    return code.split("-", 1)[0]


@dataclass(frozen=True)
class JurisdictionPack:
    """Versioned jurisdiction data with its sources; content-hashed for decision records."""

    id: str
    version: str
    title: str
    status: PackStatus
    sources: tuple[str, ...]
    lists: dict[str, PackList]
    enforcement_ended: date | None = None
    notes: str | None = None

    def to_dict(self) -> dict[str, object]:
        """Canonical JSON-ready form (the input of the content hash)."""
        return {
            "id": self.id,
            "version": self.version,
            "title": self.title,
            "status": self.status.value,
            "sources": list(self.sources),
            "lists": {name: [e.to_dict() for e in pl.entries] for name, pl in self.lists.items()},
            "enforcement_ended": _iso(self.enforcement_ended),
            "notes": self.notes,
        }

    @cached_property
    def content_hash(self) -> str:
        """sha256 (hex) of the canonical JSON form."""
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


class ListRef(NamedTuple):
    """A resolved pack reference: which list of which pack version."""

    pack_id: str
    version: str
    list_name: str


def parse_reference(ref: str) -> tuple[str, str] | str:
    """Split `pack:<id>[#<list>]` into (pack id, list name), or return a literal ISO code."""
    found = _REFERENCE.fullmatch(ref)
    if found is None:
        if is_jurisdiction_code(ref):
            return ref
        raise ValueError(
            f"'{ref}' is not a jurisdiction reference: use pack:<id>, pack:<id>#<list>, an "
            "assigned ISO 3166-1 alpha-2 code such as CN or an ISO 3166-2 code such as UA-43"
        )
    pack_id, list_name = found.group(1), found.group(2) or DEFAULT_LIST
    if not PACK_ID.fullmatch(pack_id) or not LIST_NAME.fullmatch(list_name):
        raise ValueError(f"'{ref}' is not a well-formed pack reference (pack:<id>#<list>)")
    return pack_id, list_name


class PackRegistry:
    """The jurisdiction packs available to policies, by id."""

    def __init__(self, packs: Iterable[JurisdictionPack] = ()) -> None:
        self._packs: dict[str, JurisdictionPack] = {}
        self._resolved: dict[str, ListRef | str] = {}
        self._merged: dict[tuple[tuple[str, str], ...], PackRegistry] = {}
        for pack in packs:
            if pack.id in self._packs:
                raise ValueError(f"jurisdiction pack '{pack.id}' is loaded twice")
            self._packs[pack.id] = pack

    def __iter__(self) -> Iterator[JurisdictionPack]:
        return iter(self._packs.values())

    def __len__(self) -> int:
        return len(self._packs)

    def get(self, pack_id: str) -> JurisdictionPack | None:
        """The pack with this id, or None."""
        return self._packs.get(pack_id)

    def with_custom(self, custom: tuple[JurisdictionPack, ...]) -> "PackRegistry":
        """These packs plus a policy's own (memoized by their ids and content hashes)."""
        if not custom:
            return self
        key = tuple((pack.id, pack.content_hash) for pack in custom)
        found = self._merged.get(key)
        if found is None:
            if len(self._merged) >= _MAX_MERGED:
                self._merged.clear()
            found = self._merged[key] = PackRegistry((*self._packs.values(), *custom))
        return found

    def resolve(self, ref: str) -> ListRef | str:
        """Resolve a reference to a pack list or a literal code; LookupError if unknown."""
        found = self._resolved.get(ref)
        if found is None:
            found = self._resolved[ref] = self._resolve(ref)  # the loaded packs never change
        return found

    def _resolve(self, ref: str) -> ListRef | str:
        parsed = parse_reference(ref)
        if isinstance(parsed, str):
            return parsed
        pack_id, list_name = parsed
        pack = self._packs.get(pack_id)
        if pack is None:
            known = ", ".join(sorted(self._packs)) or "none"
            raise LookupError(f"unknown jurisdiction pack '{pack_id}'; known packs: {known}")
        if list_name not in pack.lists:
            lists = ", ".join(sorted(pack.lists))
            raise LookupError(f"pack '{pack_id}' has no list '{list_name}'; its lists: {lists}")
        return ListRef(pack_id, pack.version, list_name)

    def used_by(self, refs: Iterable[str]) -> tuple[tuple[str, str, str], ...]:
        """(id, version, content_hash) of every loaded pack that `refs` name, sorted by id."""
        named = {ref.removeprefix("pack:").split("#")[0] for ref in refs if ref.startswith("pack:")}
        packs = [self._packs[pack_id] for pack_id in sorted(named) if pack_id in self._packs]
        return tuple((pack.id, pack.version, pack.content_hash) for pack in packs)

    def match_entry(self, ref: str, code: str, on: date) -> tuple[Match, PackEntry | None]:
        """How `code` matches the reference on `on`, with the entry that matched."""
        target = self.resolve(ref)
        if isinstance(target, str):
            entry = PackEntry(target)
            found = entry.match(code)
            return found, entry if found is not Match.NONE else None
        return self._packs[target.pack_id].lists[target.list_name].match(code, on)

    def matches(self, ref: str, code: str, on: date) -> Match:
        """How `code` matches the reference on `on`: none, full or partial."""
        return self.match_entry(ref, code, on)[0]


def load_packs(directory: Path | None = None) -> PackRegistry:
    """Load every `*.yaml` pack in `directory` (default: the packs shipped with Airlock)."""
    folder = directory or PACKS_DIR
    return PackRegistry(_load_file(path) for path in sorted(folder.glob("*.yaml")))


def _load_file(path: Path) -> JurisdictionPack:
    pack = parse_pack(path.read_text(encoding="utf-8"), source=path.name)
    if pack.id != path.stem:
        message = f"pack id '{pack.id}' must match the file name '{path.name}'"
        raise PackError([PolicyIssue("id", None, message)], path.name)
    if pack.id.startswith(CUSTOM_PREFIX):
        message = f"pack ids starting '{CUSTOM_PREFIX}' are reserved for policies' own packs"
        raise PackError([PolicyIssue("id", None, message)], path.name)
    return pack


def parse_pack(text: str, source: str = "<pack>") -> JurisdictionPack:
    """Parse and strictly validate one pack document; raise PackError listing every issue."""
    data, r = read_document(text)
    pack = read_pack(r, data, "")
    if r.issues:
        raise PackError(r.issues, source)
    return pack


def read_pack(r: Reader, value: object, path: str) -> JurisdictionPack:
    """Read one pack at `path` of a document, collecting issues in `r` (files and policies)."""
    required = ("id", "version", "title", "status", "sources", "lists")
    m = r.mapping(value, path, required, optional=("enforcement_ended", "notes"))
    hint = "a pack id (lower-case letters, digits, -)"
    return JurisdictionPack(
        id=r.text(m.get("id"), child(path, "id"), PACK_ID, hint) or "",
        version=_version(r, m.get("version"), child(path, "version")),
        title=r.text(m.get("title"), child(path, "title")) or "",
        status=r.choice(PackStatus, m.get("status"), child(path, "status"), "pack status")
        or PackStatus.ACTIVE,
        sources=tuple(_texts(r, m.get("sources"), child(path, "sources"))),
        lists=_lists(r, m.get("lists"), child(path, "lists")),
        enforcement_ended=r.day(m.get("enforcement_ended"), child(path, "enforcement_ended")),
        notes=r.text(m.get("notes"), child(path, "notes")),
    )


def _version(r: Reader, value: object, path: str) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    return r.text(value, path, _VERSION, "a version such as 3 or 2025-07-01") or ""


def _texts(r: Reader, value: object, path: str) -> list[str]:
    return [text for here, item in r.items(value, path) if (text := r.text(item, here))]


def _lists(r: Reader, value: object, path: str) -> dict[str, PackList]:
    lists: dict[str, PackList] = {}
    for name, entries in r.table(value, path).items():
        here = child(path, name)
        if r.text(name, here, LIST_NAME, "a list name (lower-case letters, digits, - and _)"):
            lists[name] = PackList(name, _entries(r, entries, here))
    return lists


def _entries(r: Reader, value: object, path: str) -> tuple[PackEntry, ...]:
    entries: list[PackEntry] = []
    for here, item in r.items(value, path):
        entry = _entry(r, item, here)
        if entry is None:
            continue
        if any(_overlap(entry, other) for other in entries):
            r.error(here, f"'{entry.code}' is listed twice for overlapping dates")
        entries.append(entry)
    return tuple(entries)


def _entry(r: Reader, value: object, path: str) -> PackEntry | None:
    if isinstance(value, str):
        value = {"code": value}
    keys = ("effective_from", "effective_to", "partial", "note")
    m = r.mapping(value, path, required=("code",), optional=keys)
    code = _code(r, m.get("code"), child(path, "code"))
    start = r.day(m.get("effective_from"), child(path, "effective_from"))
    end = r.day(m.get("effective_to"), child(path, "effective_to"))
    if start is not None and end is not None and end <= start:
        r.error(child(path, "effective_to"), "must be later than effective_from")
    partial = r.boolean(m.get("partial"), child(path, "partial"))
    note = r.text(m.get("note"), child(path, "note"))
    return PackEntry(code, start, end, partial, note) if code is not None else None


def _code(r: Reader, value: object, path: str) -> str | None:
    code = r.text(value, path)
    if code is not None and not is_jurisdiction_code(code):
        r.error(path, f"'{code}' is not an assigned ISO 3166-1 alpha-2 or ISO 3166-2 code")
        return None
    return code


def _overlap(a: PackEntry, b: PackEntry) -> bool:
    if a.code != b.code:
        return False
    a_start, b_start = a.effective_from or date.min, b.effective_from or date.min
    return a_start < (b.effective_to or date.max) and b_start < (a.effective_to or date.max)
