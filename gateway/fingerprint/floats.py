"""Float formats as integer bit patterns: moving a value by one unit in the last place."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class FloatFormat:
    """One IEEE-style binary float format as safetensors stores it (little-endian)."""

    name: str
    size: int
    code: Literal["H", "I"]  # memoryview code of the unsigned integer of the same width
    exponent_bits: int
    mantissa_bits: int

    @property
    def sign_bit(self) -> int:
        """The sign bit's mask."""
        return 1 << (self.size * 8 - 1)

    @property
    def infinity(self) -> int:
        """The magnitude bits of infinity: everything at or above it is inf or NaN."""
        return ((1 << self.exponent_bits) - 1) << self.mantissa_bits


BF16 = FloatFormat("BF16", 2, "H", 8, 7)
F16 = FloatFormat("F16", 2, "H", 5, 10)
F32 = FloatFormat("F32", 4, "I", 8, 23)
FORMATS = {f.name: f for f in (BF16, F16, F32)}


def markable(fmt: FloatFormat, bits: int) -> bool:
    """Whether a value may move one ULP either way without reaching zero, inf or NaN."""
    magnitude = bits & (fmt.sign_bit - 1)
    return 1 < magnitude < fmt.infinity - 1


def nudge(fmt: FloatFormat, bits: int, up: bool) -> int:
    """The bit pattern one ULP above (`up`) or below a markable value (sign-aware)."""
    negative = bool(bits & fmt.sign_bit)
    return bits - 1 if up == negative else bits + 1


def ordered(fmt: FloatFormat, bits: int) -> int:
    """An integer that orders like the value: ULP distances are differences of these."""
    magnitude = bits & (fmt.sign_bit - 1)
    return -magnitude if bits & fmt.sign_bit else magnitude


def to_float(fmt: FloatFormat, bits: int) -> float:
    """The value of a bit pattern."""
    if fmt is BF16:
        return float(struct.unpack("<f", struct.pack("<I", bits << 16))[0])
    if fmt is F16:
        return float(struct.unpack("<e", struct.pack("<H", bits))[0])
    return float(struct.unpack("<f", struct.pack("<I", bits))[0])


def from_float(fmt: FloatFormat, value: float) -> int:
    """The bit pattern nearest to `value` in `fmt` (round half to even), e.g. after an upcast."""
    if fmt is F16:
        try:
            return int(struct.unpack("<H", struct.pack("<e", value))[0])
        except OverflowError:
            return 0x7C00 | (0x8000 if value < 0 else 0)
    try:
        bits = int(struct.unpack("<I", struct.pack("<f", value))[0])
    except OverflowError:
        bits = 0x7F800000 | (0x80000000 if value < 0 else 0)
    if fmt is F32:
        return bits
    if (bits & 0x7FFFFFFF) > 0x7F800000:  # NaN stays NaN
        return (bits >> 16) | 0x40
    return (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
