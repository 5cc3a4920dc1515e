"""Benchmark per-recipient marking, and measure what the mark survives.

1. Throughput: MB/s of provisioning a marked copy of a large bf16 safetensors file (storage
   `put_stream` of the marking stream, as `ProvisioningService.stage` does) next to a plain copy
   of the same file through the same `put_stream`, alternating for a few rounds. Target: marked
   >= 0.5 x plain.
2. Memory: peak traced memory (tracemalloc) while marking files 4, 16 and 64 times the chunk
   size with the same marks: bounded, independent of the file size.
3. Robustness: a bf16 model with 20 grants; one grant's copy is transformed and traced against
   every grant. Prints the true grant's z, the largest z of the 19 others and the verdict, as the
   markdown table docs/fingerprinting.md quotes. Transformations: verbatim; re-saved as fp32 with
   other metadata, tensor order and shards; Gaussian noise (fine-tuning-like, in units of the
   value's bf16 ULP); int8 per-row absmax quantization (dequantized); the average of two grants'
   copies; hidden units permuted (rows of one matrix, columns of the next).

Figures are printed, never asserted. About 30 s with the defaults on one core.

    .venv/bin/python bench/fingerprint.py
    .venv/bin/python bench/fingerprint.py --mb 64 --rounds 1
"""

from __future__ import annotations

import argparse
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from gateway.fingerprint import FingerprintKey, Keyring, mark, marked_tensors, read_header
from gateway.fingerprint.trace import Z_THRESHOLD, Candidate, Opened, Score, detect
from gateway.storage import LocalStorage
from policies import Fingerprint

KEYS = Keyring(FingerprintKey(1, b"bench-fingerprint-secret"))
MIB = 1024 * 1024


# -- safetensors with bf16, via uint16 bit patterns (numpy has no bfloat16) ----------------------
def to_bf16(values: np.ndarray) -> np.ndarray:
    """float32 -> bf16 bit patterns, round half to even."""
    bits = values.astype(np.float32).view(np.uint32).astype(np.uint64)
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)


