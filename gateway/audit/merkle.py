"""RFC 6962 / 9162 Merkle trees over audit entry hashes: roots, a frontier, inclusion proofs."""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterable, Sequence
from typing import Any

EMPTY_ROOT = hashlib.sha256(b"").digest()
_sha256 = hashlib.sha256


def leaf_hash(entry: bytes) -> bytes:
    """SHA-256(0x00 || entry); an entry is the 32 raw bytes of an event's entry_hash."""
    return _sha256(b"\x00" + entry).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """SHA-256(0x01 || left || right)."""
    return _sha256(b"\x01" + left + right).digest()


class Frontier:
    """An incremental tree: the roots of its perfect subtrees, largest first (a compact range)."""

    __slots__ = ("_nodes", "_size")

    def __init__(self) -> None:
        self._nodes: list[bytes] = []
        self._size = 0

    @property
    def size(self) -> int:
        """How many leaves the tree holds."""
        return self._size

    @property
    def nodes(self) -> tuple[bytes, ...]:
        """The perfect subtrees' roots, largest first."""
        return tuple(self._nodes)

    def append(self, leaf: bytes) -> None:
        """Add one leaf hash, merging the subtrees it completes."""
        nodes, size = self._nodes, self._size
        while size & 1:
            leaf = _sha256(b"\x01" + nodes.pop() + leaf).digest()
            size >>= 1
        nodes.append(leaf)
        self._size += 1

    def root(self) -> bytes:
        """The RFC 6962 tree head of the leaves so far."""
        if not self._nodes:
            return EMPTY_ROOT
        nodes = self._nodes
        head = nodes[-1]
        for node in reversed(nodes[:-1]):
            head = node_hash(node, head)
        return head

    def copy(self) -> Frontier:
        """An independent copy."""
        twin = Frontier()
        twin._nodes, twin._size = list(self._nodes), self._size
        return twin

    def to_json(self) -> dict[str, Any]:
        """`{"size": n, "nodes": [hex, ...]}`, enough to extend the tree later."""
        return {"size": self._size, "nodes": [node.hex() for node in self._nodes]}

    @classmethod
    def from_json(cls, state: Any) -> Frontier:
        """Rebuild from `to_json`, refusing a state whose node count does not fit its size."""
        try:
            size, nodes = state["size"], [bytes.fromhex(n) for n in state["nodes"]]
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a Merkle frontier: {exc}") from None
        if type(size) is not int or size < 0 or len(nodes) != size.bit_count():
            raise ValueError("a Merkle frontier holds one node per bit set in its size")
        if any(len(node) != 32 for node in nodes):
            raise ValueError("Merkle frontier nodes are 32-byte hashes")
        frontier = cls()
        frontier._nodes, frontier._size = nodes, size
        return frontier


def root(leaf_hashes: Sequence[bytes]) -> bytes:
    """The RFC 6962 tree head of the leaf hashes (the empty tree's is SHA-256(''))."""
    frontier = Frontier()
    for leaf in leaf_hashes:
        frontier.append(leaf)
    return frontier.root()


