"""C2SP signed notes with Ed25519 keys: checkpoint bodies, signing and opening.

Key formats follow golang.org/x/mod/sumdb/note: a verifier key reads
`<name>+<hex8 key id>+<base64(0x01 || public key)>` and a signer key
`PRIVATE+KEY+<name>+<hex8 key id>+<base64(0x01 || seed)>`; the key id is the first four bytes
of SHA-256(name || 0x0A || 0x01 || public key).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

ALG_ED25519 = 0x01
SIGNATURE_PREFIX = "\u2014 "  # an em dash and a space open every signature line
CHECKPOINT_TIME = "%Y-%m-%dT%H:%M:%SZ"
_NAME = re.compile(r"[^\s+]+")
_SIZE = re.compile(r"0|[1-9][0-9]{0,18}")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_TIME = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z")


class NoteError(ValueError):
    """A note that does not open: malformed, signed by no known key, or a bad signature."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def key_id(name: str, public: bytes) -> bytes:
    """The 4-byte key id: SHA-256(name || 0x0A || 0x01 || public key)[:4]."""
    return hashlib.sha256(name.encode() + b"\n" + bytes([ALG_ED25519]) + public).digest()[:4]


def _check_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise NoteError(f"a key name is non-empty, without spaces or '+': {name!r}")
    return name


def _raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def _key_material(encoded: str, what: str) -> bytes:
    try:
        raw = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise NoteError(f"{what} is not base64") from None
    if len(raw) != 33 or raw[0] != ALG_ED25519:
        raise NoteError(f"{what} is not an Ed25519 key (0x01 and 32 bytes)")
    return raw[1:]


@dataclass(frozen=True)
class VerifierKey:
    """A named Ed25519 public key that checks note signatures."""

    name: str
    public: bytes

    @property
    def key_id(self) -> bytes:
        """The 4-byte id carried in each signature."""
        return key_id(self.name, self.public)

    @classmethod
    def from_text(cls, text: str) -> VerifierKey:
        """Parse `<name>+<hex8 key id>+<base64(0x01 || public key)>`, checking the id."""
        parts = text.strip().split("+", 2)  # base64 may hold '+'
        if len(parts) != 3:
            raise NoteError("a verifier key reads <name>+<hex8 key id>+<base64 key>")
        name, hex_id, encoded = parts
        key = cls(_check_name(name), _key_material(encoded, "the verifier key"))
        if hex_id != key.key_id.hex():
            raise NoteError(f"verifier key {name}: its key id does not match the key")
        return key

    def to_text(self) -> str:
        """The text form, safe to publish."""
        encoded = base64.b64encode(bytes([ALG_ED25519]) + self.public).decode()
        return f"{self.name}+{self.key_id.hex()}+{encoded}"

    def verify(self, message: bytes, signature: bytes) -> bool:
        """Whether the signature holds over the message."""
        try:
            Ed25519PublicKey.from_public_bytes(self.public).verify(signature, message)
        except InvalidSignature:
            return False
        return True


class SigningKey:
    """A named Ed25519 private key; its text form is a secret."""

    def __init__(self, name: str, seed: bytes) -> None:
        self.name = _check_name(name)
        self._private = Ed25519PrivateKey.from_private_bytes(seed)
        self._seed = seed

    def __repr__(self) -> str:
        return f"SigningKey(name={self.name!r}, key_id={self.verifier().key_id.hex()})"

    @classmethod
    def generate(cls, name: str) -> SigningKey:
        """A fresh random key."""
        seed = Ed25519PrivateKey.generate().private_bytes_raw()
        return cls(name, seed)

    @classmethod
    def from_text(cls, text: str) -> SigningKey:
        """Parse `PRIVATE+KEY+<name>+<hex8 key id>+<base64(0x01 || seed)>`, checking the id."""
        parts = text.strip().split("+", 4)
        if len(parts) != 5 or parts[:2] != ["PRIVATE", "KEY"]:
            raise NoteError("a signer key reads PRIVATE+KEY+<name>+<hex8 key id>+<base64 seed>")
        key = cls(parts[2], _key_material(parts[4], "the signer key"))
        if parts[3] != key.verifier().key_id.hex():
            raise NoteError(f"signer key {parts[2]}: its key id does not match the key")
        return key

    def to_text(self) -> str:
        """The secret text form."""
        encoded = base64.b64encode(bytes([ALG_ED25519]) + self._seed).decode()
        return f"PRIVATE+KEY+{self.name}+{self.verifier().key_id.hex()}+{encoded}"

    def verifier(self) -> VerifierKey:
        """The matching public key."""
        return VerifierKey(self.name, _raw_public(self._private.public_key()))

    def sign(self, message: bytes) -> bytes:
        """The Ed25519 signature of the message."""
        return self._private.sign(message)


