"""Hugging Face Hub-compatible reads: model info, trees, paths-info, whoami and resolve.

Only callers with a live weights grant see a model's files here; the grant's file globs decide
which files exist at all. The wire contract is the shared protocol note `huggingface_hub.md`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import quote, unquote, urlencode

from flask import Blueprint, Response, jsonify, request
from sqlalchemy import select

from gateway.api.context import airlock, base_url, db, principal, request_country
from gateway.api.errors import render
from gateway.db.engine import begin_read_only, begin_reads
from gateway.db.models import ApiToken, Organization, User, utcnow
from gateway.errors import AuthenticationRequired, EntryNotFound, InvalidInput
from gateway.services.downloads import Served, WeightsAccess, apply_url_for, ratelimit_headers
from gateway.services.provisioning import ProvisioningPending
from gateway.services.rows import FileRow, RevisionRow
from policies import ApprovalMode, GrantKind

bp = Blueprint("hub", __name__)
MODEL = "/api/models/<org>/<name>"
PAGE_SIZE = 1000
EXPIRY_NOTICE = timedelta(days=7)
TRUE = frozenset({"1", "true", "yes"})


# -- model info ----------------------------------------------------------------------------------
@bp.get(MODEL)
@bp.get(MODEL + "/revision/<path:rev>")
def model_info(org: str, name: str, rev: str = "main") -> Response:
    access, revision = _open(org, name, rev)
    files = airlock().downloads.visible_files(db(), access, revision)
    blobs = _flag("blobs")
    body = {
        "id": access.model.repo_id,
        "modelId": access.model.repo_id,
        "author": access.model.org_slug,
        "sha": revision.commit_id,
        "lastModified": _iso(revision.created_at),
        "createdAt": _iso(access.model.created_at),
        "private": False,
        "gated": _gating(access),
        "disabled": False,
        "downloads": 0,
        "likes": 0,
        "library_name": None,
        "pipeline_tag": None,
        "tags": ["safetensors"] if any(f.path.endswith(".safetensors") for f in files) else [],
        "usedStorage": sum(f.size for f in files),
        "siblings": [_sibling(f, blobs) for f in files],
    }
    return _with_notice(jsonify(body), access)


# -- tree and paths-info -------------------------------------------------------------------------
@bp.get(MODEL + "/tree/<path:rest>")
def tree(org: str, name: str, rest: str) -> Response:
    rev, path = _rev_and_path(org, name, "tree", rest)
    access, revision = _open(org, name, rev)
    listing = Listing(revision, airlock().downloads.visible_files(db(), access, revision))
    entries = listing.children(path.strip("/"), recursive=_flag("recursive"))
    after = _cursor()
    page = [e for e in entries if e["path"] > after] if after else entries
    limit = _limit()
    response = jsonify(page[:limit])
    if len(page) > limit:
        next_url = _next_url(org, name, rev, path, page[limit - 1])
        response.headers["Link"] = f'<{next_url}>; rel="next"'
    return response


@bp.post(MODEL + "/paths-info/<path:rev>")
def paths_info(org: str, name: str, rev: str) -> Response:
    access, revision = _open(org, name, rev)
    wanted = request.form.getlist("paths")
    if not wanted and request.is_json:
        found = (request.get_json(silent=True) or {}).get("paths", [])
        wanted = [p for p in found if isinstance(p, str)] if isinstance(found, list) else []
    listing = Listing(revision, airlock().downloads.visible_files(db(), access, revision))
    entries = [listing.entry(p.strip("/")) for p in dict.fromkeys(wanted)]
    return jsonify([e for e in entries if e is not None])


# -- identity ------------------------------------------------------------------------------------
@bp.get("/api/whoami-v2")
def whoami() -> Response:
    begin_reads(db())
    caller = principal()
    if not caller.authenticated:
        raise AuthenticationRequired("Invalid credentials in Authorization header")
    session = db()
    user = session.get_one(User, caller.require_user())
    token = session.get(ApiToken, caller.token_id) if caller.token_id else None
    orgs = (
        session.scalars(
            select(Organization)
            .where(Organization.id.in_(list(caller.roles)))
            .order_by(Organization.slug)
        ).all()
        if caller.roles
        else []
    )
    scopes = sorted(caller.scopes)
    return jsonify(
        {
            "type": "user",
            "id": str(user.id),
            "name": user.username,
            "fullname": user.display_name or user.username,
            "email": user.email,
            "emailVerified": True,
            "isPro": False,
            "orgs": [
                {
                    "type": "org",
                    "name": o.slug,
                    "fullname": o.name,
                    "roleInOrg": sorted(caller.roles.get(o.id, ()))[0],
                }
                for o in orgs
            ],
            "auth": {
                "type": "access_token",
                "accessToken": {
                    "displayName": token.name if token else "airlock",
                    "role": "fineGrained",
                    "createdAt": _iso(token.created_at) if token else None,
                    "fineGrained": {"global": scopes, "scoped": []},
                },
            },
        }
    )


@bp.get(MODEL + "/auth-check")
def auth_check(org: str, name: str) -> Response:
    access, _ = _open(org, name, "main")
    return _with_notice(jsonify({"repo_id": access.model.repo_id, "access": "weights"}), access)


# -- resolve -------------------------------------------------------------------------------------
@bp.route("/<org>/<name>/resolve/<path:rest>", methods=["GET", "HEAD"])
def resolve(org: str, name: str, rest: str) -> Response:
    """HEAD answers with the file's metadata; GET is charged and redirected to a signed URL.

    HEAD is never redirected: every client line takes a redirect's target from HEAD and GETs it
    directly, which would bypass the GET here (and with it the download limits). Both describe
    the object a download serves (a fingerprinting tier's staged copy) and both answer 503
    while that copy is being provisioned.
    """
    rev, path = _rev_and_path(org, name, "resolve", rest)
    access, revision = _open(org, name, rev, writes=request.method == "GET")
    try:
        file = airlock().downloads.find_file(db(), access, revision, path)
    except EntryNotFound as exc:
        missing = render(exc)
        missing.headers["X-Repo-Commit"] = revision.commit_id
        return missing
    try:
        if request.method == "HEAD":
            return _with_notice(_metadata(access, revision, file), access)
        return _with_notice(_redirect(access, revision, file), access)
    except ProvisioningPending as exc:
        # hub 1.x/2.x print X-HF-Warning at once, before retrying the 503 for half a minute
        pending = render(exc)
        notice = pending.headers["X-Error-Message"]  # already made header-safe
        pending.headers["X-HF-Warning"] = f"airlock-provisioning; {notice}"
        return pending


def _metadata(access: WeightsAccess, revision: RevisionRow, file: FileRow) -> Response:
    """HEAD: what a download of `file` would serve, with no ticket and no charge."""
    served = airlock().downloads.served(db(), access=access, revision=revision, file=file)
    response = Response(status=200, mimetype="application/octet-stream")
    response.headers.update(_file_headers(served, revision.commit_id))
    response.headers["Accept-Ranges"] = "bytes"
    response.content_length = served.size
    return response


def _redirect(access: WeightsAccess, revision: RevisionRow, file: FileRow) -> Response:
    """GET: a charged, audited ticket, and a 302 to its signed URL."""
    ticket = airlock().downloads.issue_ticket(
        db(),
        principal=principal(),
        access=access,
        revision=revision,
        file=file,
        method="GET",
        base_url=base_url(),
    )
    response = Response(status=302, mimetype="text/plain")
    response.headers["Location"] = ticket.url
    response.headers.update(_file_headers(ticket.served, ticket.commit))
    response.headers.update(ratelimit_headers(ticket.limit))
    return response


# -- helpers -------------------------------------------------------------------------------------
class Listing:
    """The files of a revision a caller may see, and the directories they imply."""

    def __init__(self, revision: RevisionRow, files: Iterable[FileRow]) -> None:
        self.commit = revision.commit_id
        self.files = {f.path: f for f in files}
        self.dirs: dict[str, list[FileRow]] = {}
        for file in self.files.values():
            parts = file.path.split("/")
            for depth in range(1, len(parts)):
                self.dirs.setdefault("/".join(parts[:depth]), []).append(file)

    def entry(self, path: str) -> dict[str, Any] | None:
        """The tree entry of a visible file or directory, or None."""
        if path in self.files:
            return tree_file(self.files[path])
        if path in self.dirs:
            return self._dir(path)
        return None

    def children(self, path: str, *, recursive: bool) -> list[dict[str, Any]]:
        """Entries under `path` ("" for the root), sorted by path; EntryNotFound if none."""
        if path and path not in self.dirs:
            raise EntryNotFound(f"{path[:200]} is not a directory in this revision")
        prefix = f"{path}/" if path else ""
        names = [p for p in (*self.dirs, *self.files) if p.startswith(prefix)]
        if not recursive:
            names = [p for p in names if "/" not in p[len(prefix) :]]
        return [self.entry(p) for p in sorted(names)]  # type: ignore[misc]

    def _dir(self, path: str) -> dict[str, Any]:
        content = "\n".join(f"{f.git_oid} {f.path}" for f in sorted(self.dirs[path], key=_path))
        oid = hashlib.sha1(  # a stable stand-in for a git tree id, not a security digest
            f"airlock-tree-v1\0{self.commit}\0{path}\0{content}".encode(), usedforsecurity=False
        ).hexdigest()
        return {"type": "directory", "oid": oid, "size": 0, "path": path}


def tree_file(file: FileRow) -> dict[str, Any]:
    """A file as the Hub's tree and paths-info list it (always an LFS file, never Xet)."""
    return {
        "type": "file",
        "oid": file.git_oid,
        "size": file.size,
        "path": file.path,
        "lfs": {"oid": file.sha256, "size": file.size, "pointerSize": lfs_pointer_size(file.size)},
    }


def lfs_pointer_size(size: int) -> int:
    """Bytes of the git-lfs pointer file standing for a blob of `size` bytes."""
    return len(f"version https://git-lfs.github.com/spec/v1\noid sha256:{'0' * 64}\nsize {size}\n")


def _open(
    org: str, name: str, rev: str, *, writes: bool = False
) -> tuple[WeightsAccess, RevisionRow]:
    """Authorize the caller's weights access; reads take no SQLite write lock (an audited
    refusal ends that transaction and writes in a new one), except for a request that writes
    and has no group commit to write through (gateway/db/group_commit.py)."""
    session = db()
    if not writes:
        begin_reads(session)  # before authentication's first read (PostgreSQL: no transaction)
    elif airlock().downloads.group is not None:
        begin_read_only(session)  # the group commit writes; these reads take no write lock
    return airlock().downloads.open_revision(
        session,
        principal=principal(),
        repo_id=f"{org}/{name}",
        rev=rev,
        request_country=request_country(),
        base_url=base_url(),
    )


def _rev_and_path(org: str, name: str, keyword: str, rest: str) -> tuple[str, str]:
    """Split `{rev}/{path}` using the raw URI: werkzeug has already decoded `%2F` in `rest`."""
    raw = request.environ.get("RAW_URI") or request.environ.get("REQUEST_URI") or ""
    segments = raw.split("?", 1)[0].split("/")
    for i in range(2, len(segments) - 1):
        if (unquote(segments[i]), unquote(segments[i - 2]), unquote(segments[i - 1])) == (
            keyword,
            org,
            name,
        ):
            return unquote(segments[i + 1]), unquote("/".join(segments[i + 2 :]))
    rev, _, path = rest.partition("/")
    return rev, path


def _sibling(file: FileRow, blobs: bool) -> dict[str, Any]:
    if not blobs:
        return {"rfilename": file.path}
    return {
        "rfilename": file.path,
        "blobId": file.git_oid,
        "size": file.size,
        "lfs": {
            "sha256": file.sha256,
            "size": file.size,
            "pointerSize": lfs_pointer_size(file.size),
        },
    }


def _file_headers(served: Served, commit: str) -> dict[str, str]:
    etag = f'"{served.sha256}"'
    return {
        "X-Repo-Commit": commit,
        "X-Linked-Etag": etag,
        "X-Linked-Size": str(served.size),
        "ETag": etag,
    }


def _with_notice(response: Response, access: WeightsAccess) -> Response:
    """Warn (once per topic, in hub 1.x/2.x) when the caller's access ends within a week."""
    ends = [g.expires_at for g, _ in access.grants]
    if all(ends) and max(ends) - utcnow() < EXPIRY_NOTICE:  # type: ignore[type-var,operator]
        url = apply_url_for(base_url(), access.model)
        response.headers["X-HF-Warning"] = (
            f"airlock-grant-expiry; Your Airlock access to {access.model.repo_id} ends at "
            f"{max(ends):%Y-%m-%d %H:%M} UTC. Renew it at {url}"  # type: ignore[type-var]
        )
    return response


def _gating(access: WeightsAccess) -> str:
    weights = [t for t in access.policy.tiers if GrantKind.WEIGHTS in t.grants]
    manual = any(t.requires.approval.mode is ApprovalMode.MANUAL for t in weights)
    return "manual" if manual else "auto"


def _flag(name: str) -> bool:
    return request.args.get(name, "").strip().lower() in TRUE


def _limit() -> int:
    value = request.args.get("limit", "")
    return min(PAGE_SIZE, max(1, int(value))) if value.isdigit() else PAGE_SIZE


def _cursor() -> str:
    value = request.args.get("cursor", "")
    if not value:
        return ""
    try:
        padded = value + "=" * (-len(value) % 4)
        return base64.b64decode(padded, altchars=b"-_", validate=True).decode()
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise InvalidInput("invalid pagination cursor") from exc


def _next_url(org: str, name: str, rev: str, path: str, last: dict[str, Any]) -> str:
    cursor = base64.urlsafe_b64encode(last["path"].encode()).decode().rstrip("=")
    params = {k: v for k, v in request.args.items() if k != "cursor"}
    params["cursor"] = cursor
    tail = f"/{quote(path.strip('/'), safe='/')}" if path.strip("/") else ""
    return (
        f"{base_url()}/api/models/{quote(org)}/{quote(name)}/tree/{quote(rev, safe='')}{tail}"
        f"?{urlencode(params)}"
    )


def _iso(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _path(file: FileRow) -> str:
    return file.path
