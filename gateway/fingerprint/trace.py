"""Tracing a suspect copy: which grant's mark it carries, as a z-score per candidate grant.

Non-blind detection: for each candidate grant, the suspect and the original are compared at
that grant's keyed positions; the sign of each difference (in units in the last place of the
original's dtype) is multiplied by the grant's codeword. Under the null hypothesis (the copy
does not carry this grant's mark) the signs are independent of the codeword, so
z = sum(sign * code) / sqrt(count of nonzero differences) is approximately N(0, 1). A verbatim
copy gives z = sqrt(K) for its grant (64 for K = 4096 on one tensor).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import BinaryIO

from gateway.fingerprint.floats import FORMATS, from_float, markable, ordered, to_float
from gateway.fingerprint.keys import Keyring, codeword
from gateway.fingerprint.marker import MarkedTensor, tensor_values
from gateway.fingerprint.safetensors import Header, TensorInfo

# P(z >= 6) under N(0, 1) is about 1e-9 per grant: even a model with 100,000 grants traced
# 10,000 times expects no false attribution (1e-9 * 1e9 = 1). A verbatim copy of one marked
# tensor with K = 4096 scores 64; even 40 surviving marks score above 6.
Z_THRESHOLD = 6.0


@dataclass(frozen=True)
class Candidate:
    """A grant whose copy of one original file was marked: with which key and tensors."""

    grant_id: int
    key_version: int
    tensors: tuple[MarkedTensor, ...]


@dataclass(frozen=True)
class Opened:
    """A seekable safetensors file and its parsed header."""

    stream: BinaryIO
    header: Header


@dataclass
class Score:
    """The evidence for one grant: agreeing minus disagreeing signs over nonzero differences."""

    grant_id: int
    key_version: int
    agree: int = 0
    compared: int = 0
    positions: int = 0
    tensors: set[str] = field(default_factory=set)

    @property
    def z(self) -> float:
        """The z-score of the correlation with the grant's codeword (0 with no differences)."""
        return self.agree / math.sqrt(self.compared) if self.compared else 0.0


def detect(
    original: Opened,
    suspects: Sequence[Opened],
    candidates: Iterable[Candidate],
    keys: Keyring,
    scores: dict[int, Score],
) -> None:
    """Add the evidence of one original file for each candidate to `scores` (by grant id)."""
    found = _suspect_tensors(suspects)
    tensors = original.header.by_name()
    by_tensor: dict[str, list[tuple[Candidate, int]]] = {}
    for candidate in candidates:
        scores.setdefault(candidate.grant_id, Score(candidate.grant_id, candidate.key_version))
        for mark in candidate.tensors:
            by_tensor.setdefault(mark.name, []).append((candidate, mark.positions))
    for name, marks in by_tensor.items():
        tensor, match = tensors.get(name), found.get(name)
        if tensor is None or match is None or match[1].shape != tensor.shape:
            continue
        _compare(original, tensor, match, marks, keys, scores)


def _suspect_tensors(suspects: Sequence[Opened]) -> dict[str, tuple[Opened, TensorInfo]]:
    found: dict[str, tuple[Opened, TensorInfo]] = {}
    for suspect in suspects:
        for tensor in suspect.header.tensors:
            if tensor.float_format is not None:
                found.setdefault(tensor.name, (suspect, tensor))
    return found


def _compare(
    original: Opened,
    tensor: TensorInfo,
    match: tuple[Opened, TensorInfo],
    marks: list[tuple[Candidate, int]],
    keys: Keyring,
    scores: dict[int, Score],
) -> None:
    words: list[tuple[Candidate, list[int]]] = []
    for candidate, k in marks:
        key = keys.get(candidate.key_version)
        if key is not None:
            words.append(
                (candidate, codeword(key, candidate.grant_id, tensor.name, tensor.numel, k))
            )
    wanted = sorted({entry >> 1 for _, word in words for entry in word})
    theirs = _values_as(original.header, tensor, match, wanted)
    ours = tensor_values(original.stream, original.header, tensor, wanted)
    base_of = dict(zip(wanted, ours, strict=True))
    fmt = FORMATS[tensor.dtype]
    for candidate, word in words:
        score = scores[candidate.grant_id]
        score.tensors.add(tensor.name)
        for entry in word:
            base = base_of[entry >> 1]
            if not markable(fmt, base):
                continue
            delta = ordered(fmt, theirs[entry >> 1]) - ordered(fmt, base)
            sign = (delta > 0) - (delta < 0)
            score.positions += 1
            score.compared += sign * sign
            score.agree += sign if entry & 1 else -sign


def _values_as(
    original: Header, tensor: TensorInfo, match: tuple[Opened, TensorInfo], wanted: list[int]
) -> dict[int, int]:
    """The suspect's values at `wanted`, as bit patterns of the original's dtype (rounded)."""
    suspect, theirs = match
    values = tensor_values(suspect.stream, suspect.header, theirs, wanted)
    if theirs.dtype != tensor.dtype:
        source, target = FORMATS[theirs.dtype], FORMATS[tensor.dtype]
        values = [from_float(target, to_float(source, v)) for v in values]
    return dict(zip(wanted, values, strict=True))
