"""HMAC-signed, expiring URLs for Airlock's own /blobs endpoint."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import quote

METHODS_ALLOWED = {"GET": frozenset({"GET", "HEAD"}), "HEAD": frozenset({"HEAD"})}
HEX = re.compile(r"[0-9a-f]+")
ORIGINAL, STAGED = "original", "staged"
FLAGS = {"0": False, "1": True}


@dataclass(frozen=True)
class BlobClaim:
    """What a blob URL authorizes: one method on one object of a file, for a grant, until exp.

    The object is the file's original or, when `staged`, the grant's own staged copy of it
    (so a URL for one grant's copy never serves another grant's copy or the original).
    `ticket_id` names the download ticket; when `leased`, the ticket holds a concurrency lease
    that ends with the download.
    """

    file_id: int
    sha256: str
    commit: str
    user_id: int
    grant_id: int
    method: str
    expires: int
    ticket_id: int = 0
    staged: bool = False
    leased: bool = False

    def message(self) -> bytes:
        """The exact bytes the signature covers."""
        return "|".join(
            [
                "airlock-blob-v2",
                str(self.file_id),
                self.sha256,
                self.commit,
                str(self.user_id),
                str(self.grant_id),
                self.method,
                str(self.expires),
                str(self.ticket_id),
                STAGED if self.staged else ORIGINAL,
                "1" if self.leased else "0",
            ]
        ).encode()

    def permits(self, method: str) -> bool:
        """A GET-signed URL serves GET and HEAD; a HEAD-signed one only HEAD."""
        return method in METHODS_ALLOWED.get(self.method, frozenset())

    def query(self) -> dict[str, str]:
        """The URL query stating this claim (the signature is added by the signer)."""
        return {
            "c": self.commit,
            "h": self.sha256,
            "u": str(self.user_id),
            "g": str(self.grant_id),
            "m": self.method,
            "e": str(self.expires),
            "t": str(self.ticket_id),
            "o": STAGED if self.staged else ORIGINAL,
            "l": "1" if self.leased else "0",
        }

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
                int(query["t"]),
                {ORIGINAL: False, STAGED: True}[query["o"]],
                FLAGS[query["l"]],
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
        # Every value is hex, decimal, a fixed word or URL-safe base64: urlencode would leave
        # each as it is, so the query is joined directly (a test compares the two).
        query = "&".join(f"{k}={v}" for k, v in claim.query().items())
        query += "&s=" + self.signature(claim)
        name = quote(filename.rsplit("/", 1)[-1], safe="")
        return f"{base_url.rstrip('/')}/blobs/{claim.file_id}/{name}?{query}"

    def verify(self, claim: BlobClaim, signature: str) -> bool:
        """Constant-time check of a presented signature."""
        return hmac.compare_digest(self.signature(claim), signature)
