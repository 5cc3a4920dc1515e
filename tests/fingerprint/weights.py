"""Small safetensors models for fingerprint tests, built and read with numpy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

from gateway.fingerprint import FingerprintKey, Keyring, mark
from policies import Fingerprint

KEYS = Keyring(FingerprintKey(1, b"test-fingerprint-secret"))
SETTINGS = Fingerprint(positions=256, min_numel=4096)
BITS = {"BF16": np.uint16, "F16": np.uint16, "F32": np.uint32}


def tensors(seed: int = 0) -> dict[str, np.ndarray]:
    """Four 128x256 float32 matrices of normal values, a norm vector and an int tensor."""
    rng = np.random.default_rng(seed)
    found = {
        f"layers.{i}.weight": rng.normal(0, 0.02, (128, 256)).astype(np.float32) for i in range(4)
    }
    found["norm.weight"] = np.ones(256, np.float32)
    found["positions"] = np.arange(64, dtype=np.int64)
    return found


def as_bf16_bits(values: np.ndarray) -> np.ndarray:
    """float32 values rounded to bfloat16, as uint16 bit patterns (round half to even)."""
    bits = values.astype(np.float32).view(np.uint32).astype(np.uint64)
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)


def bf16_to_f32(bits: np.ndarray) -> np.ndarray:
    """bfloat16 bit patterns as float32 values (exact)."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


def write_bf16(
    path: Path, named: dict[str, np.ndarray], metadata: dict[str, str] | None = None
) -> None:
    """Save float32 tensors as BF16 (numpy has no bfloat16: patch the header's dtype)."""
    save_file(
        {n: as_bf16_bits(v) if v.dtype == np.float32 else v for n, v in named.items()},
        str(path),
        metadata=metadata,
    )
    retype_uint16_as(path, "BF16")


def retype_uint16_as(path: Path, dtype: str) -> None:
    """Rewrite U16 entries of a file's header as `dtype` (same width, same bytes)."""
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = raw[8 : 8 + n].replace(b'"U16"', f'"{dtype}"'.encode()).rstrip()
    header += b" " * (-len(header) % 8)
    path.write_bytes(len(header).to_bytes(8, "little") + header + raw[8 + n :])


def read_bits(path: Path) -> dict[str, np.ndarray]:
    """Every tensor of a file, float ones as their integer bit patterns."""
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    fixed = path.with_suffix(".u.safetensors")
    fixed.write_bytes(raw[:8] + raw[8 : 8 + n].replace(b'"BF16"', b'"U16" ') + raw[8 + n :])
    loaded = load_file(str(fixed))
    fixed.unlink()
    return {k: _bits(v).ravel() for k, v in loaded.items()}


def _bits(values: np.ndarray) -> np.ndarray:
    if values.dtype == np.float16:
        return values.view(np.uint16)
    return values.view(np.uint32) if values.dtype == np.float32 else values


def mark_file(source: Path, target: Path, grant_id: int, chunk: int = 1 << 20) -> None:
    """Write grant `grant_id`'s marked copy of `source` to `target`."""
    with source.open("rb") as stream:
        marked, _ = mark(
            stream, key=KEYS.current, grant_id=grant_id, settings=SETTINGS, chunk=chunk
        )
        target.write_bytes(marked.read())
