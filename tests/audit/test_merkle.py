"""RFC 6962 Merkle trees: the reference vectors, every proof of every small tree, the frontier."""

from __future__ import annotations

import hashlib

import pytest

from gateway.audit.merkle import (
    EMPTY_ROOT,
    Frontier,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    root,
    verify_consistency,
    verify_inclusion,
)

# The Certificate Transparency reference leaves and tree heads (sizes 0..8).
LEAVES = [
    bytes.fromhex(h)
    for h in (
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    )
]
ROOTS = [
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]
INCLUSION = [  # (index, size, proof)
    (
        0,
        8,
        [
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        5,
        8,
        [
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
    (2, 3, ["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
    (
        1,
        5,
        [
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
]
CONSISTENCY = [  # (old size, size, proof)
    (1, 1, []),
    (
        1,
        8,
        [
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        6,
        8,
        [
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
    (
        2,
        5,
        [
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
]
HASHES = [leaf_hash(leaf) for leaf in LEAVES]
MANY = [leaf_hash(hashlib.sha256(bytes([i])).digest()) for i in range(34)]


def test_the_empty_tree_is_the_hash_of_nothing() -> None:
    assert EMPTY_ROOT.hex() == ROOTS[0]
    assert root([]) == EMPTY_ROOT == Frontier().root()


@pytest.mark.parametrize("size", range(9))
def test_tree_heads_match_rfc_6962(size: int) -> None:
    assert root(HASHES[:size]).hex() == ROOTS[size]


@pytest.mark.parametrize(("index", "size", "proof"), INCLUSION)
def test_inclusion_proofs_match_rfc_6962(index: int, size: int, proof: list[str]) -> None:
    assert [p.hex() for p in inclusion_proof(HASHES, index, size)] == proof
    path = [bytes.fromhex(p) for p in proof]
    assert verify_inclusion(HASHES[index], index, size, path, bytes.fromhex(ROOTS[size]))


@pytest.mark.parametrize(("old", "size", "proof"), CONSISTENCY)
def test_consistency_proofs_match_rfc_6962(old: int, size: int, proof: list[str]) -> None:
    assert [p.hex() for p in consistency_proof(HASHES, old, size)] == proof
    path = [bytes.fromhex(p) for p in proof]
    old_root, new_root = bytes.fromhex(ROOTS[old]), bytes.fromhex(ROOTS[size])
    assert verify_consistency(old, size, old_root, new_root, path)


@pytest.mark.parametrize("size", range(1, 34))
def test_every_leaf_proves_in_every_tree_and_nothing_else_does(size: int) -> None:
    head = root(MANY[:size])
    for index in range(size):
        proof = inclusion_proof(MANY, index, size)
        assert verify_inclusion(MANY[index], index, size, proof, head)
        assert not verify_inclusion(MANY[size], index, size, proof, head)
        assert not verify_inclusion(MANY[index], index + 1, size, proof, head)
        assert not verify_inclusion(MANY[index], index, size, [*proof, head], head)
        if proof:
            assert not verify_inclusion(MANY[index], index, size, proof[:-1], head)
            bent = [bytes(32), *proof[1:]]
            assert not verify_inclusion(MANY[index], index, size, bent, head)


@pytest.mark.parametrize("size", range(1, 34))
def test_every_prefix_is_consistent_and_a_changed_one_is_not(size: int) -> None:
    new_root = root(MANY[:size])
    for old in range(1, size + 1):
        proof = consistency_proof(MANY, old, size)
        old_root = root(MANY[:old])
        assert verify_consistency(old, size, old_root, new_root, proof)
        assert not verify_consistency(old, size, root(MANY[1 : old + 1]), new_root, proof)
        if old < size:
            assert not verify_consistency(old, size, old_root, root(MANY[: size - 1]), proof)


def test_the_frontier_grows_like_the_tree_and_survives_json() -> None:
    frontier = Frontier()
    for size, leaf in enumerate(MANY, start=1):
        frontier.append(leaf)
        assert frontier.size == size
        assert frontier.root() == root(MANY[:size])
        again = Frontier.from_json(frontier.to_json())
        assert again.root() == frontier.root()
        again.append(MANY[0])
        assert again.root() == root([*MANY[:size], MANY[0]])
        assert frontier.size == size  # the copy grew, not the original


@pytest.mark.parametrize(
    "state",
    [
        {"size": 3, "nodes": ["00" * 32]},
        {"size": -1, "nodes": []},
        {"size": True, "nodes": ["00" * 32]},
        {"size": 1, "nodes": ["00" * 31]},
        {"size": 1, "nodes": ["zz" * 32]},
        {"nodes": []},
        [],
    ],
)
def test_a_frontier_that_does_not_fit_its_size_is_refused(state: object) -> None:
    with pytest.raises(ValueError, match="frontier"):
        Frontier.from_json(state)


def test_a_proof_outside_the_tree_is_refused() -> None:
    with pytest.raises(ValueError):
        inclusion_proof(MANY, 5, 5)
    with pytest.raises(ValueError):
        consistency_proof(MANY, 6, 5)
    assert not verify_inclusion(MANY[0], 0, 0, [], EMPTY_ROOT)


def test_a_proof_reads_its_leaves_as_a_stream_once() -> None:
    for size in (1, 2, 7, 16, 33):
        for index in (0, size // 2, size - 1):
            stream = iter(MANY)
            assert inclusion_proof(stream, index, size) == inclusion_proof(MANY, index, size)
            assert next(stream) == MANY[size]  # read no further than the tree
    with pytest.raises(ValueError, match="only 3 leaves"):
        inclusion_proof(iter(MANY[:3]), 1, 5)


@pytest.mark.parametrize("size", [1, 2, 5, 8, 13, 33])
def test_a_proof_after_a_pruned_prefix_equals_the_full_one(size: int) -> None:
    """Leaves before `cut` gone, only their frontier kept: every later leaf still proves."""
    for cut in range(size):
        prefix = Frontier()
        for leaf in MANY[:cut]:
            prefix.append(leaf)
        for index in range(cut, size):
            proof = inclusion_proof(iter(MANY[cut:]), index, size, prefix=prefix)
            assert proof == inclusion_proof(MANY, index, size)
        with pytest.raises(ValueError):
            inclusion_proof(MANY[cut:], cut - 1, size, prefix=prefix)
