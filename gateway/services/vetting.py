"""Vetting of uploaded files: digests, safetensors headers, pickle opcodes."""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Iterator, Sequence
from typing import Any, BinaryIO

from gateway.db.models import RevisionFile
from gateway.errors import ArtifactMissing
from gateway.services import pickle_scan
from gateway.services.pickle_scan import looks_like_pickle
from gateway.storage import Storage

MAX_HEADER = 100 * 1024 * 1024
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
            problems = _digest_problems(stream, file)
            if file.path.endswith(".safetensors"):
                stream.seek(0)
                problems += safetensors_problems(stream, file.size)
            else:
                stream.seek(0)
                if looks_like_pickle(file.path, stream.read(4)):
                    stream.seek(0)
                    problems += pickle_scan.scan(stream)
            return problems
    except ArtifactMissing:
        return ["the stored bytes are missing"]


def _digest_problems(stream: BinaryIO, file: RevisionFile) -> list[str]:
    digest, size = hashlib.sha256(), 0
    for chunk in iter(lambda: stream.read(1 << 20), b""):
        digest.update(chunk)
        size += len(chunk)
    problems = []
    if digest.hexdigest() != file.sha256:
        problems.append("sha256 of the stored bytes does not match the manifest")
    if size != file.size:
        problems.append(f"size {size} does not match the manifest's {file.size}")
    return problems


def safetensors_problems(stream: BinaryIO, total_size: int) -> list[str]:
    """Validate a safetensors header: length, JSON, dtypes, shapes and contiguous offsets."""
    prefix = stream.read(8)
    if len(prefix) != 8:
        return ["file is shorter than a safetensors header"]
    (header_len,) = struct.unpack("<Q", prefix)
    if header_len > min(MAX_HEADER, total_size - 8):
        return [f"header length {header_len} is out of bounds"]
    try:
        header = json.loads(stream.read(header_len))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return ["header is not valid JSON"]
    if not isinstance(header, dict):
        return ["header is not a JSON object"]
    return list(_tensor_problems(header, total_size - 8 - header_len))


def _tensor_problems(header: dict[str, Any], data_size: int) -> Iterator[str]:
    spans = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = info["dtype"], info["shape"], info["data_offsets"]
            count = 1
            for dim in shape:
                count *= int(dim)
            expected = count * DTYPE_SIZES[dtype]
        except (KeyError, TypeError, ValueError):
            yield f"tensor {name!r} has a malformed entry"
            continue
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
