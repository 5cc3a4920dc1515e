"""Signed checkpoint notes: key formats, sign/open round trips, forgeries and key rotation."""

from __future__ import annotations

import base64
import hashlib
from datetime import UTC, datetime

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.audit.notes import (
    SIGNATURE_PREFIX,
    Checkpoint,
    NoteError,
    SigningKey,
    VerifierKey,
    open_checkpoint,
    parse_checkpoint,
    sign_checkpoint,
)

CHECKPOINT = Checkpoint(
    origin="airlock.example/audit",
    size=42,
    root=hashlib.sha256(b"root").digest(),
    head_hash="ab" * 32,
    time=datetime(2026, 11, 27, 9, 30, 5, tzinfo=UTC),
)


@pytest.fixture(scope="module")
def key() -> SigningKey:
    return SigningKey.generate("airlock-audit-2026")


def test_the_key_id_is_the_sumdb_note_hash(key: SigningKey) -> None:
    public = key.verifier().public
    expected = hashlib.sha256(b"airlock-audit-2026\n\x01" + public).digest()[:4]
    assert key.verifier().key_id == expected
    name, hex_id, encoded = key.verifier().to_text().split("+", 2)
    assert (name, hex_id) == ("airlock-audit-2026", expected.hex())
    assert base64.b64decode(encoded) == b"\x01" + public


def test_keys_round_trip_through_their_text(key: SigningKey) -> None:
    text = key.to_text()
    assert text.startswith(f"PRIVATE+KEY+airlock-audit-2026+{key.verifier().key_id.hex()}+")
    again = SigningKey.from_text(text)
    assert again.verifier() == key.verifier()
    assert VerifierKey.from_text(key.verifier().to_text()) == key.verifier()
    assert text.split("+", 4)[-1] not in repr(key)


def test_a_golang_note_signer_key_is_read() -> None:
    """The same seed in Go's text form gives the same public key and id."""
    seed = bytes(range(32))
    public = Ed25519PrivateKey.from_private_bytes(seed).public_key().public_bytes_raw()
    key_hash = hashlib.sha256(b"example.com\n\x01" + public).digest()[:4].hex()
    encoded = base64.b64encode(b"\x01" + seed).decode()
    key = SigningKey.from_text(f"PRIVATE+KEY+example.com+{key_hash}+{encoded}")
    assert key.verifier().public == public


@pytest.mark.parametrize(
    "text",
    [
        "name+00000000+AQ==",
        "name+deadbeef",
        "na me+deadbeef+" + base64.b64encode(b"\x01" + bytes(32)).decode(),
        "name+deadbeef+" + base64.b64encode(b"\x02" + bytes(32)).decode(),
        "name+deadbeef+" + base64.b64encode(b"\x01" + bytes(32)).decode(),  # wrong id
        "name+deadbeef+***",
    ],
)
def test_a_malformed_verifier_key_is_refused(text: str) -> None:
    with pytest.raises(NoteError):
        VerifierKey.from_text(text)


def test_a_signer_key_with_a_wrong_id_is_refused(key: SigningKey) -> None:
    parts = key.to_text().split("+", 4)
    parts[3] = "00000000"
    with pytest.raises(NoteError, match="key id"):
        SigningKey.from_text("+".join(parts))


def test_sign_then_open_round_trips(key: SigningKey) -> None:
    note = sign_checkpoint(CHECKPOINT, key)
    body, _, signature = note.partition("\n\n")
    assert body.split("\n") == [
        "airlock.example/audit",
        "42",
        base64.b64encode(CHECKPOINT.root).decode(),
        "head " + "ab" * 32,
        "time 2026-11-27T09:30:05Z",
    ]
    assert signature.startswith(f"{SIGNATURE_PREFIX}airlock-audit-2026 ")
    raw = base64.b64decode(signature.split(" ")[2])
    assert raw[:4] == key.verifier().key_id and len(raw) == 68
    assert open_checkpoint(note, [key.verifier()]) == CHECKPOINT


