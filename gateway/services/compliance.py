"""Compliance reports over the caller's organizations: who holds access and why, and denials."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import ColumnElement, and_, func, or_, select
from sqlalchemy.orm import Session, aliased

from gateway.audit import AuditAction
from gateway.audit.facets import FacetName
from gateway.db.models import (
    AccessRequest,
    AuditEvent,
    AuditFacet,
    Grant,
    GrantStatus,
    KycVerification,
    Model,
    Organization,
    PolicyVersion,
    User,
    utcnow,
)
from gateway.errors import InvalidInput
from gateway.services.audit_log import readable_orgs, visible_to
from gateway.services.principal import Principal
from gateway.services.rows import current_kyc_id

# The events that are decisions about someone's access; their effect deny or review counts.
DENIAL_ACTIONS = frozenset(
    {
        AuditAction.DOWNLOAD_DENY,
        AuditAction.GRANT_REVOKE,
        AuditAction.GRANT_SUSPEND,
        AuditAction.INFERENCE_DENY,
        AuditAction.REQUEST_CREATE,
        AuditAction.REQUEST_DENY,
        AuditAction.REQUEST_REJECT,
        AuditAction.REQUEST_REVIEW,
    }
)
COUNTED_EFFECTS = ("deny", "review")
DEFAULT_PERIOD = timedelta(days=30)
MAX_BUCKETS = 1000


class Bucket(StrEnum):
    """Time buckets of a denial series (weeks start on Monday, UTC)."""

    DAY = "day"
    WEEK = "week"


@dataclass(frozen=True)
class AccessRow:
    """One active grant with its holder, policy version, current KYC and the decision's reasons."""

    grant_id: int
    user_id: int
    username: str
    email: str
    affiliation: str | None
    organization: str
    repo_id: str
    tier: str
    granted_at: datetime
    expires_at: datetime | None
    policy_version: int
    kyc_level: str | None
    nationality: str | None
    residence_country: str | None
    document_country: str | None
    decision_effect: str | None
    reasons: list[dict[str, Any]]


@dataclass
class Counts:
    """Deny and review counts of one reason code, country or time bucket."""

    deny: int = 0
    review: int = 0

    def add(self, effect: str, count: int) -> None:
        """Count `count` events of `effect`."""
        if effect == "deny":
            self.deny += count
        elif effect == "review":
            self.review += count


@dataclass
class DenialStats:
    """Deny and review decisions of a period: totals, by reason code, by country, by bucket."""

    since: datetime
    until: datetime
    bucket: Bucket
    totals: Counts = field(default_factory=Counts)
    by_reason: dict[str, Counts] = field(default_factory=dict)
    by_country: dict[str | None, Counts] = field(default_factory=dict)
    series: dict[date, Counts] = field(default_factory=dict)


class ComplianceService:
    """Reports for compliance officers, confined to the organizations they hold the role in."""

    def access_report(self, session: Session, *, principal: Principal) -> list[AccessRow]:
        """Every grant in force on the caller's organizations' models, by model then grant."""
        orgs = readable_orgs(principal)
        now = utcnow()
        query = (
            _ACCESS_REPORT.where(
                Model.org_id.in_(orgs),
                Grant.status == str(GrantStatus.ACTIVE),
                or_(Grant.expires_at.is_(None), Grant.expires_at > now),
            )
            .order_by(Organization.slug, Model.name, Grant.id)
            .execution_options(yield_per=500)
        )
        return [_access_row(row) for row in session.execute(query)]

    def denials(
        self,
        session: Session,
        *,
        principal: Principal,
        since: datetime | None,
        until: datetime | None,
        bucket: Bucket,
    ) -> DenialStats:
        """Counts of deny and review decisions in [since, until) by reason, country and bucket."""
        visible = visible_to(principal)
        end = until or utcnow()
        start = since or end - DEFAULT_PERIOD
        _check_period(start, end, bucket)
        stats = DenialStats(start, end, bucket)
        scope = and_(
            visible,
            AuditEvent.action.in_([str(a) for a in DENIAL_ACTIONS]),
            AuditEvent.effect.in_(COUNTED_EFFECTS),
            AuditEvent.occurred_at >= start,
            AuditEvent.occurred_at < end,
        )
        for code, effect, count in session.execute(_by_facet(scope, FacetName.OBJECTION)):
            stats.by_reason.setdefault(code, Counts()).add(effect, count)
        for country, effect, count in session.execute(_by_country(scope)):
            stats.by_country.setdefault(country, Counts()).add(effect, count)
        stats.series = {day: Counts() for day in _buckets(start, end, bucket)}
        label = _bucket_label(session.get_bind().dialect.name, bucket)
        for day, effect, count in session.execute(_by_bucket(scope, label)):
            stats.series.setdefault(date.fromisoformat(day), Counts()).add(effect, count)
            stats.totals.add(effect, count)  # every counted event falls in one bucket
        return stats