def from_bf16(bits: np.ndarray) -> np.ndarray:
    """bf16 bit patterns -> float32 (exact)."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


def save_bf16(
    path: Path, named: dict[str, np.ndarray], metadata: dict[str, str] | None = None
) -> None:
    """Save bf16 bit-pattern tensors as a BF16 safetensors file."""
    save_file(named, str(path), metadata=metadata)
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = raw[8 : 8 + n].replace(b'"U16"', b'"BF16"').rstrip()
    header += b" " * (-len(header) % 8)
    path.write_bytes(len(header).to_bytes(8, "little") + header + raw[8 + n :])


def load_bf16(path: Path) -> dict[str, np.ndarray]:
    """The tensors of a BF16 file as float32 arrays (reads the raw layout)."""
    with path.open("rb") as stream:
        header = read_header(stream)
        out = {}
        for t in header.tensors:
            stream.seek(header.data_start + t.start)
            bits = np.frombuffer(stream.read(t.end - t.start), np.uint16).reshape(t.shape)
            out[t.name] = from_bf16(bits)
    return out


# -- 1 and 2: throughput and memory ---------------------------------------------------------------
def big_file(path: Path, mb: int) -> None:
    """A bf16 file of `mb` MiB: 8 matrices of normal values."""
    rng = np.random.default_rng(0)
    per = mb * MIB // 2 // 8
    cols = 4096
    named = {
        f"layers.{i}.weight": to_bf16(rng.normal(0, 0.02, (per // cols, cols)).astype(np.float32))
        for i in range(8)
    }
    save_bf16(path, named)


def copy_rate(storage: LocalStorage, path: Path, marked: bool) -> float:
    """MB/s of one copy into storage, marked or plain."""
    size = path.stat().st_size
    start = time.perf_counter()
    with path.open("rb") as source:
        stream = source
        if marked:
            stream, _ = mark(source, key=KEYS.current, grant_id=7, settings=Fingerprint())
        storage.put_stream("copy", stream, max_bytes=size)
    return size / MIB / (time.perf_counter() - start)


def throughput(root: Path, mb: int, rounds: int) -> None:
    path = root / "big.safetensors"
    big_file(path, mb)
    storage = LocalStorage(root / "store")
    plain, marked = [], []
    for _ in range(rounds):
        plain.append(copy_rate(storage, path, marked=False))
        marked.append(copy_rate(storage, path, marked=True))
    p, m = max(plain), max(marked)
    print(f"1. copy of a {mb} MiB bf16 file (best of {rounds}):")
    print(f"   plain copy  {p:8.1f} MB/s")
    print(f"   marked copy {m:8.1f} MB/s   ratio {m / p:.2f} (target >= 0.5)")


def peak_marking(path: Path, chunk: int) -> int:
    tracemalloc.start()
    with path.open("rb") as source:
        stream, _ = mark(source, key=KEYS.current, grant_id=7, settings=Fingerprint(), chunk=chunk)
        while stream.read(chunk):
            pass
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak


def memory(root: Path) -> None:
    chunk = MIB
    rng = np.random.default_rng(1)
    marked = {"w": to_bf16(rng.normal(0, 0.02, (1024, 1024)).astype(np.float32))}  # 2 MiB
    print(f"2. peak traced memory while marking, chunk {chunk // 1024} KiB (same 4096 marks):")
    for times in (4, 16, 64):
        path = root / f"mem-{times}.safetensors"
        filler = np.zeros((times * chunk - 2 * MIB) // 8, np.int64)  # unmarked bytes
        save_bf16(path, {**marked, "filler": filler})
        size = path.stat().st_size
        peak = peak_marking(path, chunk)
        print(f"   file {size / MIB:6.1f} MiB ({times:2d} x chunk): peak {peak / MIB:5.2f} MiB")
        path.unlink()


# -- 3: robustness -----------------------------------------------------------------------------
SETTINGS = Fingerprint(positions=2048, min_numel=4096)
SHAPES = {"mlp.up.weight": (1024, 256), "mlp.down.weight": (256, 1024)}
SHAPES |= {f"attn.{p}.weight": (256, 256) for p in "qkvo"}


def model(root: Path, grants: int) -> Path:
    rng = np.random.default_rng(2)
    named = {n: to_bf16(rng.normal(0, 0.02, s).astype(np.float32)) for n, s in SHAPES.items()}
    original = root / "model.safetensors"
    save_bf16(original, named, {"format": "pt"})
    for grant in range(1, grants + 1):
        with original.open("rb") as source:
            stream, _ = mark(source, key=KEYS.current, grant_id=grant, settings=SETTINGS)
            (root / f"grant-{grant}.safetensors").write_bytes(stream.read())
    return original


def scores(original: Path, suspects: list[Path], grants: int) -> list[Score]:
    with ExitStack() as stack:
        opened = []
        for path in [original, *suspects]:
            stream = stack.enter_context(path.open("rb"))
            opened.append(Opened(stream, read_header(stream)))
        marks = tuple(marked_tensors(opened[0].header, SETTINGS))
        candidates = [Candidate(g, 1, marks) for g in range(1, grants + 1)]
        found: dict[int, Score] = {}
        detect(opened[0], opened[1:], candidates, KEYS, found)
    return sorted(found.values(), key=lambda s: -s.z)


def ulp_noise(values: dict[str, np.ndarray], ulps: float, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for name, v in values.items():
        ulp = np.exp2(np.floor(np.log2(np.abs(v) + 1e-30)) - 7)  # bf16: 7 mantissa bits
        out[name] = v + rng.normal(0, ulps, v.shape).astype(np.float32) * ulp
    return out


def int8(values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    out = {}
    for name, v in values.items():
        scale = np.abs(v).max(axis=1, keepdims=True) / 127
        out[name] = (np.round(v / scale).clip(-127, 127) * scale).astype(np.float32)
    return out


def permuted(values: dict[str, np.ndarray], every: bool) -> dict[str, np.ndarray]:
    """Hidden units renumbered, as a function-preserving transform does: the MLP's intermediate
    units (rows of up, columns of down), and with `every` the residual stream too (columns of
    q, k, v and up, rows of o and down)."""
    mlp = np.random.default_rng(3).permutation(1024)
    out = dict(values)
    out["mlp.up.weight"] = values["mlp.up.weight"][mlp, :]
    out["mlp.down.weight"] = values["mlp.down.weight"][:, mlp]
    if every:
        hidden = np.random.default_rng(4).permutation(256)
        for p in "qkv":
            out[f"attn.{p}.weight"] = values[f"attn.{p}.weight"][:, hidden]
        out["attn.o.weight"] = values["attn.o.weight"][hidden, :]
        out["mlp.up.weight"] = out["mlp.up.weight"][:, hidden]
        out["mlp.down.weight"] = out["mlp.down.weight"][hidden, :]
    return out


def robustness(root: Path, grants: int) -> None:
    original = model(root, grants)
    copy = root / "grant-7.safetensors"
    mine, other = load_bf16(copy), load_bf16(root / "grant-12.safetensors")
    total = sum(m.positions for m in marked_tensors(_header(original), SETTINGS))

    def saved(name: str, values: dict[str, np.ndarray], bf16: bool = True) -> list[Path]:
        path = root / f"{name}.safetensors"
        if bf16:
            save_bf16(path, {n: to_bf16(v) for n, v in values.items()})
        else:  # fp32, reversed order, other metadata, two shards
            names = sorted(values, reverse=True)
            second = root / f"{name}-2.safetensors"
            save_file({n: values[n] for n in names[:3]}, str(path), metadata={"x": "y"})
            save_file({n: values[n] for n in names[3:]}, str(second))
            return [path, second]
        return [path]

    cases: list[tuple[str, Callable[[], list[Path]]]] = [
        ("verbatim copy", lambda: [copy]),
        ("re-saved fp32, reordered, 2 shards", lambda: saved("fp32", mine, bf16=False)),
        ("noise 0.1 ULP (rounded to bf16)", lambda: saved("n01", ulp_noise(mine, 0.1, 4))),
        ("noise 0.5 ULP (rounded to bf16)", lambda: saved("n05", ulp_noise(mine, 0.5, 5))),
        ("noise 1 ULP (rounded to bf16)", lambda: saved("n1", ulp_noise(mine, 1.0, 6))),
        ("noise 1 ULP kept in fp32", lambda: saved("n1f", ulp_noise(mine, 1.0, 6), bf16=False)),
        ("noise 4 ULP (fine-tuning-like)", lambda: saved("n4", ulp_noise(mine, 4.0, 7))),
        ("noise 16 ULP (fine-tuning-like)", lambda: saved("n16", ulp_noise(mine, 16.0, 8))),
        ("int8 per-row absmax, dequantized", lambda: saved("q8", int8(mine), bf16=False)),
        (
            "average of grants 7 and 12",
            lambda: saved("avg", {n: (mine[n] + other[n]) / 2 for n in mine}, bf16=False),
        ),
        ("MLP hidden units permuted", lambda: saved("perm", permuted(mine, every=False))),
        ("every hidden unit permuted", lambda: saved("perm2", permuted(mine, every=True))),
    ]
    print(f"3. {grants} grants, {total} marks per copy (K = 2048 per tensor, at most 1/128):")
    print("   | transformation of grant 7's copy | z of grant 7 | max z of the others | verdict |")
    print("   | --- | ---: | ---: | --- |")
    for label, make in cases:
        ranked = scores(original, make(), grants)
        true = next(s.z for s in ranked if s.grant_id == 7)
        others = [s for s in ranked if s.grant_id != 7]
        top = max(others, key=lambda s: s.z)
        named = [s.grant_id for s in ranked if s.z >= Z_THRESHOLD]
        verdict = f"attributed to {', '.join(map(str, named))}" if named else "inconclusive"
        print(f"   | {label} | {true:.1f} | {top.z:.1f} (grant {top.grant_id}) | {verdict} |")
    rel = relative_l2(original, copy)
    print(f"   relative L2 change per marked tensor: max {max(rel):.2e}, min {min(rel):.2e}")


def relative_l2(original: Path, copy: Path) -> list[float]:
    a, b = load_bf16(original), load_bf16(copy)
    return [float(np.linalg.norm(b[n] - a[n]) / np.linalg.norm(a[n])) for n in a]


def _header(path: Path):  # type: ignore[no-untyped-def]
    with path.open("rb") as stream:
        return read_header(stream)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=int, default=256, help="size of the throughput file")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--grants", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="airlock-bench-fp-") as tmp:
        root = Path(tmp)
        throughput(root, args.mb, args.rounds)
        memory(root)
        robustness(root, args.grants)


if __name__ == "__main__":
    main()
