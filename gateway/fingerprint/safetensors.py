"""Reading a safetensors header from a stream: the tensors, their dtypes, shapes and bytes."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import BinaryIO

from gateway.fingerprint.floats import FORMATS, FloatFormat

MAX_HEADER = 100 * 1024 * 1024  # the limit the safetensors library itself enforces


class NotSafetensors(ValueError):
    """The bytes are not a safetensors file this module can read."""


@dataclass(frozen=True)
class TensorInfo:
    """One tensor of a file: where its bytes lie in the data section."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int

    @property
    def numel(self) -> int:
        """How many values it holds."""
        count = 1
        for dim in self.shape:
            count *= dim
        return count

    @property
    def float_format(self) -> FloatFormat | None:
        """Its float format, or None for dtypes that are never marked (ints, bools, fp8)."""
        return FORMATS.get(self.dtype)


@dataclass(frozen=True)
class Header:
    """A file's header: its raw bytes (copied verbatim) and its tensors in data order."""

    raw: bytes
    tensors: tuple[TensorInfo, ...]

    @property
    def data_start(self) -> int:
        """The file offset of the data section."""
        return len(self.raw)

    def by_name(self) -> dict[str, TensorInfo]:
        """Tensors by name."""
        return {t.name: t for t in self.tensors}


def read_header(stream: BinaryIO) -> Header:
    """Read and parse the header at the stream's position; NotSafetensors if malformed."""
    prefix = _exactly(stream, 8)
    length = int.from_bytes(prefix, "little")
    if length > MAX_HEADER:
        raise NotSafetensors(f"header of {length} bytes exceeds {MAX_HEADER}")
    body = _exactly(stream, length)
    try:
        parsed = json.loads(body)
    except (UnicodeDecodeError, ValueError) as exc:
        raise NotSafetensors("the header is not JSON") from exc
    if not isinstance(parsed, dict):
        raise NotSafetensors("the header is not a JSON object")
    tensors = [_tensor(name, entry) for name, entry in parsed.items() if name != "__metadata__"]
    return Header(prefix + body, tuple(sorted(tensors, key=lambda t: t.start)))


def _tensor(name: str, entry: object) -> TensorInfo:
    if not isinstance(entry, dict):
        raise NotSafetensors(f"tensor {name[:100]!r} is not described by an object")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if not (
        isinstance(dtype, str)
        and isinstance(shape, list)
        and all(isinstance(d, int) and d >= 0 for d in shape)
        and isinstance(offsets, list)
        and len(offsets) == 2
        and all(isinstance(o, int) and o >= 0 for o in offsets)
        and offsets[0] <= offsets[1]
    ):
        raise NotSafetensors(f"tensor {name[:100]!r} has a malformed dtype, shape or offsets")
    info = TensorInfo(name, dtype, tuple(shape), offsets[0], offsets[1])
    fmt = info.float_format
    if fmt is not None and info.end - info.start != info.numel * fmt.size:
        raise NotSafetensors(f"tensor {name[:100]!r} holds the wrong number of bytes")
    return info


def _exactly(stream: BinaryIO, n: int) -> bytes:
    data = bytearray()
    while len(data) < n:
        chunk = stream.read(n - len(data))
        if not chunk:
            raise NotSafetensors("the file ends inside its header")
        data += chunk
    return bytes(data)
