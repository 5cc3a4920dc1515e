"""The Hub's hot-path reads: prebuilt Core selects of the needed columns, as frozen rows.

An ORM entity select costs 180 to 450 us of CPU here; a Core select of a few columns, built
once at import so SQLAlchemy's compiled cache always hits, costs a fraction of that. Every
statement runs on the request session's connection, inside its transaction: each request still
reads the token, grants, policy, KYC facts and freeze state as they are now.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    ScalarSelect,
    and_,
    bindparam,
    insert,
    or_,
    select,
)

from gateway.db.models import (
    AccessRequest,
    ApiToken,
    Base,
    Grant,
    GrantStatus,
    KycVerification,
    Membership,
    Model,
    Organization,
    PolicyVersion,
    Revision,
    RevisionFile,
    StagedFile,
    User,
)
from gateway.db.prepared import Prepared

_tokens = ApiToken.__table__.c
_users = User.__table__.c
_members = Membership.__table__.c
_models = Model.__table__.c
_orgs = Organization.__table__.c
_policies = PolicyVersion.__table__.c
_revisions = Revision.__table__.c
_files = RevisionFile.__table__.c
_grants = Grant.__table__.c
_requests = AccessRequest.__table__.c
_kyc = KycVerification.__table__.c
_staged = StagedFile.__table__.c
_affiliation = Organization.__table__.alias("affiliation")
_head = Revision.__table__.alias("head")
_newest = KycVerification.__table__.alias("newest").c


# -- rows ----------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class TokenRow:
    """A token looked up by digest, with its user's name and every (org, role) membership."""

    id: int
    user_id: int
    digest: bytes
    scopes: Sequence[str]
    expires_at: datetime
    revoked_at: datetime | None
    username: str
    memberships: tuple[tuple[int, str], ...]


@dataclass(frozen=True, slots=True)
class ModelRow:
    """A model with its organization, policy version (id and content hash) and head revision."""

    id: int
    org_id: int
    org_slug: str
    name: str
    created_at: datetime
    frozen_at: datetime | None
    policy_version_id: int | None
    policy_sha256: str | None
    head: RevisionRow | None

    @property
    def repo_id(self) -> str:
        """The `org/name` identifier clients use."""
        return f"{self.org_slug}/{self.name}"


@dataclass(frozen=True, slots=True)
class RevisionRow:
    """A committed revision: immutable once it exists."""

    id: int
    commit_id: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class FileRow:
    """One file of a revision."""

    id: int
    path: str
    size: int
    sha256: str
    git_oid: str
    storage_key: str


@dataclass(frozen=True, slots=True)
class GrantRow:
    """An active grant with the form and agreement of the request it came from (if any)."""

    id: int
    user_id: int
    tier: str
    expires_at: datetime | None
    request_id: int | None
    form: Mapping[str, object] | None
    agreement_id: str | None
    agreement_version: int | None


@dataclass(frozen=True, slots=True)
class KycRow:
    """The facts of one approved identity verification."""

    level: str
    expires_at: datetime | None
    sanctions_hit: bool | None
    nationality: str | None
    residence_country: str | None
    residence_subdivision: str | None
    document_country: str | None
    verified_at: datetime | None


@dataclass(frozen=True, slots=True)
class UserFacts:
    """What a policy decision knows about a user: email, affiliation and current KYC."""

    user_id: int
    email: str
    affiliation_slug: str | None
    affiliation_hq_country: str | None
    kyc: KycRow | None


# -- statements (built once: the compiled cache keys on their structure) -------------------------
TOKEN_BY_DIGEST = (
    select(
        _tokens.id,
        _tokens.user_id,
        _tokens.digest,
        _tokens.scopes,
        _tokens.expires_at,
        _tokens.revoked_at,
        _users.username,
        _members.org_id,
        _members.role,
    )
    .select_from(
        ApiToken.__table__.join(User.__table__, _users.id == _tokens.user_id).outerjoin(
            Membership.__table__, _members.user_id == _tokens.user_id
        )
    )
    .where(_tokens.digest == bindparam("digest"))
)

POLICY_SOURCE = select(_policies.source, _policies.content_sha256).where(
    _policies.id == bindparam("id")
)

REVISION_BY_COMMIT = select(_revisions.id, _revisions.commit_id, _revisions.created_at).where(
    _revisions.model_id == bindparam("model_id"), _revisions.commit_id == bindparam("commit")
)

_FILE_COLUMNS = (
    _files.id,
    _files.path,
    _files.size,
    _files.sha256,
    _files.git_oid,
    _files.storage_key,
)

