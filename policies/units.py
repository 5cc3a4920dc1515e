"""Durations (`15m`, `90d`), byte sizes (`400GB`, `1.5GiB`) and dates as written in policies."""

import re
from datetime import date, timedelta
from decimal import Decimal

_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_DURATION = re.compile(r"([1-9][0-9]*)([smhdw])")
_DURATION_UNITS = {"w": 604800, "d": 86400, "h": 3600, "m": 60, "s": 1}
_BYTE_SIZE = re.compile(r"([0-9]+(?:\.[0-9]+)?) ?([KMGTP]i?B|kB|B)")
_BYTE_UNITS = {
    "B": 1,
    "kB": 10**3,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "PB": 10**15,
    "KiB": 2**10,
    "MiB": 2**20,
    "GiB": 2**30,
    "TiB": 2**40,
    "PiB": 2**50,
}


def parse_duration(text: str) -> timedelta:
    """Parse `<positive integer><s|m|h|d|w>`, e.g. `90d`; raise ValueError otherwise."""
    found = _DURATION.fullmatch(text)
    if found is None:
        raise ValueError(f"'{text}' is not a duration such as 30s, 15m, 12h, 90d or 2w")
    return timedelta(seconds=int(found.group(1)) * _DURATION_UNITS[found.group(2)])


def format_duration(value: timedelta) -> str:
    """Write a duration in the largest unit that divides it exactly, e.g. `2w` or `90d`."""
    seconds = int(value.total_seconds())
    unit = next(u for u, size in _DURATION_UNITS.items() if seconds % size == 0)
    return f"{seconds // _DURATION_UNITS[unit]}{unit}"


def parse_byte_size(value: int | str) -> int:
    """Parse a byte count: an integer, or `400GB`, `1.5GiB`, `500MB` (SI or IEC units)."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    found = _BYTE_SIZE.fullmatch(value) if isinstance(value, str) else None
    if found is None:
        raise ValueError(f"'{value}' is not a byte size such as 500MB, 400GB or 1.5GiB")
    return int(Decimal(found.group(1)) * _BYTE_UNITS[found.group(2)])


def parse_date(text: str) -> date:
    """Parse a calendar date written exactly YYYY-MM-DD; raise ValueError otherwise."""
    if _DATE.fullmatch(text) is None:
        raise ValueError(f"'{text}' is not a date written YYYY-MM-DD")
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise ValueError(f"'{text}' is not a valid date written YYYY-MM-DD") from None
