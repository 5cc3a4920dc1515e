"""Signed, expiring, Range-capable file URLs for local storage (the target of /resolve)."""

from __future__ import annotations

from functools import partial

from flask import Blueprint, Response, request, send_file
from werkzeug.exceptions import RequestedRangeNotSatisfiable

from gateway.api.context import airlock, db
from gateway.api.errors import hub_error
from gateway.db.engine import begin_read_only
from gateway.db.models import utcnow
from gateway.services.signing import BlobClaim

bp = Blueprint("blobs", __name__)


@bp.route("/blobs/<int:file_id>/<filename>", methods=["GET", "HEAD"])
def blob(file_id: int, filename: str) -> Response:
    """Serve one object's bytes to whoever holds a valid signed URL; no grant lookup.

    The end of a GET (completed, failed or cut off by the client) frees its ticket's lease.
    """
    session = db()
    begin_read_only(session)  # one read, never a write
    downloads = airlock().downloads
    found = downloads.open_blob(
        session,
        claim=BlobClaim.from_query(file_id, request.args),
        signature=request.args.get("s", ""),
        method=request.method,
        filename=filename,
        now=utcnow(),
    )
    try:
        response = send_file(
            found.path,
            mimetype="application/octet-stream",
            download_name=found.file.path.rsplit("/", 1)[-1],
            conditional=True,
            etag=found.served.sha256,
        )
    except RequestedRangeNotSatisfiable as exc:
        response = hub_error(416, None, "the requested range is not satisfiable")
        response.headers["Content-Range"] = f"bytes */{exc.length}"
    if request.method == "GET":
        response.call_on_close(partial(downloads.end_download, found.claim))
    response.headers["Cache-Control"] = "private, no-store"  # per-recipient authority
    response.headers["X-Repo-Commit"] = found.commit
    response.headers["X-Linked-Etag"] = f'"{found.served.sha256}"'
    response.headers["X-Linked-Size"] = str(found.served.size)
    return response
