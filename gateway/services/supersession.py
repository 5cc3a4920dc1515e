"""Renewal supersession: a renewal's new grant ends the holder's older grant of the same tier.

Both the access service (a grant ready at once) and provisioning (a fingerprinting grant,
ready once its copies are staged) end the old grant here, in the transaction in which the new
grant becomes usable, so a renewing researcher is never cut off and two never count at once.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from gateway.audit import AuditAction, AuditRecorder
from gateway.db.models import Grant, GrantStatus


def renewed_grants(session: Session, new: Grant, at: datetime) -> list[Grant]:
    """The holder's older grants of `new`'s tier still live at `at`, locked (FOR UPDATE)."""
    return list(
        session.scalars(
            select(Grant)
            .where(
                Grant.user_id == new.user_id,
                Grant.model_id == new.model_id,
                Grant.tier == new.tier,
                Grant.status == GrantStatus.ACTIVE,
                Grant.id < new.id,
                or_(Grant.expires_at.is_(None), Grant.expires_at > at),
            )
            .order_by(Grant.id)
            .with_for_update()
            .execution_options(populate_existing=True)
        )
    )


def supersede(
    session: Session, audit: AuditRecorder, new: Grant, *, actor_id: int | None, at: datetime
) -> list[int]:
    """End the grants `new` renews (expired, reason superseded) and audit each; their ids."""
    old = renewed_grants(session, new, at)
    for grant in old:
        grant.status, grant.ended_at, grant.ended_by_id, grant.end_reason = (
            str(GrantStatus.EXPIRED),
            at,
            actor_id,
            f"superseded by grant {new.id} (renewal)",
        )
        audit.record(
            session,
            AuditAction.GRANT_EXPIRE,
            actor_id=actor_id,
            org_id=new.model.org_id,
            subject_user_id=grant.user_id,
            model_id=grant.model_id,
            effect="deny",
            payload={
                "grant_id": grant.id,
                "tier": grant.tier,
                "expires_at": grant.expires_at,
                "reason": "superseded",
                "superseded_by": new.id,
            },
        )
    return [g.id for g in old]
