"""Signed, expiring, Range-capable file URLs for local storage (the target of /resolve)."""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from functools import partial
from pathlib import Path

from flask import Blueprint, Response, request, send_file
from werkzeug.exceptions import RequestedRangeNotSatisfiable

from gateway.api.context import airlock, db
from gateway.api.errors import hub_error
from gateway.db.engine import begin_reads
from gateway.db.models import utcnow
from gateway.services.downloads import Blob, bytes_gone
from gateway.services.signing import BlobClaim

bp = Blueprint("blobs", __name__)


class ClosingFile(io.FileIO):
    """A file that says when it is closed: the WSGI server closes it once the response is sent,
    failed or cut off (with `sendfile` too, which needs a real file descriptor)."""

    def __init__(self, path: Path, on_close: Callable[[], None] | None) -> None:
        super().__init__(path, "rb")
        self._on_close = on_close

    def close(self) -> None:
        """Close the descriptor, then report it (once)."""
        try:
            super().close()
        finally:
            callback, self._on_close = self._on_close, None
            if callback is not None:
                callback()


@bp.route("/blobs/<int:file_id>/<filename>", methods=["GET", "HEAD"])
def blob(file_id: int, filename: str) -> Response:
    """Serve one object's bytes to whoever holds a valid signed URL; no grant lookup.

    The end of a GET (completed, failed or cut off by the client) frees its ticket's lease.
    """
    session = db()
    begin_reads(session)  # one read, never a write (PostgreSQL: no transaction)
    downloads = airlock().downloads
    found = downloads.open_blob(
        session,
        claim=BlobClaim.from_query(file_id, request.args),
        signature=request.args.get("s", ""),
        method=request.method,
        filename=filename,
        now=utcnow(),
    )
    ended = partial(downloads.end_download, found.claim) if request.method == "GET" else None
    try:
        file = ClosingFile(found.path, ended)
    except FileNotFoundError:  # deleted since open_blob looked (the sweep races a download)
        if ended is not None:
            ended()
        raise bytes_gone(found.served, found.file) from None
    try:
        response = _send(found, file)
    except RequestedRangeNotSatisfiable as exc:
        response = hub_error(416, None, "the requested range is not satisfiable")
        response.headers["Content-Range"] = f"bytes */{exc.length}"
    response.headers["Cache-Control"] = "private, no-store"  # per-recipient authority
    response.headers["X-Repo-Commit"] = found.commit
    response.headers["X-Linked-Etag"] = f'"{found.served.sha256}"'
    response.headers["X-Linked-Size"] = str(found.served.size)
    return response


def _send(found: Blob, file: ClosingFile) -> Response:
    """The file as a conditional, Range-capable response; closed at once if none is sent."""
    try:
        response = send_file(
            file,
            mimetype="application/octet-stream",
            download_name=found.file.path.rsplit("/", 1)[-1],
            conditional=False,
        )
        response.content_length = size = os.fstat(file.fileno()).st_size
        response.set_etag(found.served.sha256)
        response.make_conditional(request.environ, accept_ranges=True, complete_length=size)
        return response
    except BaseException:
        file.close()
        raise