FILES_OF_REVISION = (
    select(*_FILE_COLUMNS)
    .where(_files.revision_id == bindparam("revision_id"))
    .order_by(_files.path)
)

FILE_WITH_COMMIT = (
    select(
        *_FILE_COLUMNS,
        _revisions.commit_id,
    )
    .select_from(RevisionFile.__table__.join(Revision.__table__))
    .where(_files.id == bindparam("file_id"))
)

# A grant's staged copy of a file, with the file and its commit: what a staged /blobs URL serves.
STAGED_WITH_COMMIT = (
    select(
        *_FILE_COLUMNS,
        _revisions.commit_id,
        _staged.storage_key,
        _staged.sha256,
        _staged.size,
    )
    .select_from(
        StagedFile.__table__.join(RevisionFile.__table__, _files.id == _staged.file_id).join(
            Revision.__table__, _revisions.id == _files.revision_id
        )
    )
    .where(_staged.grant_id == bindparam("grant_id"), _staged.file_id == bindparam("file_id"))
)


def current_kyc_id(
    org_id: ColumnElement[int], user_id: ColumnElement[int] | None = None
) -> ScalarSelect[int]:
    """The id of the newest approved verification of `user_id` (default :user_id) valid for
    decisions of `org_id`: the one rule every read of a user's current KYC uses."""
    return (
        select(_newest.id)
        .where(
            _newest.user_id == (bindparam("user_id") if user_id is None else user_id),
            _newest.status == "approved",
            or_(_newest.issuer_org_id.is_(None), _newest.issuer_org_id == org_id),
        )
        .order_by(_newest.verified_at.desc(), _newest.id.desc())
        .limit(1)
        .scalar_subquery()
    )


CURRENT_KYC_ID = current_kyc_id(bindparam("org_id"))
# The current verification ids of every user in :user_ids (one correlated subquery per user).
CURRENT_KYC_IDS = select(current_kyc_id(bindparam("org_id"), _users.id)).where(
    _users.id.in_(bindparam("user_ids", expanding=True))
)

_MODEL_COLUMNS = (
    _models.id,
    _models.org_id,
    _orgs.slug,
    _models.name,
    _models.created_at,
    _models.frozen_at,
    _models.policy_version_id,
    _policies.content_sha256,
    _head.c.id,
    _head.c.commit_id,
    _head.c.created_at,
    _head.c.vetting_status,
    _head.c.vetting_override_at,
)
_GRANT_COLUMNS = (
    _grants.id,
    _grants.user_id,
    _grants.tier,
    _grants.expires_at,
    _grants.request_id,
    _requests.form,
    _requests.agreement_id,
    _requests.agreement_version,
)
_FACT_COLUMNS = (
    _users.id,
    _users.email,
    _affiliation.c.slug,
    _affiliation.c.hq_country,
    _kyc.id,
    _kyc.level,
    _kyc.expires_at,
    _kyc.sanctions_hit,
    _kyc.nationality,
    _kyc.residence_country,
    _kyc.residence_subdivision,
    _kyc.document_country,
    _kyc.verified_at,
)
_UPSTREAM_COLUMNS = (
    _models.upstream_url,
    _models.upstream_key_ref,
    _models.upstream_model,
    _models.prompt_digests,
)
_G = len(_MODEL_COLUMNS)
_F = _G + len(_GRANT_COLUMNS)
_U = _F + len(_FACT_COLUMNS)

_ACCESS_FROM = (
    Model.__table__.join(Organization.__table__, _orgs.id == _models.org_id)
    .outerjoin(PolicyVersion.__table__, _policies.id == _models.policy_version_id)
    .outerjoin(_head, _head.c.id == _models.head_revision_id)
    .outerjoin(
        Grant.__table__,
        and_(
            _grants.model_id == _models.id,
            _grants.user_id == bindparam("user_id"),
            _grants.status == str(GrantStatus.ACTIVE),
        ),
    )
    .outerjoin(AccessRequest.__table__, _requests.id == _grants.request_id)
    .outerjoin(User.__table__, _users.id == bindparam("user_id"))
    .outerjoin(_affiliation, _affiliation.c.id == _users.affiliation_org_id)
    .outerjoin(KycVerification.__table__, _kyc.id == current_kyc_id(_models.org_id))
)
_ACCESS_COLUMNS = (*_MODEL_COLUMNS, *_GRANT_COLUMNS, *_FACT_COLUMNS, *_UPSTREAM_COLUMNS)

