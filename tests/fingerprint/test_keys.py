"""Fingerprint keys: from the settings, generated locally by default, rotated by version."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from gateway.fingerprint import FingerprintKey, codeword, keyring
from gateway.settings import load_settings


def test_an_embedded_secret_is_generated_once_into_the_data_dir_0600(tmp_path: Path) -> None:
    first = load_settings({}, data_dir=tmp_path)
    again = load_settings({}, data_dir=tmp_path)
    assert first.fingerprint_secrets == again.fingerprint_secrets
    assert first.fingerprint_key_version == 1 and len(first.fingerprint_secrets[1]) >= 32
    (path,) = tmp_path.glob("*fingerprint*")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert first.fingerprint_secrets[1] not in repr(first)


def test_a_configured_secret_rotates_and_keeps_the_retired_keys(tmp_path: Path) -> None:
    env = {
        "AIRLOCK_FINGERPRINT_SECRET": "new-secret",
        "AIRLOCK_FINGERPRINT_KEY_VERSION": "3",
        "AIRLOCK_FINGERPRINT_SECRET_V2": "old-secret",
    }
    settings = load_settings(env, data_dir=tmp_path)
    keys = keyring(settings.fingerprint_secrets, settings.fingerprint_key_version)
    assert keys.current == FingerprintKey(3, b"new-secret")
    assert keys.get(2) == FingerprintKey(2, b"old-secret") and keys.get(1) is None
    assert not list(tmp_path.glob("*fingerprint*"))


def test_a_keyring_without_its_current_secret_is_refused() -> None:
    with pytest.raises(ValueError, match="current key version 2"):
        keyring({1: "s"}, 2)


def test_positions_depend_on_secret_version_grant_and_tensor() -> None:
    base = FingerprintKey(1, b"s")
    words = [
        codeword(base, 1, "a", 10**6, 64),
        codeword(FingerprintKey(1, b"t"), 1, "a", 10**6, 64),
        codeword(FingerprintKey(2, b"s"), 1, "a", 10**6, 64),
        codeword(base, 2, "a", 10**6, 64),
        codeword(base, 1, "b", 10**6, 64),
    ]
    assert len({tuple(w) for w in words}) == 5
    assert codeword(base, 1, "a", 10**6, 64) == words[0]
    assert len({e >> 1 for e in words[0]}) == 64  # distinct positions
    assert 16 < sum(e & 1 for e in words[0]) < 48  # both signs