def test_a_note_signed_with_another_key_of_the_same_name_is_unknown(key: SigningKey) -> None:
    forger = SigningKey.generate("airlock-audit-2026")
    with pytest.raises(NoteError, match="signed by no known key"):
        open_checkpoint(sign_checkpoint(CHECKPOINT, forger), [key.verifier()])


def test_a_note_whose_signature_names_our_key_but_does_not_verify_is_refused(
    key: SigningKey,
) -> None:
    forger = SigningKey.generate("x")
    note = sign_checkpoint(CHECKPOINT, forger)
    body, _, line = note.partition("\n\n")
    raw = base64.b64decode(line.split(" ")[2])
    forged = key.verifier().key_id + raw[4:]
    text = f"{body}\n\n{SIGNATURE_PREFIX}{key.name} {base64.b64encode(forged).decode()}\n"
    with pytest.raises(NoteError, match="does not verify"):
        open_checkpoint(text, [key.verifier()])


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("\n42\n", "\n43\n"),
        ("head abab", "head abac"),
        ("time 2026-11-27T09:30:05Z", "time 2026-11-27T09:30:06Z"),
        ("airlock.example/audit", "airlock.example/audiT"),
    ],
)
def test_an_altered_body_fails_its_signature(key: SigningKey, old: str, new: str) -> None:
    note = sign_checkpoint(CHECKPOINT, key)
    with pytest.raises(NoteError, match="does not verify"):
        open_checkpoint(note.replace(old, new, 1), [key.verifier()])


def test_retired_keys_still_open_old_checkpoints() -> None:
    retired, current = SigningKey.generate("audit-2025"), SigningKey.generate("audit-2026")
    old_note = sign_checkpoint(CHECKPOINT, retired)
    new_note = sign_checkpoint(CHECKPOINT, current)
    keys = [current.verifier(), retired.verifier()]
    assert open_checkpoint(old_note, keys) == open_checkpoint(new_note, keys) == CHECKPOINT
    with pytest.raises(NoteError, match="no known key"):
        open_checkpoint(old_note, [current.verifier()])


def test_one_known_signature_among_unknown_ones_opens(key: SigningKey) -> None:
    witness = SigningKey.generate("witness")
    ours = sign_checkpoint(CHECKPOINT, key)
    theirs = sign_checkpoint(CHECKPOINT, witness).partition("\n\n")[2]
    assert open_checkpoint(ours + theirs, [key.verifier()]) == CHECKPOINT


@pytest.mark.parametrize(
    "mangle",
    [
        lambda n: n.rstrip("\n"),
        lambda n: n.replace("\n\n", "\n"),
        lambda n: n.replace(SIGNATURE_PREFIX, "- "),
        lambda n: n.replace("\n42\n", "\n042\n"),
        lambda n: n.replace("\n42\n", "\n4\t2\n"),
        lambda n: n.replace("head ", "head  "),
        lambda n: n.replace("time 2026-11-27T09:30:05Z", "time 2026-11-27T09:30:05.5Z"),
        lambda n: n.replace("\n\n", "\nextra\n\n"),
    ],
)
def test_a_malformed_note_is_refused(key: SigningKey, mangle: object) -> None:
    note = sign_checkpoint(CHECKPOINT, key)
    with pytest.raises(NoteError):
        open_checkpoint(mangle(note), [key.verifier()])  # type: ignore[operator]


@pytest.mark.parametrize(
    "body",
    [
        "o\n1\nAAAA\nhead " + "0" * 64 + "\ntime 2026-01-01T00:00:00Z\n",
        "o\n1\n" + base64.b64encode(bytes(32)).decode() + "\nhead " + "0" * 64 + "\n",
        "o\n1\n" + base64.b64encode(bytes(32)).decode() + "\nhead " + "0" * 63 + "\ntime x\n",
        "o\n1\n"
        + base64.b64encode(bytes(32)).decode()
        + "\nhead "
        + "0" * 64
        + "\ntime 2026-02-30T00:00:00Z\n",
    ],
)
def test_a_malformed_checkpoint_body_is_refused(body: str) -> None:
    with pytest.raises(NoteError):
        parse_checkpoint(body)
