"""Benchmark vetting a large safetensors file against sha256sum of the same file.

A Llama-shaped safetensors file (BF16 matrices, F32 norms, a realistic header) is written to a
temporary directory, then vetted through the real code path of the `vet_revision` task
(`vetting_report` over `LocalStorage`: sha256 and size against the manifest, header checks),
and hashed by `sha256sum` in a subprocess. After one warm-up of each (the page cache holds the
file for every timed run), the runs alternate for a number of rounds; best and median MB/s
(10^6 bytes per second) are printed with the ratio. Target: vetting >= 0.8 x sha256sum.
For reference the same rounds time `openssl dgst -sha256` and the digest alone in this process
(`hashlib.file_digest`), the floor vetting cannot go below.

Figures are printed, never asserted; the exit status is non-zero only when the benchmark itself
fails (a digest that disagrees, a report with problems). The file is deleted at the end.

    make bench-vetting             # = .venv/bin/python bench/vetting.py
    .venv/bin/python bench/vetting.py --mib 2048 --rounds 7
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import os
import platform
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import harness
from harness import BenchError

from gateway.db.models import RevisionFile
from gateway.services.vetting import vetting_report
from gateway.storage.local import LocalStorage

RATIO_TARGET = 0.8
KEY = "bench/model.safetensors"
VETTING = "vetting_report (this process)"
BLOCK = 64 << 20  # random bytes reused as tensor data: hashing speed does not depend on content


# -- the file ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Written:
    """The generated file: where, how big, its digest and what its header holds."""

    path: Path
    size: int
    sha256: str
    tensors: int
    header_bytes: int


def llama_tensors(target: int) -> Iterator[tuple[str, str, list[int]]]:
    """(name, dtype, shape) of a TinyLlama-shaped model with as many layers as fit `target`."""
    hidden, inter, kv, vocab = 2048, 5632, 256, 32000
    layer = [
        ("self_attn.q_proj.weight", "BF16", [hidden, hidden]),
        ("self_attn.k_proj.weight", "BF16", [kv, hidden]),
        ("self_attn.v_proj.weight", "BF16", [kv, hidden]),
        ("self_attn.o_proj.weight", "BF16", [hidden, hidden]),
        ("mlp.gate_proj.weight", "BF16", [inter, hidden]),
        ("mlp.up_proj.weight", "BF16", [inter, hidden]),
        ("mlp.down_proj.weight", "BF16", [hidden, inter]),
        ("input_layernorm.weight", "F32", [hidden]),
        ("post_attention_layernorm.weight", "F32", [hidden]),
    ]
    layer_bytes = sum(nbytes(dtype, shape) for _, dtype, shape in layer)
    ends = 2 * nbytes("BF16", [vocab, hidden]) + nbytes("F32", [hidden])
    yield "model.embed_tokens.weight", "BF16", [vocab, hidden]
    for i in range(max(1, (target - ends) // layer_bytes)):
        for name, dtype, shape in layer:
            yield f"model.layers.{i}.{name}", dtype, shape
    yield "model.norm.weight", "F32", [hidden]
    yield "lm_head.weight", "BF16", [vocab, hidden]


def nbytes(dtype: str, shape: list[int]) -> int:
    """Bytes of a tensor."""
    count = 1
    for dim in shape:
        count *= dim
    return count * {"BF16": 2, "F32": 4}[dtype]


def write_safetensors(path: Path, target: int) -> Written:
    """Write a valid safetensors file of about `target` bytes; its size, digest and header."""
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, dtype, shape in llama_tensors(target):
        size = nbytes(dtype, shape)
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # safetensors pads the header to 8 bytes with spaces
    prefix = struct.pack("<Q", len(raw)) + raw
    block = memoryview(os.urandom(BLOCK))
    digest = hashlib.sha256(prefix)
    with path.open("wb") as out:
        out.write(prefix)
        left = offset
        while left:
            piece = block[: min(left, BLOCK)]
            out.write(piece)
            digest.update(piece)
            left -= len(piece)
    return Written(path, len(prefix) + offset, digest.hexdigest(), len(header) - 1, len(raw))


# -- the runs ----------------------------------------------------------------------------------
def vet(storage: LocalStorage, file: RevisionFile) -> None:
    """Vet the file as the vet_revision task does; a report with problems is a failed run."""
    report = vetting_report(storage, [file])
    if report["problems"]:
        raise BenchError(f"vetting found problems in a valid file: {report['problems']}")


def tool_digest(command: list[str], expected: str) -> None:
    """Run a digest tool on the file and check its answer."""
    done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=600)
    if done.returncode != 0 or not done.stdout.startswith(expected):
        raise BenchError(f"{command[0]} failed or disagreed: {done.stdout} {done.stderr}")


def in_process_digest(path: Path, expected: str) -> None:
    """The digest alone, in this process: the floor for vetting."""
    with path.open("rb") as stream:
        if hashlib.file_digest(stream, "sha256").hexdigest() != expected:
            raise BenchError("hashlib disagrees with the digest written")


def runs(written: Written, storage: LocalStorage) -> dict[str, Callable[[], None]]:
    """The timed runs, by label: vetting first, its baseline second."""
    file = RevisionFile(
        path="model.safetensors", size=written.size, sha256=written.sha256, storage_key=KEY
    )
    path, expected = str(written.path), written.sha256
    calls: dict[str, Callable[[], None]] = {
        VETTING: lambda: vet(storage, file),
        "sha256sum (coreutils)": lambda: tool_digest(["sha256sum", path], expected),
    }
    if harness.have("openssl"):
        calls["openssl dgst -sha256"] = lambda: tool_digest(
            ["openssl", "dgst", "-sha256", "-r", path], expected
        )
    calls["hashlib.file_digest (this process)"] = lambda: in_process_digest(written.path, expected)
    return calls


@dataclass(frozen=True)
class Timing:
    """Wall seconds of each round of one run."""

    label: str
    seconds: list[float]

    def rate(self, size: int, pick: Callable[[list[float]], float]) -> float:
        """MB/s (10^6 bytes) of the picked round time."""
        return size / pick(self.seconds) / 1e6


def timed(calls: dict[str, Callable[[], None]], rounds: int) -> list[Timing]:
    """One warm-up of each call, then `rounds` rounds alternating between them."""
    for call in calls.values():
        call()
    seconds: dict[str, list[float]] = {label: [] for label in calls}
    for _ in range(rounds):
        for label, call in calls.items():
            started = time.perf_counter()
            call()
            seconds[label].append(time.perf_counter() - started)
    return [Timing(label, seconds[label]) for label in calls]


def peak_rss(written: Written, storage_root: Path) -> tuple[int, int]:
    """RSS of a fresh process before vetting the file and its peak while vetting, in bytes."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(_vet_and_measure, (written, storage_root))