_affiliation = aliased(Organization)
# The holder's current verification for the model's organization, as the policy engine reads it.
_HOLDER_KYC = current_kyc_id(Model.org_id.expression, Grant.user_id.expression)
_ACCESS_REPORT = (
    select(
        Grant.id,
        Grant.user_id,
        User.username,
        User.email,
        _affiliation.slug,
        Organization.slug,
        Model.name,
        Grant.tier,
        Grant.granted_at,
        Grant.expires_at,
        PolicyVersion.version,
        KycVerification.level,
        KycVerification.nationality,
        KycVerification.residence_country,
        KycVerification.document_country,
        AccessRequest.effect,
        AccessRequest.reasons,
    )
    .select_from(Grant)
    .join(User, User.id == Grant.user_id)
    .join(Model, Model.id == Grant.model_id)
    .join(Organization, Organization.id == Model.org_id)
    .join(PolicyVersion, PolicyVersion.id == Grant.policy_version_id)
    .outerjoin(_affiliation, _affiliation.id == User.affiliation_org_id)
    .outerjoin(AccessRequest, AccessRequest.id == Grant.request_id)
    .outerjoin(KycVerification, KycVerification.id == _HOLDER_KYC)
)


def _access_row(row: Any) -> AccessRow:
    (grant_id, user_id, username, email, affiliation, org, name, tier, granted, expires) = row[:10]
    (version, level, nationality, residence, document, effect, reasons) = row[10:]
    return AccessRow(
        grant_id,
        user_id,
        username,
        email,
        affiliation,
        org,
        f"{org}/{name}",
        tier,
        granted,
        expires,
        version,
        level,
        nationality,
        residence,
        document,
        effect,
        list(reasons or []),
    )


def _check_period(start: datetime, end: datetime, bucket: Bucket) -> None:
    if start >= end:
        raise InvalidInput(
            "since must be earlier than until",
            errors=[{"path": "until", "message": "must be later than since"}],
        )
    width = timedelta(days=1 if bucket is Bucket.DAY else 7)
    if (end - start) / width > MAX_BUCKETS:
        raise InvalidInput(
            f"the period spans more than {MAX_BUCKETS} {bucket}s",
            errors=[{"path": "since", "message": f"at most {MAX_BUCKETS} {bucket}s"}],
        )


def _by_facet(scope: ColumnElement[bool], name: FacetName) -> Any:
    return (
        select(AuditFacet.value, AuditEvent.effect, func.count())
        .select_from(AuditEvent)
        .join(AuditFacet, and_(AuditFacet.seq == AuditEvent.seq, AuditFacet.name == str(name)))
        .where(scope)
        .group_by(AuditFacet.value, AuditEvent.effect)
    )


def _by_country(scope: ColumnElement[bool]) -> Any:
    """Counts by recorded country; an event with none counts under None, one with two twice."""
    country = and_(AuditFacet.seq == AuditEvent.seq, AuditFacet.name == str(FacetName.COUNTRY))
    return (
        select(AuditFacet.value, AuditEvent.effect, func.count())
        .select_from(AuditEvent)
        .outerjoin(AuditFacet, country)
        .where(scope)
        .group_by(AuditFacet.value, AuditEvent.effect)
    )


def _bucket_label(dialect: str, bucket: Bucket) -> ColumnElement[str]:
    """The UTC date starting an event's bucket, as YYYY-MM-DD text, on either database."""
    moment = AuditEvent.occurred_at
    if dialect == "postgresql":
        start = func.date_trunc(str(bucket), func.timezone("UTC", moment))
        return func.to_char(start, "YYYY-MM-DD")
    if bucket is Bucket.DAY:  # SQLite keeps UTC timestamps as ISO text
        return func.date(moment)
    return func.date(moment, "weekday 0", "-6 days")  # the Monday on or before


def _by_bucket(scope: ColumnElement[bool], label: ColumnElement[str]) -> Any:
    return (
        select(label, AuditEvent.effect, func.count())
        .where(scope)
        .group_by(label, AuditEvent.effect)
        .order_by(label)
    )


def _buckets(start: datetime, end: datetime, bucket: Bucket) -> list[date]:
    """Every bucket the period touches, so a chart's series has no holes."""
    day = start.astimezone(UTC).date()
    step = timedelta(days=1)
    if bucket is Bucket.WEEK:
        day -= timedelta(days=day.weekday())
        step = timedelta(days=7)
    last = (end - timedelta(microseconds=1)).astimezone(UTC).date()
    days = []
    while day <= last:
        days.append(day)
        day += step
    return days