# One row per active grant of :user_id (one row with no grant if none): the model with its
# organization, policy version and head revision (with its vetting state); the grant with its
# request's form and agreement; the user's email, affiliation and current KYC for the model's
# organization; the model's inference upstream (so /v1 needs no second read).
MODEL_ACCESS = (
    select(*_ACCESS_COLUMNS)
    .select_from(_ACCESS_FROM)
    .where(_orgs.slug == bindparam("org"), _models.name == bindparam("name"))
    .order_by(_grants.id)
)
# The same for every model :user_id holds an active grant of, by organization slug and name.
GRANTED_ACCESS = (
    select(*_ACCESS_COLUMNS)
    .select_from(_ACCESS_FROM)
    .where(
        _models.id.in_(
            select(_grants.model_id).where(
                _grants.user_id == bindparam("user_id"),
                _grants.status == str(GrantStatus.ACTIVE),
            )
        )
    )
    .order_by(_orgs.slug, _models.name, _grants.id)
)

_tickets = Base.metadata.tables["download_tickets"]
INSERT_TICKET = (
    insert(_tickets)
    .values(
        {
            k: bindparam(k)
            for k in ("grant_id", "file_id", "method", "issued_at", "expires_at", "size")
        }
    )
    .returning(_tickets.c.id)
)


# -- loaders -------------------------------------------------------------------------------------
# -- the two reads every Hub request makes run on the DBAPI cursor (gateway/db/prepared.py) ----
_TOKEN_BY_DIGEST = Prepared(TOKEN_BY_DIGEST)
_MODEL_ACCESS = Prepared(MODEL_ACCESS)
_GRANTED_ACCESS = Prepared(GRANTED_ACCESS)
_INSERT_TICKET = Prepared(INSERT_TICKET)


def insert_ticket(conn: Connection, values: Mapping[str, object]) -> int:
    """Write a download ticket (grant_id, file_id, method, issued_at, expires_at, size); its id."""
    rows = _INSERT_TICKET.all(conn, values)
    ticket_id: int = rows[0][0]
    return ticket_id


def load_token(conn: Connection, digest: bytes) -> TokenRow | None:
    """The token with this digest, its user's name and memberships, or None."""
    rows = _TOKEN_BY_DIGEST.all(conn, {"digest": digest})
    if not rows:
        return None
    first = rows[0]
    members = tuple((r[7], r[8]) for r in rows if r[7] is not None)
    return TokenRow(first[0], first[1], first[2], first[3], first[4], first[5], first[6], members)


@dataclass(frozen=True, slots=True)
class UpstreamRow:
    """A model's inference upstream as configured: base URL, credential's variable name, the
    name it serves the model under, and whether prompts are digested."""

    url: str | None
    key_ref: str | None
    model: str | None
    digests: bool


@dataclass(frozen=True, slots=True)
class ModelAccess:
    """A model, the caller's active grants of it (expiry unchecked) and the caller's facts."""

    model: ModelRow
    grants: tuple[GrantRow, ...]
    facts: UserFacts | None
    head_vetting: tuple[str, bool] | None  # the head's (vetting status, publisher override)
    upstream: UpstreamRow


def load_access(
    conn: Connection, org_slug: str, name: str, user_id: int | None
) -> ModelAccess | None:
    """The model `org_slug/name` with what deciding `user_id`'s access needs, or None."""
    rows = _MODEL_ACCESS.all(conn, {"org": org_slug, "name": name, "user_id": user_id})
    return _access_of(rows) if rows else None


def load_granted_access(conn: Connection, user_id: int) -> list[ModelAccess]:
    """What `load_access` reads, in one statement, for every model `user_id` holds an active
    grant of, by organization slug and model name."""
    by_model: dict[int, list[tuple[object, ...]]] = {}
    for row in _GRANTED_ACCESS.all(conn, {"user_id": user_id}):
        by_model.setdefault(row[0], []).append(row)  # dicts keep the statement's order
    return [_access_of(rows) for rows in by_model.values()]


