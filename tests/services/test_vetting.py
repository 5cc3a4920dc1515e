"""Vetting one stored file: digest and size against the manifest, safetensors headers, pickles."""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import struct
import zipfile
from pathlib import Path
from typing import BinaryIO

import pytest

from gateway.db.models import RevisionFile
from gateway.services.vetting import CHUNK, MAX_HEADER, vet_file, vetting_report
from gateway.storage.local import LocalStorage


def safetensors(header: dict[str, object], data: bytes) -> bytes:
    """A safetensors file: the length prefix, the JSON header padded to 8 bytes, the data."""
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + data


def tensors(*spans: tuple[int, int], dtype: str = "U8") -> dict[str, object]:
    """A header of U8 tensors t0, t1, ... each shaped to fit its span."""
    return {
        f"t{i}": {"dtype": dtype, "shape": [end - begin], "data_offsets": [begin, end]}
        for i, (begin, end) in enumerate(spans)
    }


class Vetter:
    """Stores bytes in a real LocalStorage and vets them under a manifest entry."""

    def __init__(self, root: Path) -> None:
        self.storage = LocalStorage(root)

    def __call__(
        self, data: bytes, path: str = "model.safetensors", *, size: int | None = None
    ) -> list[str]:
        stored = self.storage.put_stream("blob", io.BytesIO(data), max_bytes=len(data) + 1)
        file = RevisionFile(
            path=path,
            size=stored.size if size is None else size,
            sha256=stored.sha256,
            storage_key="blob",
        )
        return vet_file(self.storage, file)


@pytest.fixture
def vet(tmp_path: Path) -> Vetter:
    return Vetter(tmp_path / "blobs")


def test_a_model_larger_than_the_read_buffer_passes(vet: Vetter) -> None:
    big = CHUNK * 2 + 12345  # spans several buffer refills, the last one partial
    header = {"__metadata__": {"format": "pt"}, **tensors((0, big), (big, big + 4096))}
    header["f32"] = {"dtype": "F32", "shape": [3, 5], "data_offsets": [big + 4096, big + 4156]}
    assert vet(safetensors(header, os.urandom(big + 4156))) == []


def test_a_header_larger_than_the_read_buffer_passes(vet: Vetter) -> None:
    spans = [(i, i + 1) for i in range(30_000)]  # about 2 MB of JSON
    data = safetensors(tensors(*spans), bytes(30_000))
    assert len(data) > CHUNK
    assert vet(data) == []


@pytest.mark.parametrize(
    ("header", "data_size", "problem"),
    [
        (tensors((0, 8), (4, 12)), 12, "not contiguous (gap or overlap)"),
        (tensors((0, 8), (8, 16), (8, 16)), 16, "not contiguous (gap or overlap)"),
        (tensors((0, 8), (9, 17)), 17, "not contiguous (gap or overlap)"),
        (tensors((4, 8)), 8, "not contiguous (gap or overlap)"),
        (tensors((0, 8), (8, 16)), 12, "tensor data covers 16 bytes of 12"),
        (tensors((0, 8)), 12, "tensor data covers 8 bytes of 12"),
        (tensors((0, 6), dtype="F32"), 6, "spans 6 bytes, its shape needs 24"),
        ({"t": {"dtype": "F32", "shape": [2], "data_offsets": ["0", "8"]}}, 8, "malformed"),
        ({"t": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8.0]}}, 8, "malformed"),
        ({"t": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}}, 8, "malformed"),
        ({"t": {"dtype": "F32", "shape": [2], "data_offsets": [0]}}, 8, "malformed"),
        ({"t": {"dtype": "F32", "shape": [2], "data_offsets": [-8, 0]}}, 8, "malformed"),
        ({"t": {"dtype": "F32", "shape": "2", "data_offsets": [0, 8]}}, 8, "malformed"),
        ({"t": {"dtype": "F32", "shape": [True, 2], "data_offsets": [0, 8]}}, 8, "malformed"),
        ({"t": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, 8, "malformed"),
        ({"t": {"dtype": "F128", "shape": [2], "data_offsets": [0, 8]}}, 8, "malformed"),
        ({"t": [0, 8]}, 8, "malformed"),
        ({"t": {"dtype": ["F32"], "shape": [2], "data_offsets": [0, 8]}}, 8, "malformed"),
        ({"t": {"dtype": {}, "shape": [2], "data_offsets": [0, 8]}}, 8, "malformed"),
        ({"__metadata__": {"format": 1}, **tensors((0, 8))}, 8, "__metadata__ is not a map"),
        ({"__metadata__": ["pt"], **tensors((0, 8))}, 8, "__metadata__ is not a map"),
    ],
)
def test_bad_tensor_tables_are_reported(
    vet: Vetter, header: dict[str, object], data_size: int, problem: str
) -> None:
    problems = vet(safetensors(header, bytes(data_size)))
    assert any(problem in p for p in problems), problems


