"""Marking: same header bytes, K values moved by exactly one ULP, streamed in bounded memory."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from gateway.fingerprint import NotSafetensors, codeword, mark, read_header
from gateway.fingerprint.floats import BF16, F16, F32, from_float, markable, nudge, to_float
from tests.fingerprint.weights import (
    KEYS,
    SETTINGS,
    mark_file,
    read_bits,
    tensors,
    write_bf16,
)


def _write(path: Path, dtype: str) -> None:
    if dtype == "BF16":
        write_bf16(path, tensors())
    else:
        save_file(
            {
                n: v.astype(np.float16) if dtype == "F16" and v.dtype == np.float32 else v
                for n, v in tensors().items()
            },
            str(path),
        )


@pytest.mark.parametrize("dtype", ["BF16", "F16", "F32"])
def test_a_mark_moves_k_values_per_tensor_by_one_ulp_and_keeps_the_header(
    tmp_path: Path, dtype: str
) -> None:
    original, copy = tmp_path / "model.safetensors", tmp_path / "copy.safetensors"
    _write(original, dtype)
    mark_file(original, copy, grant_id=7)
    assert copy.stat().st_size == original.stat().st_size
    with original.open("rb") as a, copy.open("rb") as b:
        assert read_header(a).raw == read_header(b).raw
    before, after = read_bits(original), read_bits(copy)
    for name, values in before.items():
        moved = np.flatnonzero(values != after[name])
        if not name.startswith("layers."):  # too small (norm) or not float (positions)
            assert moved.size == 0, name
            continue
        assert 240 <= moved.size <= 256  # K = 256 positions, minus skipped extremes
        steps = after[name].astype(np.int64) - values.astype(np.int64)
        assert set(np.abs(steps[moved]).tolist()) == {1}  # one ULP, in the bit pattern
        word = codeword(KEYS.current, 7, name, values.size, 256)
        assert set(moved.tolist()) <= {e >> 1 for e in word}


@pytest.mark.parametrize("dtype", ["BF16", "F16"])
def test_relative_l2_change_of_each_marked_tensor_is_below_1e_3(tmp_path: Path, dtype: str) -> None:
    original, copy = tmp_path / "model.safetensors", tmp_path / "copy.safetensors"
    _write(original, dtype)
    mark_file(original, copy, grant_id=3)
    fmt = BF16 if dtype == "BF16" else F16
    before, after = read_bits(original), read_bits(copy)
    for name in (n for n in before if n.startswith("layers.")):
        a = np.array([to_float(fmt, int(v)) for v in before[name].ravel()])
        b = np.array([to_float(fmt, int(v)) for v in after[name].ravel()])
        change = float(np.linalg.norm(b - a) / np.linalg.norm(a))
        print(f"{dtype} {name}: relative L2 change {change:.2e}")
        assert 0 < change < 1e-3


def test_marking_in_small_chunks_gives_the_same_bytes(tmp_path: Path) -> None:
    """Chunks not a multiple of the value size: values straddle chunk boundaries."""
    original = tmp_path / "model.safetensors"
    write_bf16(original, tensors())
    whole, chunked = tmp_path / "whole.safetensors", tmp_path / "chunked.safetensors"
    mark_file(original, whole, grant_id=5)
    mark_file(original, chunked, grant_id=5, chunk=4093)
    assert original.stat().st_size > 50 * 4093
    assert chunked.read_bytes() == whole.read_bytes() != original.read_bytes()


def _peak_marking(path: Path, chunk: int) -> int:
    tracemalloc.start()
    with path.open("rb") as source:
        marked, _ = mark(source, key=KEYS.current, grant_id=5, settings=SETTINGS, chunk=chunk)
        while marked.read(chunk):
            pass
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak


def test_peak_memory_of_marking_does_not_grow_with_the_file(tmp_path: Path) -> None:
    """The same marks in a file 20 times larger (an unmarked filler tensor): same peak."""
    small, large = tmp_path / "small.safetensors", tmp_path / "large.safetensors"
    write_bf16(small, tensors())
    filler = np.zeros(20 * small.stat().st_size // 8, np.int64)
    write_bf16(large, {**tensors(), "filler": filler})
    chunk = 16384
    peak_small, peak_large = _peak_marking(small, chunk), _peak_marking(large, chunk)
    sizes = small.stat().st_size, large.stat().st_size
    print(f"peak {peak_small} B marking {sizes[0]} B, {peak_large} B marking {sizes[1]} B")
    assert large.stat().st_size > 20 * small.stat().st_size > 200 * chunk
    assert peak_large < peak_small + 4 * chunk
    assert peak_large < large.stat().st_size / 20


def test_different_grants_get_different_copies_and_the_same_grant_the_same(tmp_path: Path) -> None:
    original = tmp_path / "model.safetensors"
    write_bf16(original, tensors())
    paths = [tmp_path / f"{g}-{i}.safetensors" for g, i in ((1, 0), (1, 1), (2, 0))]
    for path, grant in zip(paths, (1, 1, 2), strict=True):
        mark_file(original, path, grant_id=grant)
    one, again, two = (p.read_bytes() for p in paths)
    assert one == again != two


@pytest.mark.parametrize(
    ("fmt", "bits"),
    [
        (BF16, 0x0000),
        (BF16, 0x8000),
        (BF16, 0x0001),
        (BF16, 0x8001),
        (BF16, 0x7F80),
        (BF16, 0xFF80),
        (BF16, 0x7FC0),
        (BF16, 0x7F7F),
        (F16, 0x7C00),
        (F16, 0x7BFF),
        (F32, 0x7F800000),
        (F32, 0x00000000),
    ],
)
def test_zero_subnormal_extremes_inf_and_nan_are_never_marked(fmt: object, bits: int) -> None:
    assert not markable(fmt, bits)  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [1.5, -1.5, 3e-3, -7.25e3])
def test_a_nudge_moves_the_value_up_or_down_by_one_ulp_whatever_its_sign(value: float) -> None:
    for fmt in (BF16, F16, F32):
        bits = from_float(fmt, value)
        up, down = to_float(fmt, nudge(fmt, bits, True)), to_float(fmt, nudge(fmt, bits, False))
        assert down < to_float(fmt, bits) < up


def test_a_file_that_is_not_safetensors_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes((2**40).to_bytes(8, "little") + b"{}")
    with bad.open("rb") as stream, pytest.raises(NotSafetensors):
        mark(stream, key=KEYS.current, grant_id=1, settings=SETTINGS)
