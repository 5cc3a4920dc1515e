"""Tracing: a transformed copy is attributed to its grant; the original to nobody."""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from gateway.fingerprint import FingerprintKey, Header, Keyring, marked_tensors, read_header
from gateway.fingerprint.trace import Z_THRESHOLD, Candidate, Opened, Score, detect
from tests.fingerprint.weights import (
    KEYS,
    SETTINGS,
    bf16_to_f32,
    mark_file,
    read_bits,
    tensors,
    write_bf16,
)

GRANTS = range(101, 125)  # 24 grants on one model


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The original bf16 file and every grant's marked copy beside it."""
    root = tmp_path_factory.mktemp("model")
    write_bf16(root / "model.safetensors", tensors(), {"format": "pt"})
    for grant in GRANTS:
        mark_file(root / "model.safetensors", root / f"grant-{grant}.safetensors", grant)
    return root


def trace(model: Path, suspects: list[Path], keys: Keyring = KEYS) -> list[Score]:
    """Scores of every grant for the suspect files, best first."""
    original = model / "model.safetensors"
    with ExitStack() as stack:
        opened = [_open(stack, p) for p in suspects]
        source = _open(stack, original)
        marks = tuple(marked_tensors(source.header, SETTINGS))
        candidates = [Candidate(g, KEYS.current.version, marks) for g in GRANTS]
        scores: dict[int, Score] = {}
        detect(source, opened, candidates, keys, scores)
    return sorted(scores.values(), key=lambda s: -s.z)


def _open(stack: ExitStack, path: Path) -> Opened:
    stream = stack.enter_context(path.open("rb"))
    return Opened(stream, read_header(stream))


def _header(path: Path) -> Header:
    with path.open("rb") as stream:
        return read_header(stream)


def _resave_upcast_in_shards(copy: Path, root: Path) -> list[Path]:
    """Re-save as fp32, other metadata, reversed tensor order, split into two shards."""
    values = read_bits(copy)
    header = _header(copy).by_name()
    floats = {
        n: bf16_to_f32(v).reshape(header[n].shape) if header[n].dtype == "BF16" else v
        for n, v in values.items()
    }
    names = sorted(floats, reverse=True)
    shards = [root / "leak-00001-of-00002.safetensors", root / "leak-00002-of-00002.safetensors"]
    save_file({n: floats[n] for n in names[:3]}, str(shards[0]), metadata={"leaked": "yes"})
    save_file({n: floats[n] for n in names[3:]}, str(shards[1]))
    return shards


def test_a_resaved_resharded_upcast_copy_is_attributed_to_its_grant_alone(
    model: Path, tmp_path: Path
) -> None:
    leaked = _resave_upcast_in_shards(model / "grant-113.safetensors", tmp_path)
    assert {t.dtype for t in _header(leaked[0]).tensors} == {"F32", "I64"}
    scores = trace(model, leaked)
    assert scores[0].grant_id == 113 and scores[0].z >= Z_THRESHOLD
    assert len(scores) == len(GRANTS)
    assert all(s.z < Z_THRESHOLD for s in scores[1:])
    print(f"true grant z = {scores[0].z:.1f}; others at most {scores[1].z:.2f}")


def test_a_verbatim_copy_scores_sqrt_k_for_its_grant(model: Path) -> None:
    scores = trace(model, [model / "grant-101.safetensors"])
    top = scores[0]
    assert top.grant_id == 101
    assert top.z == pytest.approx(np.sqrt(top.compared)) and top.compared > 1000
    assert all(abs(s.z) < Z_THRESHOLD for s in scores[1:])


def test_the_unmarked_original_is_attributed_to_nobody(model: Path) -> None:
    scores = trace(model, [model / "model.safetensors"])
    assert all(s.z == 0 and s.compared == 0 for s in scores)


def test_a_copy_missing_the_marked_tensors_is_attributed_to_nobody(
    model: Path, tmp_path: Path
) -> None:
    only = tmp_path / "norm.safetensors"
    save_file({"norm.weight": np.ones(256, np.float32)}, str(only))
    assert all(s.positions == 0 and s.z == 0 for s in trace(model, [only]))


def test_copies_marked_before_a_key_rotation_still_trace_while_the_old_key_is_kept(
    model: Path,
) -> None:
    rotated = Keyring(FingerprintKey(2, b"the-new-secret"), (KEYS.current,))
    only_new = Keyring(FingerprintKey(2, b"the-new-secret"))
    assert trace(model, [model / "grant-105.safetensors"], rotated)[0].grant_id == 105
    assert all(s.z == 0 for s in trace(model, [model / "grant-105.safetensors"], only_new))
