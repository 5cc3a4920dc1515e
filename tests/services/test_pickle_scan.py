"""The pickle scanner resolves every imported global, however the pickle spells it."""

from __future__ import annotations

import io
import os
import pickle
import zipfile
from collections import OrderedDict

import pytest

from gateway.services.pickle_scan import looks_like_pickle, scan


class Evil:
    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, ("echo pwned",))


def memo_bypass() -> bytes:
    """`posix system` memoized, a safe pair pushed, then the memoized pair fetched back."""
    return (
        b"\x80\x04"
        b"\x8c\x05posix\x94"  # push 'posix', MEMOIZE -> memo[0]
        b"\x8c\x06system\x94"  # push 'system', MEMOIZE -> memo[1]
        b"\x8c\x0bcollections\x8c\x0bOrderedDict"  # the last two strings pushed look safe
        b"0000"  # POP the four strings
        b"h\x00h\x01"  # BINGET 0, BINGET 1
        b"\x93"  # STACK_GLOBAL -> posix.system
        b"\x8c\x02id\x85R."  # ('id',) REDUCE STOP
    )


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (pickle.dumps(OrderedDict(a=1), protocol=4), []),
        (pickle.dumps({"w": [1, 2, 3]}, protocol=2), []),
        (pickle.dumps(Evil(), protocol=0), ["unsafe global posix.system"]),
        (pickle.dumps(Evil(), protocol=2), ["unsafe global posix.system"]),
        (pickle.dumps(Evil(), protocol=4), ["unsafe global posix.system"]),
        (pickle.dumps(Evil(), protocol=5), ["unsafe global posix.system"]),
        (memo_bypass(), ["unsafe global posix.system"]),
        (b"\x80\x04\x8c\x01a\x8c\x01b\x93.", ["unsafe global a.b"]),
        (b"\x80\x04K\x01K\x02\x93.", ["computes the name"]),
        (b"\x80\x02\x82\x01.", ["extension registry"]),
        (b"\x80\x04\x8c\x03abc", ["could not be parsed"]),
        (pickle.dumps(1) + pickle.dumps(Evil(), protocol=2), ["unsafe global posix.system"]),
    ],
)
def test_scan_finds_every_unsafe_global(data: bytes, expected: list[str]) -> None:
    problems = scan(io.BytesIO(data))
    assert len(problems) == len(expected), problems
    for problem, fragment in zip(problems, expected, strict=True):
        assert fragment in problem


def test_scan_reads_pickles_inside_a_torch_style_zip() -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("archive/data.pkl", pickle.dumps(Evil(), protocol=2))
        archive.writestr("archive/version", "3")
    buffer.seek(0)
    assert any("posix.system" in p for p in scan(buffer))


@pytest.mark.parametrize(
    ("path", "head", "expected"),
    [
        ("pytorch_model.bin", b"{}", True),
        ("notes.txt", b"\x80\x04\x95\x00", True),
        ("weights.dat", b"PK\x03\x04", True),
        ("config.json", b'{"a"', False),
    ],
)
def test_files_are_picked_by_name_or_content(path: str, head: bytes, expected: bool) -> None:
    assert looks_like_pickle(path, head) is expected