def _vet_and_measure(written: Written, storage_root: Path) -> tuple[int, int]:
    storage = LocalStorage(storage_root)
    vetting = runs(written, storage)[VETTING]
    Path("/proc/self/clear_refs").write_text("5")  # resets the peak (VmHWM) to the current RSS
    before = _status_kib("VmRSS")
    vetting()
    return before * 1024, _status_kib("VmHWM") * 1024


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise BenchError(f"/proc/self/status has no {field}")


# -- the report --------------------------------------------------------------------------------
def report(written: Written, timings: list[Timing], rss: tuple[int, int], load: str) -> None:
    size = written.size
    print(f"\n1. MB/s over {len(timings[0].seconds)} rounds, page cache warm (best, median)")
    for timing in timings:
        best = timing.rate(size, min)
        median = timing.rate(size, statistics.median)
        print(f"   {timing.label:<36} best {best:>7.0f}   median {median:>7.0f}")
    print(f"   {load}")
    vetting, baseline = timings[0], timings[1]
    for name, pick in (("best", min), ("median", statistics.median)):
        ratio = vetting.rate(size, pick) / baseline.rate(size, pick)
        verdict = "met" if ratio >= RATIO_TARGET else "MISSED"
        print(
            f"   ratio vetting / sha256sum, {name}: {ratio:.2f}  (target >= {RATIO_TARGET}: "
            f"{verdict})"
        )
    for other in timings[2:]:  # references: the same digest through OpenSSL, no target
        ratio = vetting.rate(size, min) / other.rate(size, min)
        print(f"   ratio vetting / {other.label.split(' (')[0]}, best: {ratio:.2f}")
    before, peak = rss
    print(
        f"\n2. Memory, a fresh process: RSS {before / 2**20:.1f} MiB before vetting, peak "
        f"{peak / 2**20:.1f} MiB while vetting (+{(peak - before) / 2**20:.1f} MiB for a "
        f"{size / 2**30:.2f} GiB file)"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=int, default=1536, help="size of the generated file")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--dir", type=Path, default=None, help="where to write it (a temp dir)")
    args = parser.parse_args()
    if not harness.have("sha256sum"):
        print("sha256sum is not installed (coreutils)", file=sys.stderr)
        return 1
    print(
        f"Python {platform.python_version()}, {hashlib.sha256().name} from "
        f"{__import__('ssl').OPENSSL_VERSION}, {os.cpu_count()} CPUs; "
        f"background: {harness.machine_busy():.2f} CPUs busy before start"
    )
    workdir = Path(tempfile.mkdtemp(prefix="airlock-bench-vetting-", dir=args.dir))
    try:
        storage = LocalStorage(workdir / "blobs")
        path = workdir / "blobs" / KEY
        path.parent.mkdir(parents=True)
        written = write_safetensors(path, args.mib << 20)
        print(
            f"file: {written.size / 2**30:.2f} GiB safetensors, {written.tensors} tensors "
            f"(BF16 and F32), header {written.header_bytes} bytes"
        )
        calls = runs(written, storage)
        machine, wall = harness.cpu_sample(), time.monotonic()
        timings = timed(calls, args.rounds)
        busy = harness.busy_between(machine, harness.cpu_sample())
        rss = peak_rss(written, storage.root)
        load = f"CPUs busy during the timings: {busy:.2f} of {os.cpu_count()} on the machine "
        load += f"({time.monotonic() - wall:.0f} s; one run keeps about 1 busy)"
        report(written, timings, rss, load)
    except BenchError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
