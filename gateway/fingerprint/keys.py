"""The keyed generator: which values of a tensor a grant's mark moves, and which way."""

from __future__ import annotations

import hashlib
import hmac
import sys
from array import array
from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class FingerprintKey:
    """A deployment's marking secret under one version (versions rotate; old ones still trace)."""

    version: int
    secret: bytes = field(repr=False)


@dataclass(frozen=True)
class Keyring:
    """The current key that marks new copies, and every key older copies were marked with."""

    current: FingerprintKey
    older: tuple[FingerprintKey, ...] = ()

    def get(self, version: int) -> FingerprintKey | None:
        """The key of `version`, or None if this deployment no longer holds it."""
        return next((k for k in (self.current, *self.older) if k.version == version), None)


def codeword(key: FingerprintKey, grant_id: int, tensor: str, numel: int, k: int) -> list[int]:
    """K distinct positions in a tensor of `numel` values, each signed by the grant's codeword.

    Each entry is `position * 2 + up` (up is 1 for +1 ULP): one compact int per mark, sorted.
    The seed is HMAC-SHA256 of the secret over the key version, grant and tensor name; SHAKE-256
    of the seed is the stream of 64-bit big-endian words (position from the high 63 bits, the
    direction from the lowest), so only the deployment can reproduce or predict them.
    """
    label = f"airlock-fingerprint|v{key.version}|grant:{grant_id}|tensor:{tensor}"
    seed = hmac.new(key.secret, label.encode(), hashlib.sha256).digest()
    chosen: dict[int, int] = {}
    k = min(k, numel)
    words = k + k // 4 + 8  # enough for the collisions of K <= numel / 128, almost always
    while len(chosen) < k:
        stream = array("Q", hashlib.shake_256(seed).digest(8 * words))
        if sys.byteorder == "little":
            stream.byteswap()
        for word in stream:
            position = (word >> 1) % numel
            if position not in chosen:
                chosen[position] = word & 1
                if len(chosen) == k:
                    break
        words *= 2  # rare: re-read a longer stream (a prefix of the same one)
    return sorted(p * 2 + up for p, up in chosen.items())


def keyring(secrets: Mapping[int, str], current: int) -> Keyring:
    """The keyring of a deployment's secrets by version; the `current` version must be set."""
    if not secrets.get(current):
        raise ValueError(f"no fingerprint secret for the current key version {current}")
    older = tuple(FingerprintKey(v, s.encode()) for v, s in sorted(secrets.items()) if v != current)
    return Keyring(FingerprintKey(current, secrets[current].encode()), older)
