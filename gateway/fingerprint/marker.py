"""Streaming marker: a safetensors file in, the same file with a grant's mark out.

The header bytes pass through unchanged; the data section is copied in chunks and the chosen
values are patched as they pass, so memory stays bounded by the chunk size and the number of
marks, whatever the file's size.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from gateway.fingerprint.floats import FloatFormat, markable, nudge
from gateway.fingerprint.keys import FingerprintKey, codeword
from gateway.fingerprint.safetensors import Header, TensorInfo, read_header
from policies import Fingerprint

CHUNK = 1024 * 1024


@dataclass(frozen=True)
class MarkedTensor:
    """One tensor a file's mark touches, and how many positions it was given."""

    name: str
    positions: int


def marked_tensors(header: Header, settings: Fingerprint) -> list[MarkedTensor]:
    """The float tensors of a file the settings mark, in data order, with their K."""
    found = []
    for t in header.tensors:
        k = settings.positions_for(t.name, t.numel) if t.float_format else 0
        if k:
            found.append(MarkedTensor(t.name, k))
    return found


@dataclass(frozen=True, slots=True)
class Patch:
    """One value to move: its offset in the data section, format and direction."""

    offset: int
    fmt: FloatFormat
    up: bool


def patches(
    header: Header, marks: list[MarkedTensor], key: FingerprintKey, grant_id: int
) -> list[Patch]:
    """Every value the grant's mark moves, in file order."""
    tensors = header.by_name()
    found: list[Patch] = []
    for mark in marks:
        tensor = tensors[mark.name]
        fmt = tensor.float_format
        assert fmt is not None  # marked_tensors keeps float tensors only
        for entry in codeword(key, grant_id, tensor.name, tensor.numel, mark.positions):
            found.append(Patch(tensor.start + (entry >> 1) * fmt.size, fmt, bool(entry & 1)))
    found.sort(key=lambda p: p.offset)
    return found


class MarkedStream(io.RawIOBase):
    """A readable stream of the marked copy of a safetensors `source`."""

    def __init__(self, source: BinaryIO, header: Header, todo: list[Patch], *, chunk: int = CHUNK):
        self._chunks = _marked_chunks(source, header, todo, chunk)
        self._pending = b""

    def readable(self) -> bool:
        """Always."""
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        """Fill `buffer` from the current marked chunk (one chunk at most per call)."""
        if not self._pending:
            self._pending = next(self._chunks, b"")
        n = min(len(buffer), len(self._pending))
        buffer[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n


def _marked_chunks(
    source: BinaryIO, header: Header, todo: list[Patch], chunk: int
) -> Iterator[bytes]:
    yield header.raw
    offset, i = 0, 0  # offset of the next byte in the data section; next patch
    while data := source.read(chunk):
        buf = bytearray(data)
        end = offset + len(buf)
        # a value split by the chunk boundary: read the rest of it into this chunk
        if i < len(todo) and todo[i].offset < end < todo[i].offset + todo[i].fmt.size:
            buf += source.read(todo[i].offset + todo[i].fmt.size - end)
            end = offset + len(buf)
        while i < len(todo) and todo[i].offset + todo[i].fmt.size <= end:
            _apply(buf, todo[i].offset - offset, todo[i])
            i += 1
        offset = end
        yield bytes(buf)


def _apply(buf: bytearray, at: int, patch: Patch) -> None:
    code = "<H" if patch.fmt.size == 2 else "<I"
    (bits,) = struct.unpack_from(code, buf, at)
    if markable(patch.fmt, bits):  # zeros, extremes, inf and NaN are skipped, as trace skips
        struct.pack_into(code, buf, at, nudge(patch.fmt, bits, patch.up))


def mark(
    source: BinaryIO,
    *,
    key: FingerprintKey,
    grant_id: int,
    settings: Fingerprint,
    chunk: int = CHUNK,
) -> tuple[BinaryIO, list[MarkedTensor]]:
    """The marked copy of `source` as a stream, and the tensors its mark touches."""
    header = read_header(source)
    marks = marked_tensors(header, settings)
    stream = MarkedStream(source, header, patches(header, marks, key, grant_id), chunk=chunk)
    return io.BufferedReader(stream, buffer_size=chunk), marks


def tensor_values(
    source: BinaryIO, header: Header, tensor: TensorInfo, positions: list[int]
) -> list[int]:
    """The bit patterns at sorted `positions` of a tensor, from a seekable file (chunked)."""
    fmt = tensor.float_format
    assert fmt is not None
    values: list[int] = []
    span = CHUNK - CHUNK % fmt.size
    i = 0
    for first in range(0, tensor.numel * fmt.size, span):
        if i >= len(positions):
            break
        stop = min(first + span, tensor.end - tensor.start)
        if positions[i] * fmt.size >= stop:
            continue
        source.seek(header.data_start + tensor.start + first)
        view = memoryview(source.read(stop - first)).cast(fmt.code)
        while i < len(positions) and positions[i] * fmt.size < stop:
            values.append(int(view[positions[i] - first // fmt.size]))
            i += 1
    return values