def test_a_header_length_beyond_the_file_is_out_of_bounds(vet: Vetter) -> None:
    data = struct.pack("<Q", 4096) + b'{"t": {}}'
    assert vet(data) == ["header length 4096 is out of bounds"]


def test_a_header_length_beyond_the_limit_is_refused_without_reading_it(vet: Vetter) -> None:
    data = struct.pack("<Q", MAX_HEADER + 1) + b"{}"
    assert vet(data, size=MAX_HEADER + 10) == [
        "size 10 does not match the manifest's 104857610",
        f"header length {MAX_HEADER + 1} is out of bounds",
    ]


def test_a_file_cut_inside_its_header_is_reported(vet: Vetter) -> None:
    whole = safetensors(tensors((0, 8)), bytes(8))
    problems = vet(whole[:20], size=len(whole))
    assert f"size 20 does not match the manifest's {len(whole)}" in problems
    assert any("file ends inside its" in p for p in problems), problems


def test_a_file_cut_inside_its_data_is_reported(vet: Vetter) -> None:
    whole = safetensors(tensors((0, 64)), bytes(64))
    problems = vet(whole[:-10], size=len(whole))
    assert f"size {len(whole) - 10} does not match the manifest's {len(whole)}" in problems


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        (b'{"t": ', "not valid JSON"),
        ('{"t": "\u00e9"}'.encode("utf-16"), "not valid JSON"),
        (b'{"t": "\xff"}', "not valid JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b"[" * 100_000, "not valid JSON"),
        (b'{"t": ' + b"7" * 5000 + b"}", "not valid JSON"),
    ],
)
def test_headers_that_are_not_a_utf8_json_object_are_reported(
    vet: Vetter, raw: bytes, problem: str
) -> None:
    assert vet(struct.pack("<Q", len(raw)) + raw) == [f"header is {problem}"]


class ShortReads(io.RawIOBase):
    """A network-like stream: a few bytes per read, and only `read` (as botocore's body)."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        return self._data.read(min(size, 5) if size >= 0 else size)

    readinto = None  # type: ignore[assignment]


class ShortReadStorage(LocalStorage):
    """LocalStorage whose reads come back as ShortReads."""

    def open_read(self, key: str) -> BinaryIO:
        with super().open_read(key) as stream:
            return ShortReads(stream.read())  # type: ignore[return-value]


def test_streams_with_short_reads_and_no_readinto_are_vetted_alike(tmp_path: Path) -> None:
    good = safetensors(tensors((0, 64), (64, 100)), bytes(100))
    bad = safetensors(tensors((0, 64), (60, 100)), bytes(100))
    storage = ShortReadStorage(tmp_path)
    files = []
    for name, data in (("good", good), ("bad", bad)):
        storage.put_stream(name, io.BytesIO(data), max_bytes=1000)
        sha = hashlib.sha256(data).hexdigest()
        path = f"{name}.safetensors"
        files.append(RevisionFile(path=path, size=len(data), sha256=sha, storage_key=name))
    assert vetting_report(storage, files) == {
        "files": 2,
        "problems": [
            {"path": "bad.safetensors", "problem": "tensor data is not contiguous (gap or overlap)"}
        ],
    }


def test_pickles_are_scanned_after_the_digest(vet: Vetter) -> None:
    class Shell:
        def __reduce__(self) -> tuple[object, ...]:
            return (os.system, ("true",))

    assert vet(pickle.dumps({"w": [1, 2]}, 4), "weights.pkl") == []
    found = vet(pickle.dumps(Shell(), 2), "pytorch_model.bin")
    assert any("unsafe global" in p and "system" in p for p in found), found


def test_an_archive_the_scanner_cannot_read_fails_vetting(vet: Vetter) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("archive/data.pkl", pickle.dumps({"w": 1}, 2))
    data = bytearray(buffer.getvalue())
    for signature, at in ((b"PK\x03\x04", 8), (b"PK\x01\x02", 10)):  # compression method 99
        start = data.find(signature) + at
        data[start : start + 2] = (99).to_bytes(2, "little")
    assert vet(bytes(data), "model.pt") == [
        "pickle archive could not be scanned: NotImplementedError"
    ]


def test_missing_bytes_are_a_problem_not_an_error(tmp_path: Path) -> None:
    file = RevisionFile(path="a.safetensors", size=1, sha256="0" * 64, storage_key="gone")
    assert vet_file(LocalStorage(tmp_path), file) == ["the stored bytes are missing"]
