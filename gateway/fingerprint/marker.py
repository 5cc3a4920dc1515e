"""Streaming marker: a safetensors file in, the same file with a grant's mark out.

The header bytes pass through unchanged; the data section is copied in chunks and the chosen
values are patched as they pass, so memory stays bounded by the chunk size and the number of
marks, whatever the file's size.
"""

from __future__ import annotations

import io
import struct
import sys
from array import array
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO, cast

from gateway.fingerprint.floats import FloatFormat
from gateway.fingerprint.keys import FingerprintKey, codeword
from gateway.fingerprint.safetensors import Header, NotSafetensors, TensorInfo, read_header
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


@dataclass(frozen=True)
class TensorPatches:
    """The values one tensor's mark moves: `position * 2 + up` entries, sorted."""

    start: int  # the tensor's offset in the data section
    fmt: FloatFormat
    entries: list[int]

    def offset(self, i: int) -> int:
        """The data-section offset of the i-th value to move."""
        return self.start + (self.entries[i] >> 1) * self.fmt.size


def patches(
    header: Header, marks: list[MarkedTensor], key: FingerprintKey, grant_id: int
) -> list[TensorPatches]:
    """Every value the grant's mark moves, tensor by tensor in file order."""
    tensors = header.by_name()
    found = []
    for mark in marks:
        tensor = tensors[mark.name]
        fmt = tensor.float_format
        assert fmt is not None  # marked_tensors keeps float tensors only
        entries = codeword(key, grant_id, tensor.name, tensor.numel, mark.positions)
        found.append(TensorPatches(tensor.start, fmt, entries))
    return sorted(found, key=lambda t: t.start)


class MarkedStream(io.RawIOBase):
    """A readable stream of the marked copy of a safetensors `source`."""

    def __init__(
        self, source: BinaryIO, header: Header, todo: list[TensorPatches], *, chunk: int = CHUNK
    ):
        self._chunks = _marked_chunks(source, header, todo, chunk)
        self._pending = memoryview(b"")

    def readable(self) -> bool:
        """Always."""
        return True

    def read(self, size: int | None = -1) -> bytes:
        """Up to `size` bytes (at most one marked chunk per call), or all that is left; b""
        at the end."""
        if size is None or size < 0:
            return b"".join([bytes(self._pending), *self._chunks])
        if not self._pending:
            self._pending = memoryview(next(self._chunks, b""))
        data, self._pending = self._pending[:size], self._pending[size:]
        return bytes(data)

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        """Fill `buffer` from the current marked chunk."""
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def _marked_chunks(
    source: BinaryIO, header: Header, todo: list[TensorPatches], chunk: int
) -> Iterator[bytes | bytearray]:
    yield header.raw
    offset, t, i = 0, 0, 0  # next byte of the data section; next tensor and entry
    while data := source.read(chunk):
        buf = bytearray(data)
        end = offset + len(buf)
        if t < len(todo):  # a value split by the chunk boundary: read the rest of it now
            at, size = todo[t].offset(i), todo[t].fmt.size
            if at < end < at + size:
                buf += source.read(at + size - end)
                end = offset + len(buf)
        while t < len(todo):
            i = _apply_tensor(buf, offset, end, todo[t], i)
            if i < len(todo[t].entries):
                break
            t, i = t + 1, 0
        offset = end
        yield buf


_WORDS = {2: struct.Struct("<H"), 4: struct.Struct("<I")}


def _apply_tensor(buf: bytearray, offset: int, end: int, tensor: TensorPatches, i: int) -> int:
    """Move the tensor's values that lie in `buf` from entry i on; the next entry left."""
    fmt, entries = tensor.fmt, tensor.entries
    word, size, base = _WORDS[fmt.size], fmt.size, tensor.start - offset
    sign, top = fmt.sign_bit, fmt.infinity - 1
    while i < len(entries):
        at = base + (entries[i] >> 1) * size
        if at + size > end - offset:
            break
        (bits,) = word.unpack_from(buf, at)
        if 1 < bits & (sign - 1) < top:  # zeros, extremes, inf and NaN are skipped, as trace does
            up, negative = entries[i] & 1, bits & sign
            word.pack_into(buf, at, bits - 1 if bool(up) == bool(negative) else bits + 1)
        i += 1
    return i


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
    return cast(BinaryIO, stream), marks


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
        data = source.read(stop - first)
        if len(data) != stop - first:
            raise NotSafetensors(f"the file ends inside tensor {tensor.name[:100]!r}")
        view = array(fmt.code, data)
        if sys.byteorder == "big":  # safetensors is little-endian
            view.byteswap()
        while i < len(positions) and positions[i] * fmt.size < stop:
            values.append(int(view[positions[i] - first // fmt.size]))
            i += 1
    return values