@dataclass(frozen=True)
class Checkpoint:
    """A signed statement of the audit tree: size, Merkle root, head entry hash and time."""

    origin: str
    size: int
    root: bytes
    head_hash: str
    time: datetime

    def body(self) -> str:
        """The note body the signature covers."""
        return (
            f"{self.origin}\n{self.size}\n{base64.b64encode(self.root).decode()}\n"
            f"head {self.head_hash}\ntime {self.time.astimezone(UTC).strftime(CHECKPOINT_TIME)}\n"
        )


def sign_checkpoint(checkpoint: Checkpoint, key: SigningKey) -> str:
    """The signed note: body, a blank line, one signature line."""
    body = checkpoint.body()
    parse_checkpoint(body)  # refuse to sign what could not be opened
    signature = key.verifier().key_id + key.sign(body.encode())
    return f"{body}\n{SIGNATURE_PREFIX}{key.name} {base64.b64encode(signature).decode()}\n"


def parse_checkpoint(body: str) -> Checkpoint:
    """Parse a checkpoint body (no signature checked): exactly the five lines we write."""
    lines = body.split("\n")
    if len(lines) != 6 or lines[5] != "":
        raise NoteError("a checkpoint body is five lines: origin, size, root, head, time")
    origin, size, root, head, time = lines[:5]
    if not origin or origin != origin.strip() or origin.startswith(SIGNATURE_PREFIX):
        raise NoteError("the checkpoint origin line is empty or padded")
    if not _SIZE.fullmatch(size):
        raise NoteError(f"the checkpoint size is not a decimal number: {size!r}")
    try:
        root_hash = base64.b64decode(root, validate=True)
    except (binascii.Error, ValueError):
        root_hash = b""
    if len(root_hash) != 32 or base64.b64encode(root_hash).decode() != root:
        raise NoteError("the checkpoint root is not the base64 of a 32-byte hash")
    if not head.startswith("head ") or not _HEX64.fullmatch(head[5:]):
        raise NoteError("the checkpoint's head line is not 'head <64 lowercase hex digits>'")
    if not time.startswith("time ") or not _TIME.fullmatch(time[5:]):
        raise NoteError("the checkpoint's time line is not 'time YYYY-MM-DDTHH:MM:SSZ'")
    try:
        moment = datetime.strptime(time[5:], CHECKPOINT_TIME).replace(tzinfo=UTC)
    except ValueError:
        raise NoteError("the checkpoint's time is not a valid date") from None
    return Checkpoint(origin, int(size), root_hash, head[5:], moment)


def open_checkpoint(text: str, verifiers: Iterable[VerifierKey]) -> Checkpoint:
    """Check a signed checkpoint against known keys (current and retired) and parse it."""
    body, signatures = _split_note(text)
    known = {(key.name, key.key_id): key for key in verifiers}
    message, signed = body.encode(), False
    for name, key_hash, signature in signatures:
        key = known.get((name, key_hash))
        if key is None:
            continue
        if not key.verify(message, signature):
            raise NoteError(f"the signature by {name} ({key_hash.hex()}) does not verify")
        signed = True
    if not signed:
        names = ", ".join(f"{n} ({h.hex()})" for n, h, _ in signatures)
        raise NoteError(f"signed by no known key: {names}")
    return parse_checkpoint(body)


def _split_note(text: str) -> tuple[str, list[tuple[str, bytes, bytes]]]:
    if not text.endswith("\n") or any(c < " " and c != "\n" for c in text):
        raise NoteError("a note is newline-terminated text without control characters")
    body, sep, block = text.rpartition("\n\n")
    if not sep:
        raise NoteError("a note has a body, a blank line, then signature lines")
    signatures = [_signature_line(line) for line in block[:-1].split("\n")]
    return body + "\n", signatures


def _signature_line(line: str) -> tuple[str, bytes, bytes]:
    if not line.startswith(SIGNATURE_PREFIX):
        raise NoteError(f"not a signature line: {line[:40]!r}")
    name, _, encoded = line[len(SIGNATURE_PREFIX) :].partition(" ")
    try:
        raw = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise NoteError(f"the signature by {name} is not base64") from None
    if not _NAME.fullmatch(name) or len(raw) != 4 + 64:
        raise NoteError(f"the signature line by {name!r} is malformed")
    return name, raw[:4], raw[4:]
