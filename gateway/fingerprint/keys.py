"""The keyed generator: which values of a tensor a grant's mark moves, and which way."""

from __future__ import annotations

import hashlib
import hmac
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

    Each entry is `position * 2 + up` (up is 1 for +1 ULP): one compact int per mark. The
    stream is HMAC-SHA256 in counter mode under a seed keyed by the secret, key version,
    grant and tensor name, so only the deployment can reproduce or predict it.
    """
    label = f"airlock-fingerprint|v{key.version}|grant:{grant_id}|tensor:{tensor}"
    seed = hmac.new(key.secret, label.encode(), hashlib.sha256).digest()
    chosen: dict[int, int] = {}
    counter = 0
    while len(chosen) < k:
        block = hmac.new(seed, counter.to_bytes(8, "big"), hashlib.sha256).digest()
        counter += 1
        for i in range(0, 32, 8):
            word = int.from_bytes(block[i : i + 8], "big")
            position = (word >> 1) % numel
            if position not in chosen and len(chosen) < k:
                chosen[position] = word & 1
    return sorted(p * 2 + up for p, up in chosen.items())


def keyring(secrets: Mapping[int, str], current: int) -> Keyring:
    """The keyring of a deployment's secrets by version; the `current` version must be set."""
    if not secrets.get(current):
        raise ValueError(f"no fingerprint secret for the current key version {current}")
    older = tuple(FingerprintKey(v, s.encode()) for v, s in sorted(secrets.items()) if v != current)
    return Keyring(FingerprintKey(current, secrets[current].encode()), older)
