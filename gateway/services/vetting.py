"""Vetting of uploaded files: digests, safetensors headers, pickle opcodes."""

from __future__ import annotations

import hashlib
import json
import math
import struct
from collections.abc import Iterator, Sequence
from typing import Any, BinaryIO

from gateway.db.models import RevisionFile
from gateway.errors import AirlockError, ArtifactMissing
from gateway.services import pickle_scan
from gateway.services.pickle_scan import looks_like_pickle
from gateway.storage import Storage

MAX_HEADER = 100 * 1024 * 1024
CHUNK = 1024 * 1024  # one reused read buffer: large enough for hashlib, small enough for L2
DTYPE_SIZES = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E5M2": 1,
    "F8_E4M3": 1,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "I64": 8,
    "U64": 8,
    "F64": 8,
}


def vetting_report(storage: Storage, files: Sequence[RevisionFile]) -> dict[str, Any]:
    """Check every file of a revision: the report `PublishingService.mark_vetted` records."""
    problems = [
        {"path": file.path, "problem": problem}
        for file in files
        for problem in vet_file(storage, file)
    ]
    return {"files": len(files), "problems": problems}


def vet_file(storage: Storage, file: RevisionFile) -> list[str]:
    """Problems found in one stored file (empty when it passes)."""
    try:
        with storage.open_read(file.storage_key) as stream:
            if file.path.endswith(".safetensors"):
                return _safetensors_file_problems(stream, file)
            head = _read_up_to(stream, 4)
            problems = _digest_problems(stream, file, head)
        if looks_like_pickle(file.path, head):
            problems += _pickle_problems(storage, file)
        return problems
    except ArtifactMissing:
        return ["the stored bytes are missing"]


def _pickle_problems(storage: Storage, file: RevisionFile) -> list[str]:
    """The opcode scan's findings; a file the scanner cannot follow fails, never passes."""
    with storage.open_read(file.storage_key) as stream:
        try:
            return pickle_scan.scan(stream)
        except AirlockError:  # storage trouble: the task retries, nothing is decided
            raise
        except Exception as exc:  # e.g. a zip member in a compression zipfile cannot read
            return [f"pickle archive could not be scanned: {type(exc).__name__}"]


def _safetensors_file_problems(stream: BinaryIO, file: RevisionFile) -> list[str]:
    """Digest, size and header problems from one read of the file (the header is kept)."""
    head = _read_up_to(stream, 8)
    if len(head) == 8 and _header_length(head) <= _header_bound(file.size):
        head += _read_up_to(stream, _header_length(head))
    return _digest_problems(stream, file, head) + safetensors_problems(head, file.size)


def _digest_problems(stream: BinaryIO, file: RevisionFile, head: bytes) -> list[str]:
    """Compare sha256 and size of `head` plus the rest of the stream with the manifest."""
    digest = hashlib.sha256(head)
    size = len(head) + _hash_rest(stream, digest)
    problems = []
    if digest.hexdigest() != file.sha256:
        problems.append("sha256 of the stored bytes does not match the manifest")
    if size != file.size:
        problems.append(f"size {size} does not match the manifest's {file.size}")
    return problems


def _hash_rest(stream: BinaryIO, digest: hashlib._Hash) -> int:
    """Feed the rest of the stream to `digest` through one reused buffer; the bytes read."""
    readinto = getattr(stream, "readinto", None)
    if readinto is None:  # a stream that only reads: fresh chunks, same digest
        return sum(_update(digest, chunk) for chunk in iter(lambda: stream.read(CHUNK), b""))
    buffer = bytearray(CHUNK)
    view, size = memoryview(buffer), 0
    while count := readinto(buffer):
        digest.update(view[:count])  # hashlib releases the GIL on large buffers
        size += count
    return size


def _update(digest: hashlib._Hash, chunk: bytes) -> int:
    digest.update(chunk)
    return len(chunk)


def _read_up_to(stream: BinaryIO, count: int) -> bytes:
    """`count` bytes, or fewer only at the end of the stream (reads may come back short)."""
    parts, left = [], count
    while left and (part := stream.read(left)):
        parts.append(part)
        left -= len(part)
    return b"".join(parts)


def _header_length(head: bytes) -> int:
    return int(struct.unpack_from("<Q", head)[0])


def _header_bound(total_size: int) -> int:
    return min(MAX_HEADER, total_size - 8)


def safetensors_problems(head: bytes, total_size: int) -> list[str]:
    """Validate a safetensors header from the file's first bytes (length prefix and header)."""
    if len(head) < 8:
        return ["file is shorter than a safetensors header"]
    header_len = _header_length(head)
    if header_len > _header_bound(total_size):
        return [f"header length {header_len} is out of bounds"]
    if len(head) < 8 + header_len:
        return [f"file ends inside its {header_len}-byte header"]
    try:
        header = json.loads(head[8 : 8 + header_len].decode("utf-8"))
    except (ValueError, RecursionError):  # bad UTF-8 or JSON, 4300+ digit numbers, deep nesting
        return ["header is not valid JSON"]
    if not isinstance(header, dict):
        return ["header is not a JSON object"]
    return list(_tensor_problems(header, total_size - 8 - header_len))


def _tensor_problems(header: dict[str, Any], data_size: int) -> Iterator[str]:
    spans = []
    for name, info in header.items():
        if name == "__metadata__":
            if not _string_map(info):
                yield "header __metadata__ is not a map of strings to strings"
            continue
        entry = _tensor_entry(info)
        if entry is None:
            yield f"tensor {name!r} has a malformed entry"
            continue
        (begin, end), expected = entry
        if end - begin != expected:
            yield f"tensor {name!r} spans {end - begin} bytes, its shape needs {expected}"
        spans.append((begin, end))
    position = 0
    for begin, end in sorted(spans):
        if begin != position:
            yield "tensor data is not contiguous (gap or overlap)"
            return
        position = end
    if position != data_size:
        yield f"tensor data covers {position} bytes of {data_size}"


def _tensor_entry(info: object) -> tuple[tuple[int, int], int] | None:
    """A tensor's (begin, end) and the bytes its dtype and shape need; None when malformed."""
    if not isinstance(info, dict) or not isinstance(info.get("dtype"), str):
        return None
    if info["dtype"] not in DTYPE_SIZES:
        return None
    shape, offsets = info.get("shape"), info.get("data_offsets")
    if not isinstance(shape, list) or not all(_natural(dim) for dim in shape):
        return None
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(map(_natural, offsets)):
        return None
    if offsets[0] > offsets[1]:
        return None
    return (offsets[0], offsets[1]), math.prod(shape) * DTYPE_SIZES[info["dtype"]]


def _string_map(value: object) -> bool:
    """A JSON object whose values are all strings (the format's only metadata)."""
    return isinstance(value, dict) and all(isinstance(v, str) for v in value.values())


def _natural(value: object) -> bool:
    """A non-negative JSON integer (not a bool, a float or a string)."""
    return type(value) is int and value >= 0
