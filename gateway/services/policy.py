"""Release policies: validate, version and look up the policy in force for a model."""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from gateway.audit import AuditAction, AuditRecorder
from gateway.auth.tokens import Scope
from gateway.db.models import Model, PolicyVersion
from gateway.errors import Conflict, InvalidInput, NotFound, PolicyInvalid
from gateway.services.principal import Principal
from gateway.services.publishing import PublishingService
from gateway.services.rows import ModelRow, load_policy_source
from gateway.tasks import TaskRunner, enqueue_after_commit
from gateway.tasks.catalog import REEVALUATE_MODEL_TASK
from policies import PackRegistry, PolicyError, ReleasePolicy, parse_policy

MAX_POLICY_BYTES = 256 * 1024
log = logging.getLogger(__name__)


class PolicyService:
    """Applies release policies (every version kept, content-hashed) and caches parsed ones."""

    def __init__(
        self,
        *,
        audit: AuditRecorder,
        packs: PackRegistry,
        publishing: PublishingService,
        runner: TaskRunner | None = None,
    ) -> None:
        self.audit = audit
        self.packs = packs
        self.publishing = publishing
        self.runner = runner
        self._parsed: dict[str, ReleasePolicy] = {}
        self._lock = threading.Lock()

    def validate(self, source: str) -> ReleasePolicy:
        """Parse and validate a policy document, or raise PolicyInvalid with every issue."""
        if len(source.encode("utf-8", "replace")) > MAX_POLICY_BYTES:
            raise InvalidInput(f"a policy document may not exceed {MAX_POLICY_BYTES} bytes")
        try:
            return parse_policy(source, packs=self.packs)
        except PolicyError as exc:
            raise PolicyInvalid(
                f"the release policy has {len(exc.issues)} problem(s)",
                errors=[{"path": i.path, "line": i.line, "message": i.message} for i in exc.issues],
            ) from exc
        except (ValueError, RecursionError) as exc:
            # The parser's contract is PolicyError; anything else is its bug, but the input is
            # still the publisher's to fix, so answer 422 rather than 500.
            log.warning("policy parser failed unexpectedly: %s", type(exc).__name__)
            raise PolicyInvalid(
                "the release policy could not be parsed",
                errors=[{"path": "", "line": None, "message": "the document could not be parsed"}],
            ) from exc

    def authorize_document(
        self, session: Session, *, principal: Principal, source: str
    ) -> tuple[ReleasePolicy, Model, int]:
        """Validate a policy document, find the model it names and check the principal may
        write its policy; returns (policy, model, acting user id)."""
        policy = self.validate(source)
        try:
            model = self.publishing.get_model(session, policy.model)
        except NotFound as exc:
            raise InvalidInput(
                f"the policy names model '{policy.model}', which does not exist"
            ) from exc
        return policy, model, principal.require_org_scope(model.org_id, Scope.POLICIES_WRITE)

    def apply(
        self, session: Session, *, principal: Principal, source: str, comment: str = ""
    ) -> tuple[PolicyVersion, bool]:
        """Validate and store a new version; returns (version, created); same content: no-op."""
        policy, model, actor = self.authorize_document(session, principal=principal, source=source)
        digest = hashlib.sha256(source.encode("utf-8")).hexdigest()
        current = model.policy_version
        if current is not None and current.content_sha256 == digest:
            return current, False
        number = (
            session.scalar(
                select(func.max(PolicyVersion.version)).where(PolicyVersion.model_id == model.id)
            )
            or 0
        ) + 1
        version = PolicyVersion(
            model_id=model.id,
            version=number,
            source=source,
            content_sha256=digest,
            document=policy.to_dict(),
            applied_by_id=actor,
            comment=comment[:2000],
        )
        session.add(version)
        session.flush()
        model.policy_version_id = version.id
        model.policy_version = version
        self.audit.record(
            session,
            AuditAction.POLICY_APPLY,
            actor_id=actor,
            org_id=model.org_id,
            model_id=model.id,
            payload={
                "version": number,
                "sha256": digest,
                "stage": str(policy.stage),
                "tiers": [t.name for t in policy.tiers],
                "previous": _version_of(current),
            },
        )
        if self.runner is not None:  # the live grants and pending requests are judged anew
            enqueue_after_commit(
                session,
                self.runner,
                REEVALUATE_MODEL_TASK,
                {"model_id": model.id, "policy_version_id": version.id},
            )
        session.commit()
        return version, True

    def current(self, model: Model) -> ReleasePolicy | None:
        """The parsed policy in force for `model` (cached by content hash)."""
        version = model.policy_version
        if version is None:
            return None
        return self.parsed(version)

    def require_current(self, model: Model) -> tuple[PolicyVersion, ReleasePolicy]:
        """The policy version and parsed policy in force, or Conflict if none was applied."""
        version = model.policy_version
        if version is None:
            raise Conflict(f"model '{model.repo_id}' has no release policy yet")
        return version, self.parsed(version)

    def parsed(self, version: PolicyVersion) -> ReleasePolicy:
        """Parse a stored version once per process."""
        return self._parsed_source(version.content_sha256, lambda: version.source)

    def current_for(self, session: Session, model: ModelRow) -> ReleasePolicy | None:
        """The parsed policy in force for a model row; its source is read only on a cache miss."""
        version_id, digest = model.policy_version_id, model.policy_sha256
        if version_id is None or digest is None:
            return None
        return self._parsed_source(digest, lambda: _source(session, version_id, digest))

    def _parsed_source(self, digest: str, source: Callable[[], str]) -> ReleasePolicy:
        with self._lock:
            cached = self._parsed.get(digest)
        if cached is None:
            cached = parse_policy(source(), packs=self.packs)
            with self._lock:
                self._parsed[digest] = cached
        return cached

    def history(
        self, session: Session, *, principal: Principal, model: Model
    ) -> list[PolicyVersion]:
        """Every applied version of a model's policy, newest first."""
        principal.require_org_scope(model.org_id, Scope.POLICIES_WRITE)
        return list(
            session.scalars(
                select(PolicyVersion)
                .where(PolicyVersion.model_id == model.id)
                .order_by(PolicyVersion.version.desc())
            )
        )


def _source(session: Session, version_id: int, digest: str) -> str:
    found = load_policy_source(session.connection(), version_id)
    if found is None or found[1] != digest:  # the row changed under us: never parse a mismatch
        raise Conflict("the model's policy version changed while it was being read; retry")
    return found[0]


def _version_of(version: PolicyVersion | None) -> Any:
    return None if version is None else version.version
