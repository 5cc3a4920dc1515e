"""Signed, expiring, Range-capable file URLs for local storage (the target of /resolve)."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import socket
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import Any

from flask import Blueprint, Response, request, send_file
from werkzeug.exceptions import RequestedRangeNotSatisfiable

from gateway.api.context import airlock, db
from gateway.api.errors import hub_error
from gateway.db.engine import begin_reads
from gateway.db.models import utcnow
from gateway.services.downloads import Blob, bytes_gone
from gateway.services.signing import BlobClaim

bp = Blueprint("blobs", __name__)
log = logging.getLogger(__name__)


class ClosingFile(io.FileIO):
    """A file that says when it is closed: the WSGI server closes it once the response is sent,
    failed or cut off (with `sendfile` too, which needs a real file descriptor)."""

    def __init__(self, path: Path, on_close: Callable[[], None] | None) -> None:
        super().__init__(path, "rb")
        self._on_close = [on_close] if on_close is not None else []

    def also_on_close(self, callback: Callable[[], None] | None) -> None:
        """Run `callback` too when the file is closed (first, before the others)."""
        if callback is not None:
            self._on_close.insert(0, callback)

    def close(self) -> None:
        """Close the descriptor, then report it (once), every callback even if one fails."""
        try:
            super().close()
        finally:
            callbacks, self._on_close = self._on_close, []
            for callback in callbacks:
                try:
                    callback()
                except Exception:
                    log.exception("a blob download's end-of-response step failed")


def cork(environ: Mapping[str, Any]) -> Callable[[], None] | None:
    """Hold back partial TCP segments while a body goes out (Linux `TCP_CORK`, what nginx's
    `tcp_nopush` does); the returned call releases them, and must run when the response ends.

    Under gunicorn a body is one `sendfile`, which the kernel otherwise pushes out in pieces of a
    pipe's size each: /blobs spent about a third more system CPU than nginx for the same bytes
    and ran at 0.65 to 0.74 of its speed, and about as fast as nginx corked (docs/performance.md).
    None where the server's socket is not ours to tune (another server, another system)."""
    sock = environ.get("gunicorn.socket")
    option = getattr(socket, "TCP_CORK", None)
    if sock is None or option is None:
        return None
    try:
        sock.setsockopt(socket.IPPROTO_TCP, option, 1)
    except (OSError, AttributeError):
        return None

    def uncork() -> None:
        with contextlib.suppress(OSError):  # the client may be gone: nothing left to flush
            sock.setsockopt(socket.IPPROTO_TCP, option, 0)

    return uncork


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
    if request.method == "GET":  # released when the server closes the file: sent, failed or cut
        file.also_on_close(cork(request.environ))
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