def _split(n: int) -> int:
    """The largest power of two smaller than n (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


def inclusion_proof(
    leaf_hashes: Iterable[bytes], index: int, size: int, *, prefix: Frontier | None = None
) -> list[bytes]:
    """RFC 9162 PATH: the audit path of leaf `index` in the tree of the first `size` leaves.

    The leaves may be a stream: it is read once, keeping one frontier per proof node (the
    nodes cover disjoint ranges), so a proof in a tree of any size needs O(log n) memory.
    With `prefix` (the frontier of the first leaves, e.g. where older ones were pruned) the
    stream starts after it, and `index` must too.
    """
    start = prefix.size if prefix else 0
    if not start <= index < size:
        raise ValueError(f"leaf {index} is not in a tree of size {size} after leaf {start}")
    ranges = _path_ranges(index, size)
    trees = [_seeded(prefix, lo, hi) for lo, hi in ranges]
    by_start = sorted(range(len(ranges)), key=lambda n: ranges[n][0])
    current, seen = 0, start
    for position, leaf in enumerate(itertools.islice(leaf_hashes, size - start), start=start):
        seen = position + 1
        if position == index:
            continue
        while ranges[by_start[current]][1] <= position:
            current += 1
        trees[by_start[current]].append(leaf)
    if seen != size:
        raise ValueError(f"leaf {index} is not in a tree of size {size}: only {seen} leaves")
    return [tree.root() for tree in trees]


def _seeded(prefix: Frontier | None, lo: int, hi: int) -> Frontier:
    """The part of the range [lo, hi) the prefix already holds, as a frontier to extend.

    A proof node's range is an aligned subtree, so the prefix's subtrees inside it are exactly
    the frontier of its first min(hi, prefix size) - lo leaves."""
    tree = Frontier()
    if prefix is None or lo >= prefix.size:
        return tree
    position, inside = 0, []
    for node, width in zip(prefix.nodes, _widths(prefix.size), strict=True):
        if lo <= position and position + width <= hi:
            inside.append(node)
        position += width
    tree._nodes, tree._size = inside, min(hi, prefix.size) - lo
    if len(inside) != tree._size.bit_count():
        raise ValueError(f"the prefix does not split at leaf {lo}")
    return tree


def _widths(size: int) -> list[int]:
    """The perfect subtrees' sizes of a frontier of `size` leaves, largest first."""
    return [1 << bit for bit in reversed(range(size.bit_length())) if size >> bit & 1]


def _path_ranges(index: int, size: int) -> list[tuple[int, int]]:
    """The leaf ranges whose subtree roots form the audit path, deepest first."""
    ranges = []
    lo, hi = 0, size
    while hi - lo > 1:
        k = _split(hi - lo)
        if index < lo + k:
            ranges.append((lo + k, hi))
            hi = lo + k
        else:
            ranges.append((lo, lo + k))
            lo += k
    ranges.reverse()
    return ranges


def verify_inclusion(
    leaf: bytes, index: int, size: int, proof: Sequence[bytes], expected_root: bytes
) -> bool:
    """RFC 9162 section 2.1.3.2: does `proof` put `leaf` at `index` of the tree with this root."""
    if not 0 <= index < size:
        return False
    fn, sn, head = index, size - 1, leaf
    for sibling in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            head = node_hash(sibling, head)
            while not fn & 1 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            head = node_hash(head, sibling)
        fn, sn = fn >> 1, sn >> 1
    return sn == 0 and head == expected_root


def consistency_proof(leaf_hashes: Sequence[bytes], old_size: int, size: int) -> list[bytes]:
    """RFC 9162 PROOF(m, D[n]): the tree of `old_size` leaves is a prefix of the `size` one."""
    if not 0 <= old_size <= size <= len(leaf_hashes):
        raise ValueError(f"no consistency proof from size {old_size} to {size}")
    if old_size in (0, size):
        return []
    proof: list[bytes] = []
    lo, hi, m, complete = 0, size, old_size, True
    while m != hi - lo:
        k = _split(hi - lo)
        if m <= k:
            proof.append(root(leaf_hashes[lo + k : hi]))
            hi = lo + k
        else:
            proof.append(root(leaf_hashes[lo : lo + k]))
            lo, m, complete = lo + k, m - k, False
    if not complete:
        proof.append(root(leaf_hashes[lo:hi]))
    proof.reverse()
    return proof


def verify_consistency(
    old_size: int, size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> bool:
    """RFC 9162 section 2.1.4.2: is the tree of `old_size` with `old_root` a prefix of the other."""
    if not 0 <= old_size <= size:
        return False
    if old_size == size:
        return not proof and old_root == new_root
    if old_size == 0:
        return not proof
    path = list(proof)
    if old_size & (old_size - 1) == 0:
        path.insert(0, old_root)
    if not path:
        return False
    fn, sn = old_size - 1, size - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr, sr = node_hash(c, fr), node_hash(c, sr)
            while not fn & 1 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            sr = node_hash(sr, c)
        fn, sn = fn >> 1, sn >> 1
    return fr == old_root and sr == new_root and sn == 0