def _access_of(rows: Sequence[tuple[Any, ...]]) -> ModelAccess:
    """One model's rows of MODEL_ACCESS or GRANTED_ACCESS as a ModelAccess."""
    first = rows[0]
    head, vetting = None, None
    if first[8] is not None:
        head = RevisionRow(first[8], first[9], first[10])
        vetting = (first[11], first[12] is not None)
    model = ModelRow(
        first[0], first[1], first[2], first[3], first[4], first[5], first[6], first[7], head
    )
    grants = tuple(GrantRow(*row[_G:_F]) for row in rows if row[_G] is not None)
    facts = None
    if first[_F] is not None:
        kyc = KycRow(*first[_F + 5 : _F + 13]) if first[_F + 4] is not None else None
        facts = UserFacts(first[_F], first[_F + 1], first[_F + 2], first[_F + 3], kyc)
    upstream = UpstreamRow(first[_U], first[_U + 1], first[_U + 2], bool(first[_U + 3]))
    return ModelAccess(model, grants, facts, vetting, upstream)


def load_policy_source(conn: Connection, version_id: int) -> tuple[str, str] | None:
    """A policy version's source and content hash."""
    row = conn.execute(POLICY_SOURCE, {"id": version_id}).first()
    return (row[0], row[1]) if row is not None else None


def load_revision(conn: Connection, model_id: int, commit_id: str) -> RevisionRow | None:
    """A revision of `model_id` by its commit id, or None."""
    row = conn.execute(REVISION_BY_COMMIT, {"model_id": model_id, "commit": commit_id}).first()
    return RevisionRow(row[0], row[1], row[2]) if row is not None else None


def load_files(conn: Connection, revision_id: int) -> tuple[FileRow, ...]:
    """Every file of a revision, sorted by path."""
    return tuple(
        FileRow(*row) for row in conn.execute(FILES_OF_REVISION, {"revision_id": revision_id})
    )


def load_file_with_commit(conn: Connection, file_id: int) -> tuple[FileRow, str] | None:
    """A file by id and the commit id of its revision, or None."""
    row = conn.execute(FILE_WITH_COMMIT, {"file_id": file_id}).first()
    return (FileRow(*row[:6]), row[6]) if row is not None else None


@dataclass(frozen=True, slots=True)
class StagedBlob:
    """A grant's staged copy of a file (its own key, sha256 and size), the file and its commit."""

    file: FileRow
    commit: str
    key: str
    sha256: str
    size: int


def load_copies(conn: Connection, wanted: Sequence[tuple[int, int]]) -> dict[int, tuple[str, int]]:
    """The staged copies of (grant id, file id) pairs that exist, by file id: (sha256, size)."""
    grants = {g for g, _ in wanted}
    rows = conn.execute(
        select(_staged.grant_id, _staged.file_id, _staged.sha256, _staged.size).where(
            _staged.grant_id.in_(grants), _staged.file_id.in_([f for _, f in wanted])
        )
    )
    pairs = set(wanted)
    return {r.file_id: (r.sha256, r.size) for r in rows if (r.grant_id, r.file_id) in pairs}


def load_staged_blob(conn: Connection, grant_id: int, file_id: int) -> StagedBlob | None:
    """The grant's recorded copy of `file_id`, or None (never staged, or swept)."""
    row = conn.execute(STAGED_WITH_COMMIT, {"grant_id": grant_id, "file_id": file_id}).first()
    if row is None:
        return None
    return StagedBlob(FileRow(*row[:6]), row[6], row[7], row[8], row[9])


class FileIndex:
    """Per-process cache of committed revisions' files (revisions never change once committed).

    Keyed by revision id *and* commit id: a row id alone could be reused after a rollback.
    Bounded by the total number of files held, least recently used revision evicted first.
    """

    def __init__(self, max_files: int = 200_000) -> None:
        self.max_files = max_files
        self._held = 0
        self._revisions: OrderedDict[tuple[int, str], RevisionFiles] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, conn: Connection, revision: RevisionRow) -> RevisionFiles:
        """The files of `revision`, read once per process."""
        key = (revision.id, revision.commit_id)
        with self._lock:
            found = self._revisions.get(key)
            if found is not None:
                self._revisions.move_to_end(key)
                return found
        found = RevisionFiles(load_files(conn, revision.id))
        with self._lock:
            if key not in self._revisions:
                self._revisions[key] = found
                self._held += len(found.files)
            while self._held > self.max_files and len(self._revisions) > 1:
                _, evicted = self._revisions.popitem(last=False)
                self._held -= len(evicted.files)
        return found


class RevisionFiles:
    """A revision's files in path order, and by path."""

    __slots__ = ("_by_path", "files")

    def __init__(self, files: tuple[FileRow, ...]) -> None:
        self.files = files
        self._by_path = {f.path: f for f in files}

    def get(self, path: str) -> FileRow | None:
        """The file at `path`, or None."""
        return self._by_path.get(path)
