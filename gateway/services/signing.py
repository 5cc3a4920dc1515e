"""HMAC-signed, expiring URLs for Airlock's own /blobs endpoint."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import quote, urlencode

METHODS_ALLOWED = {"GET": frozenset({"GET", "HEAD"}), "HEAD": frozenset({"HEAD"})}
HEX = re.compile(r"[0-9a-f]+")


@dataclass(frozen=True)
class BlobClaim:
    """What a blob URL authorizes: one method on one file of a commit, for a grant, until exp."""

    file_id: int
    sha256: str
    commit: str
    user_id: int
    grant_id: int
    method: str
    expires: int

    def message(self) -> bytes:
        """The exact bytes the signature covers."""
        return "|".join(
            [
                "airlock-blob-v1",
                str(self.file_id),
                self.sha256,
                self.commit,
                str(self.user_id),
                str(self.grant_id),
                self.method,
                str(self.expires),
            ]
        ).encode()

    def permits(self, method: str) -> bool:
        """A GET-signed URL serves GET and HEAD; a HEAD-signed one only HEAD."""
        return method in METHODS_ALLOWED.get(self.method, frozenset())

    @classmethod
    def from_query(cls, file_id: int, query: Mapping[str, str]) -> BlobClaim | None:
        """The claim a blob URL's query states, or None when a part is missing or malformed."""
        try:
            claim = cls(
                file_id,
                query["h"],
                query["c"],
                int(query["u"]),
                int(query["g"]),
                query["m"],
                int(query["e"]),
            )
        except (KeyError, ValueError):
            return None
        well_formed = (
            len(claim.sha256) == 64
            and len(claim.commit) == 40
            and HEX.fullmatch(claim.sha256 + claim.commit) is not None
            and claim.method in METHODS_ALLOWED
        )
        return claim if well_formed else None


class BlobSigner:
    """Signs and verifies blob claims with a key derived from the deployment secret."""

    def __init__(self, secret_key: str) -> None:
        self._key = hmac.new(secret_key.encode(), b"airlock blob urls", hashlib.sha256).digest()

    def signature(self, claim: BlobClaim) -> str:
        """URL-safe base64 HMAC-SHA256 of the claim."""
        mac = hmac.new(self._key, claim.message(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()

    def url(self, base_url: str, claim: BlobClaim, filename: str) -> str:
        """The absolute blob URL carrying its own authority."""
        query = urlencode(
            {
                "c": claim.commit,
                "h": claim.sha256,
                "u": claim.user_id,
                "g": claim.grant_id,
                "m": claim.method,
                "e": claim.expires,
                "s": self.signature(claim),
            }
        )
        name = quote(filename.rsplit("/", 1)[-1], safe="")
        return f"{base_url.rstrip('/')}/blobs/{claim.file_id}/{name}?{query}"

    def verify(self, claim: BlobClaim, signature: str) -> bool:
        """Constant-time check of a presented signature."""
        return hmac.compare_digest(self.signature(claim), signature)
