"""Inference: who may call which model's upstream, the proxying itself, and its audit.

Requests are authorized for the model the body names (the one dispatched), against the
caller's live inference grants and a fresh evaluation of the model's policy, exactly as
downloads are. Denials are audited at once; a served request is audited once, when it ends
(however it ends), with its usage, latency and upstream status, and never its text.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import select
from sqlalchemy.orm import Session

from gateway.audit import AuditAction, AuditRecorder
from gateway.auth.tokens import Scope
from gateway.db.models import Grant, GrantStatus, Model, Organization, utcnow
from gateway.errors import (
    AccessDenied,
    AuthenticationRequired,
    InvalidInput,
    NotFound,
    UpstreamFailed,
)
from gateway.services.access import AccessService, reasons_json, subject_of, visible_to
from gateway.services.downloads import usable_grants, with_request_facts
from gateway.services.policy import PolicyService
from gateway.services.principal import Principal
from gateway.services.rows import GrantRow, ModelAccess, ModelRow, load_access
from gateway.services.upstream import Upstream, UpstreamReply, UpstreamTarget
from gateway.settings import UPSTREAM_KEY_PREFIX
from policies import GrantKind, Tier

log = logging.getLogger(__name__)

KEY_REF = re.compile(re.escape(UPSTREAM_KEY_PREFIX) + r"[A-Z0-9_]{1,100}")
DONE = b"data: [DONE]\n\n"


@dataclass(frozen=True)
class Admission:
    """An authorized inference request: whose, which model, under which grant and tier."""

    user_id: int
    model: ModelRow
    grant: GrantRow
    tier: Tier
    target: UpstreamTarget
    started: float


class InferenceService:
    """Authorizes OpenAI-style requests and relays them to each model's upstream."""

    def __init__(
        self,
        *,
        audit: AuditRecorder,
        access: AccessService,
        policies: PolicyService,
        upstream: Upstream,
        keys: Mapping[str, str],
        sessions: Callable[[], Session],
    ) -> None:
        self.audit = audit
        self.access = access
        self.policies = policies
        self.upstream = upstream
        self.keys = keys
        self.sessions = sessions

    # -- publisher configuration -------------------------------------------------------------
    def set_upstream(
        self,
        session: Session,
        *,
        principal: Principal,
        model: Model,
        url: str | None,
        key_ref: str | None,
    ) -> Model:
        """Point a model at an OpenAI-compatible base URL, with its credential's variable name."""
        actor = principal.require_org_scope(model.org_id, Scope.MODELS_WRITE)
        model.upstream_url = _checked_url(url) if url else None
        model.upstream_key_ref = _checked_ref(key_ref) if key_ref else None
        self.audit.record(
            session,
            AuditAction.MODEL_UPSTREAM,
            actor_id=actor,
            org_id=model.org_id,
            model_id=model.id,
            payload={"upstream_url": model.upstream_url, "key_ref": model.upstream_key_ref},
        )
        session.commit()
        return model

    # -- authorization -----------------------------------------------------------------------
    def permitted_models(
        self, session: Session, *, principal: Principal, request_country: str | None
    ) -> list[ModelRow]:
        """The models the caller may call now (none without a live inference grant)."""
        user_id = _require_caller(principal)
        names = session.execute(
            select(Organization.slug, Model.name)
            .join(Model, Model.org_id == Organization.id)
            .join(Grant, Grant.model_id == Model.id)
            .where(Grant.user_id == user_id, Grant.status == GrantStatus.ACTIVE)
            .distinct()
            .order_by(Organization.slug, Model.name)
        ).all()
        found = []
        for org_slug, name in names:
            access = load_access(session.connection(), org_slug, name, user_id)
            if access is None:
                continue
            try:
                kept, _ = self._live(session, principal, access, request_country)
            except NotFound:  # an internal model, not a member: it does not exist for them
                continue
            if kept:
                found.append(access.model)
        return found

    def admit(
        self,
        session: Session,
        *,
        principal: Principal,
        repo_id: str,
        request_country: str | None,
    ) -> Admission:
        """Authorize calling `repo_id`: 401, 404 (unknown or invisible), 403 with every reason."""
        user_id = _require_caller(principal)
        org_slug, _, name = repo_id.partition("/")
        found = load_access(session.connection(), org_slug, name, user_id) if name else None
        if found is None:
            raise NotFound(f"The model '{repo_id[:200]}' does not exist")
        kept, reasons = self._live(session, principal, found, request_country)
        if not kept:
            self._deny(session, user_id, found.model, reasons)
        grant, tier = kept[0]
        target = self._target(session, found.model)
        return Admission(user_id, found.model, grant, tier, target, time.monotonic())

    def _live(
        self,
        session: Session,
        principal: Principal,
        found: ModelAccess,
        request_country: str | None,
    ) -> tuple[list[tuple[GrantRow, Tier]], list[dict[str, str]]]:
        """The caller's inference grants that hold under the live policy, and why others fail."""
        model = found.model
        policy = self.policies.current_for(session, model)
        if not visible_to(principal, model.org_id, policy):
            raise NotFound(f"The model '{model.repo_id}' does not exist")
        usable = usable_grants(found.grants, policy, GrantKind.INFERENCE)
        if Scope.MODELS_READ not in principal.scopes:
            return [], [_reason("token_scope_missing", "token.scopes", SCOPE_MESSAGE)]
        if not usable or policy is None or found.facts is None:
            return [], [_reason("no_grant", "grants", NO_GRANT_MESSAGE)]
        subject = subject_of(found.facts, request_country=request_country)
        kept, reasons = [], []
        now = utcnow()
        for grant, tier in usable:
            facts = with_request_facts(subject, grant)
            decision = self.access.decide(policy, tier.name, facts, model, now)
            denying = [r for r in reasons_json(decision) if r["effect"] == "deny"]
            reasons += denying
            if not denying:
                kept.append((grant, tier))
        return kept, reasons

    def _deny(
        self, session: Session, user_id: int, model: ModelRow, reasons: list[dict[str, str]]
    ) -> None:
        session.rollback()  # a fresh transaction for the audit (see DownloadService._deny)
        self.audit.record(
            session,
            AuditAction.INFERENCE_DENY,
            actor_id=user_id,
            org_id=model.org_id,
            subject_user_id=user_id,
            model_id=model.id,
            effect="deny",
            payload={"reasons": reasons},
        )
        session.commit()
        summary = " ".join(r["message"] for r in reasons)
        raise AccessDenied(f"You may not use the model {model.repo_id}. {summary}", reasons=reasons)

    def _target(self, session: Session, model: ModelRow) -> UpstreamTarget:
        """The model's upstream and credential; 503 when either is not configured."""
        url, ref = session.execute(
            select(Model.upstream_url, Model.upstream_key_ref).where(Model.id == model.id)
        ).one()
        if not url:
            raise UpstreamFailed(f"{model.repo_id} has no inference upstream set", status=503)
        if ref and ref not in self.keys:
            log.error("upstream credential %s of %s is not set", ref, model.repo_id)
            raise UpstreamFailed(f"{model.repo_id}'s upstream credential is not set", status=503)
        return UpstreamTarget(url, self.keys.get(ref) if ref else None)

    # -- proxying ----------------------------------------------------------------------------
    def complete(self, admission: Admission, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """A non-streaming call: the upstream's JSON answer, audited with its usage."""
        status: int | str = 200
        used = None
        try:
            answer = self.upstream.send(admission.target, path, body).json()
            usage = answer.get("usage")
            used = usage if isinstance(usage, dict) else None
            return answer
        except UpstreamFailed as exc:
            status = exc.status
            raise
        finally:
            self._finish(admission, path, status, used)

    def open_stream(self, admission: Admission, path: str, body: dict[str, Any]) -> Iterator[bytes]:
        """Start a streaming call (errors before the first byte raise); relay it event by event.

        The upstream is always asked for usage; its usage chunk is forwarded only when the
        client asked for it too.
        """
        options = body.get("stream_options")
        wants_usage = isinstance(options, dict) and options.get("include_usage") is True
        sent = {**body, "stream_options": {**(options or {}), "include_usage": True}}
        try:
            reply = self.upstream.send(admission.target, path, sent)
        except UpstreamFailed as exc:
            self._finish(admission, path, exc.status, None)
            raise
        return self._relay(admission, path, reply, wants_usage)

    def _relay(
        self, admission: Admission, path: str, reply: UpstreamReply, wants_usage: bool
    ) -> Iterator[bytes]:
        status: int | str = 200
        used: dict[str, Any] | None = None
        try:
            for event in reply.events():
                if event == DONE:
                    yield event
                    return
                usage = _usage_of(event)
                if usage is not None:
                    used = usage
                    if not wants_usage:
                        continue
                yield event
            raise UpstreamFailed("the model's upstream ended the stream before it was complete")
        except UpstreamFailed as exc:
            status = exc.status
            yield error_event(exc)
        except GeneratorExit:
            status = "client_disconnected"
            raise
        finally:
            reply.close()
            self._finish(admission, path, status, used)

    def _finish(
        self, admission: Admission, path: str, status: int | str, used: dict[str, Any] | None
    ) -> None:
        """The request's one audit event, in its own transaction (the request's may be gone)."""
        payload = {
            "endpoint": path,
            "grant_id": admission.grant.id,
            "tier": admission.tier.name,
            "upstream_status": status,
            "latency_ms": round((time.monotonic() - admission.started) * 1000),
            "tokens_used": _total(used),
            "usage_reported": used is not None,
        }
        session = self.sessions()
        try:
            self.audit.record(
                session,
                AuditAction.INFERENCE_SERVE,
                actor_id=admission.user_id,
                org_id=admission.model.org_id,
                subject_user_id=admission.user_id,
                model_id=admission.model.id,
                effect="allow",
                payload=payload,
            )
            session.commit()
        except Exception:
            log.exception("could not audit an inference request on %s", admission.model.repo_id)
        finally:
            session.close()


SCOPE_MESSAGE = "The API token lacks the 'models:read' scope inference needs."
NO_GRANT_MESSAGE = "You hold no live grant for a tier of this model that includes inference."


def error_event(exc: UpstreamFailed) -> bytes:
    """An error after streaming began, as the SDK reads it: one `data: {"error": ...}` event."""
    body = {"message": exc.detail, "type": "upstream_error", "param": None, "code": exc.code}
    return b"data: " + json.dumps({"error": body}).encode() + b"\n\n"


def _usage_of(event: bytes) -> dict[str, Any] | None:
    """The usage an event reports (the final usage chunk), else None; cheap for other events."""
    if b'"prompt_tokens"' not in event or not event.startswith(b"data:"):
        return None
    try:
        chunk = json.loads(event[5:])
    except ValueError:
        return None
    usage = chunk.get("usage") if isinstance(chunk, dict) else None
    if isinstance(usage, dict) and chunk.get("choices") == []:
        return usage
    return None


def _total(used: dict[str, Any] | None) -> int | None:
    if used is None:
        return None
    total = used.get("total_tokens")
    return total if isinstance(total, int) else None


def _reason(code: str, rule: str, message: str) -> dict[str, str]:
    return {"code": code, "effect": "deny", "rule": rule, "message": message}


def _require_caller(principal: Principal) -> int:
    if principal.user_id is None:
        raise AuthenticationRequired("Send an Airlock API token as the API key")
    return principal.user_id


def _checked_url(url: str) -> str:
    """An http(s) base URL with a host and no credentials, query or fragment."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidInput("the upstream URL must be an http:// or https:// URL with a host")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise InvalidInput(
            "the upstream URL may not carry credentials, a query or a fragment; "
            "name the credential's environment variable instead"
        )
    return url.rstrip("/")


def _checked_ref(ref: str) -> str:
    if not KEY_REF.fullmatch(ref):
        raise InvalidInput(
            f"the credential reference must name an environment variable {UPSTREAM_KEY_PREFIX}"
            "<NAME> (capitals, digits, underscores)"
        )
    return ref
