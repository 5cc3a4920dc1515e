"""Inference: who may call which model's upstream, the proxying itself, and its audit.

Requests are authorized for the model the body names (the one dispatched), against the
caller's live inference grants and a fresh evaluation of the model's policy, exactly as
downloads are. Denials are audited at once; a served request is audited once, when it ends
(however it ends), with its usage, latency and upstream status, and never its text.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import secrets
import time
from collections.abc import Callable, Generator, Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy.orm import Session

from gateway.audit import AuditAction, AuditRecorder
from gateway.audit.outbox import AuditOutbox
from gateway.auth.tokens import Scope
from gateway.db.models import Model, utcnow
from gateway.errors import (
    AccessDenied,
    AuthenticationRequired,
    InvalidInput,
    NotFound,
    QuotaExhausted,
    RateLimited,
    ServiceUnavailable,
    UpstreamFailed,
)
from gateway.ratelimit import (
    Dimension,
    Lease,
    Limiter,
    LimiterUnavailable,
    LimitResult,
    MonthlyQuota,
)
from gateway.services.access import AccessService, visible_to
from gateway.services.downloads import held_grants, usable_grants
from gateway.services.policy import PolicyService
from gateway.services.principal import Principal
from gateway.services.rows import (
    GrantRow,
    ModelAccess,
    ModelRow,
    UpstreamRow,
    load_access,
    load_granted_access,
)
from gateway.services.upstream import Upstream, UpstreamReply, UpstreamTarget
from gateway.settings import UPSTREAM_KEY_PREFIX
from policies import GrantKind, Limits, Tier

log = logging.getLogger(__name__)

DAY = 86400
MINUTE = 60
LEASE_TTL_MARGIN = 60  # a crashed process's lease outlives the longest upstream wait by this
KEY_REF = re.compile(re.escape(UPSTREAM_KEY_PREFIX) + r"[A-Z0-9_]{1,100}")
UPSTREAM_MODEL = re.compile(r"[\x21-\x7e]{1,200}")  # printable ASCII, no spaces
PROMPT_KEYS = ("messages", "prompt", "input")
# A streamed chunk that carries generated text: a non-empty content, text, tool-call arguments
# or reasoning string (escaped quotes inside strings cannot match: they follow a backslash).
CONTENT = re.compile(rb'"(?:content|text|arguments|reasoning_content)":\s*"(?!")')
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
    digests: bool = False
    reserved: int = 0
    prompt: int = 0
    token_dims: tuple[Dimension, ...] = ()
    lease: Lease | None = None
    limit: LimitResult | None = None
    request_country: str | None = None  # where the request came from, as the decision saw it


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
        limiter: Limiter,
        output_cap: int,
        lease_ttl: float,
        outbox: AuditOutbox | None = None,
    ) -> None:
        self.limiter = limiter
        self.outbox = outbox  # where refused events wait (None: they are lost, logged)
        self.output_cap = output_cap
        self.lease_ttl = lease_ttl
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
        upstream_model: str | None = None,
        prompt_digests: bool = False,
    ) -> Model:
        """Point a model at an OpenAI-compatible base URL, with its credential's variable name,
        the name the upstream serves it under, and whether prompt digests are audited."""
        actor = principal.require_org_scope(model.org_id, Scope.MODELS_WRITE)
        model.upstream_url = _checked_url(url) if url else None
        model.upstream_key_ref = _checked_ref(key_ref) if key_ref else None
        model.upstream_model = _checked_model(upstream_model) if upstream_model else None
        model.prompt_digests = prompt_digests
        self.audit.record(
            session,
            AuditAction.MODEL_UPSTREAM,
            actor_id=actor,
            org_id=model.org_id,
            model_id=model.id,
            payload={
                "upstream_url": model.upstream_url,
                "key_ref": model.upstream_key_ref,
                "upstream_model": model.upstream_model,
                "prompt_digests": prompt_digests,
            },
        )
        session.commit()
        return model

    # -- authorization -----------------------------------------------------------------------
    def permitted_models(
        self, session: Session, *, principal: Principal, request_country: str | None
    ) -> list[ModelRow]:
        """The models the caller may call now (none without a live inference grant)."""
        user_id = _require_caller(principal)
        found = []
        for access in load_granted_access(session.connection(), user_id):
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
            self._deny(session, user_id, found.model, reasons, request_country)
        grant, tier = max(kept, key=lambda kt: (_room(kt[1].limits), kt[0].id))
        target, digests = self._target(found.model, found.upstream)
        started = time.monotonic()
        return Admission(
            user_id,
            found.model,
            grant,
            tier,
            target,
            started,
            digests,
            request_country=request_country,
        )

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
        return held_grants(self.access, policy, model, usable, found.facts, request_country)

    def _deny(
        self,
        session: Session,
        user_id: int,
        model: ModelRow,
        reasons: list[dict[str, str]],
        country: str | None,
    ) -> None:
        self._audit_deny(session, user_id, model, reasons, country=country)
        summary = " ".join(r["message"] for r in reasons)
        raise AccessDenied(f"You may not use the model {model.repo_id}. {summary}", reasons=reasons)

    def _audit_deny(
        self,
        session: Session,
        user_id: int,
        model: ModelRow,
        reasons: list[dict[str, str]],
        admission: Admission | None = None,
        *,
        country: str | None = None,
    ) -> None:
        payload: dict[str, Any] = {"reasons": reasons}
        if country:  # the request's country, as the access decision saw it
            payload["request_country"] = country
        if admission is not None:  # a limit refused it: whose limits
            payload |= {"grant_id": admission.grant.id, "tier": admission.tier.name}
        session.rollback()  # a fresh transaction for the audit (see DownloadService._deny)
        self.audit.record(
            session,
            AuditAction.INFERENCE_DENY,
            actor_id=user_id,
            org_id=model.org_id,
            subject_user_id=user_id,
            model_id=model.id,
            effect="deny",
            payload=payload,
        )
        session.commit()

    def _target(self, model: ModelRow, upstream: UpstreamRow) -> tuple[UpstreamTarget, bool]:
        """The model's upstream and credential (as admission read them with its grants), and
        whether its prompts are digested; 503 when the upstream or its credential is not set."""
        url, ref, served_as = upstream.url, upstream.key_ref, upstream.model
        if not url:
            raise UpstreamFailed(f"{model.repo_id} has no inference upstream set", status=503)
        if ref and ref not in self.keys:
            log.error("upstream credential %s of %s is not set", ref, model.repo_id)
            raise UpstreamFailed(f"{model.repo_id}'s upstream credential is not set", status=503)
        key = self.keys.get(ref) if ref else None
        return UpstreamTarget(url, key, served_as), upstream.digests

    # -- limits ------------------------------------------------------------------------------
    def charge(
        self, session: Session, admission: Admission, path: str, body: dict[str, Any]
    ) -> tuple[Admission, dict[str, Any]]:
        """Reserve the request's worst case at once (requests, prompt estimate + output cap,
        a concurrency lease) or refuse it, consuming nothing; the body as it is sent upstream
        (with the cap injected as `max_tokens` when the client set none)."""
        limits = admission.tier.limits
        token_limits = [
            q
            for q in (limits.tokens_per_minute, limits.tokens_per_day, limits.tokens_per_month)
            if q
        ]
        sent, output, prompt = body, 0, estimate_prompt_tokens(body)
        if path != "/embeddings":
            asked = _output_cap(body)
            room = [q - prompt for q in token_limits]  # the cap leaves room for the prompt
            output = asked if asked is not None else max(1, min([self.output_cap, *room]))
            if asked is None and token_limits:
                sent = {**body, "max_tokens": output}
        reserved = prompt + output
        grant = admission.grant.id
        gcra = _gcra_dimensions(grant, limits, reserved)
        lease = None
        if limits.concurrent_requests is not None:
            lease = Lease(
                key=f"inf:{grant}:concurrent",
                name="concurrent",
                quota=limits.concurrent_requests,
                window=self.lease_ttl,
                id=secrets.token_hex(8),
            )
        dims = [*gcra, *([lease] if lease else [])]
        if not dims:
            return admission, sent
        result = self._acquire(session, admission, dims)
        token_dims = tuple(d for d in gcra if d.unit == "tokens")
        charged = replace(
            admission,
            reserved=reserved,
            prompt=prompt,
            token_dims=token_dims,
            lease=lease,
            limit=result,
        )
        return charged, sent

    def _acquire(
        self, session: Session, admission: Admission, dims: list[Dimension]
    ) -> LimitResult:
        rule = f"tiers[{admission.tier.name}].limits"
        try:
            result = self.limiter.acquire(dims)
        except LimiterUnavailable:
            reason = _reason("rate_limiter_unavailable", rule, LIMITER_DOWN_MESSAGE)
            self._audit_deny(session, admission.user_id, admission.model, [reason], admission)
            raise
        if result.allowed:
            return result
        refused = result.refused
        assert refused is not None
        if isinstance(refused, MonthlyQuota):
            self._quota_spent(session, admission, result, refused)
        never = result.retry_after == float("inf")
        message = _refusal_message(admission.model.repo_id, refused, result, never)
        reason = _reason(
            "concurrent_requests_exceeded" if isinstance(refused, Lease) else "rate_limited",
            f"{rule}.{refused.name}",
            message,
        )
        self._audit_deny(session, admission.user_id, admission.model, [reason], admission)
        wait = DAY if never else max(result.retry_after, 0.001)
        if isinstance(refused, Lease):
            # A slot frees when any request ends, usually within seconds, not at the lease's
            # expiry (minutes): SDKs ignore (1.x) or give up on (3.x) waits above a minute.
            wait = min(wait, CONCURRENCY_RETRY_SECONDS)
        headers = openai_ratelimit_headers(result)
        headers["retry-after-ms"] = str(math.ceil(wait * 1000))
        if never:
            headers["x-should-retry"] = "false"
        raise RateLimited(message, retry_after=max(1, math.ceil(wait)), headers=headers)

    def _quota_spent(
        self, session: Session, admission: Admission, result: LimitResult, quota: MonthlyQuota
    ) -> None:
        """Refuse as OpenAI does a spent budget: 429 `insufficient_quota`, not to be retried
        before the month's end."""
        state = next(st for st in result.states if st.dimension == quota)
        repo_id = admission.model.repo_id
        if result.retry_after == float("inf"):
            message = (
                f"Request too large for {repo_id} on tokens per month: Limit {quota.quota}, "
                f"Requested {quota.cost}. Lower max_tokens or shorten the prompt."
            )
        else:
            message = (
                f"You exceeded your monthly token quota for {repo_id}: Limit {quota.quota}, "
                f"Used {quota.quota - state.remaining}, Requested {quota.cost}. It renews at "
                f"the start of the next UTC month, in {go_duration(state.reset_after)}."
            )
        rule = f"tiers[{admission.tier.name}].limits.tokens_per_month"
        reason = _reason("token_quota_exhausted", rule, message)
        self._audit_deny(session, admission.user_id, admission.model, [reason], admission)
        wait = max(state.reset_after, 0.001)
        headers = openai_ratelimit_headers(result)
        headers["retry-after-ms"] = str(math.ceil(wait * 1000))
        headers["x-should-retry"] = "false"
        raise QuotaExhausted(message, retry_after=max(1, math.ceil(wait)), headers=headers)

    def _settle(self, admission: Admission, total: int | None) -> None:
        """Charge what was really used instead of the reservation; free the lease (one limiter
        call: one round trip to Redis)."""
        delta = 0 if total is None else total - admission.reserved
        dims = admission.token_dims if delta else ()
        if not dims and admission.lease is None:
            return
        try:
            self.limiter.settle(dims, delta, admission.lease)
        except LimiterUnavailable:
            log.error("could not settle an inference request's limits; its lease will expire")

    # -- proxying ----------------------------------------------------------------------------
    def complete(self, admission: Admission, path: str, body: dict[str, Any]) -> bytes:
        """A non-streaming call: the upstream's JSON answer as the client gets it (its bytes as
        sent, unless the model is renamed), audited with its usage.

        An answer whose audit event cannot be written is withheld (503): nothing reaches the
        client unrecorded. Its tokens stay charged: the upstream did the work."""
        used = None
        delivery = Delivery(admission, path, body, streamed=False)
        try:
            reply = self.upstream.send(admission.target, path, _outbound(admission, body))
            data, answer = reply.body()
            usage = answer.get("usage")
            used = usage if isinstance(usage, dict) else None
            if admission.target.model is not None and "model" in answer:
                answer["model"] = admission.model.repo_id
                data = json.dumps(answer).encode()
            delivery.answered(answer)
        except UpstreamFailed as exc:
            self._finish(delivery, exc.status, None)
            raise
        except BaseException:
            self._finish(delivery, 200, used)
            raise
        if not self._finish(delivery, 200, used, withheld_unless_recorded=True):
            raise ServiceUnavailable(
                "The request could not be recorded in the audit log, so its answer was "
                "withheld; try again shortly."
            )
        return data

    def open_stream(self, admission: Admission, path: str, body: dict[str, Any]) -> Iterator[bytes]:
        """Start a streaming call (errors before the first byte raise); relay it event by event.

        The upstream is always asked for usage; its usage chunk is forwarded only when the
        client asked for it too.
        """
        delivery = Delivery(admission, path, body, streamed=True)
        options = body.get("stream_options")
        if options is not None and not isinstance(options, dict):
            self._finish(delivery, 400, None)
            raise InvalidInput("stream_options must be an object")
        wants_usage = isinstance(options, dict) and options.get("include_usage") is True
        sent = {**body, "stream_options": {**(options or {}), "include_usage": True}}
        try:
            reply = self.upstream.send(admission.target, path, _outbound(admission, sent))
        except UpstreamFailed as exc:
            self._finish(delivery, exc.status, None)
            raise
        events = self._relay(delivery, reply, wants_usage)
        return Relay(events, lambda: self._abandon(delivery, reply))

    def _abandon(self, delivery: Delivery, reply: UpstreamReply) -> None:
        """A stream closed before its first event was asked for: end and settle it anyway."""
        reply.close()
        self._finish(delivery, "client_disconnected", None)

    def _relay(
        self, delivery: Delivery, reply: UpstreamReply, wants_usage: bool
    ) -> Generator[bytes]:
        status: int | str = 200
        used: dict[str, Any] | None = None
        try:
            for event in reply.events():
                if event == DONE:
                    yield event
                    return
                event, usage = delivery.take(event)
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
            self._finish(delivery, status, used)

    def _finish(
        self,
        delivery: Delivery,
        status: int | str,
        used: dict[str, Any] | None,
        *,
        withheld_unless_recorded: bool = False,
    ) -> bool:
        """Settle the limits, then write the request's one audit event in its own transaction
        (the request's may be gone); whether it was written.

        An event the database refuses is spooled to the outbox (gateway/audit/outbox.py) and
        written later, unless the caller withholds the answer when it is not recorded (then
        nothing was delivered). Each event written successfully sends the spooled ones after it
        (on the outbox's thread).
        """
        admission = delivery.admission
        total = _total(used)
        if total is None and delivery.streamed:
            total = delivery.estimate()  # no usage came: charge what reached the client
        self._settle(admission, total)
        payload: dict[str, Any] = {
            "tokens_reserved": admission.reserved,
            "endpoint": delivery.path,
            "grant_id": admission.grant.id,
            "tier": admission.tier.name,
            "upstream_status": status,
            "latency_ms": round((time.monotonic() - admission.started) * 1000),
            "tokens_used": total,
            "usage_reported": used is not None,
        }
        if delivery.streamed:
            payload["chunks_delivered"] = delivery.chunks
        if admission.request_country:
            payload["request_country"] = admission.request_country
        if admission.digests:
            payload.update(delivery.digests())
        event = {
            "action": str(AuditAction.INFERENCE_SERVE),
            "actor_id": admission.user_id,
            "org_id": admission.model.org_id,
            "subject_user_id": admission.user_id,
            "model_id": admission.model.id,
            "effect": "allow",
            "payload": payload,
        }
        try:
            self.audit.record_alone(self.sessions, event)
        except Exception:
            log.exception("could not audit an inference request on %s", admission.model.repo_id)
            if not withheld_unless_recorded:
                self._spool(event)
            return False
        if self.outbox is not None:
            self.outbox.nudge()  # the database takes events again: the spooled ones follow
        return True

    def _spool(self, event: dict[str, Any]) -> None:
        """Keep a refused event for later, marked with when it happened."""
        if self.outbox is None:
            log.error("no audit outbox configured: an inference event is lost")
            return
        late = {**event, "payload": {**event["payload"], "spooled_at": utcnow().isoformat()}}
        try:
            path = self.outbox.put(late)
        except OSError:
            log.critical("could not spool an inference event either: it is lost", exc_info=True)
            return
        log.warning("inference event spooled to %s until the database takes it", path.name)


class Delivery:
    """What one admitted request has delivered: content-bearing chunks streamed (about one
    token each on OpenAI-compatible servers), the upstream's prompt count if it gave one, and
    the completion's SHA-256 when the model keeps digests."""

    def __init__(
        self, admission: Admission, path: str, body: dict[str, Any], *, streamed: bool
    ) -> None:
        self.admission = admission
        self.path = path
        self.body = body
        self.streamed = streamed
        self.chunks = 0
        self.prompt_tokens: int | None = None
        self.completion = hashlib.sha256() if admission.digests else None
        self.parse = admission.digests or admission.target.model is not None

    def take(self, event: bytes) -> tuple[bytes, dict[str, Any] | None]:
        """An upstream event as the client gets it (counted as handed to its connection), and
        the usage it reports if it is the final usage chunk. Events are parsed only when the
        model is renamed or digested, or when they carry a usage."""
        if CONTENT.search(event):
            self.chunks += 1
        if not self.parse and b'"prompt_tokens"' not in event:
            return event, None  # the common case: no JSON parsing per event
        chunk = _chunk_of(event)
        if chunk is None:
            return event, None
        usage = chunk.get("usage")
        if isinstance(usage, dict) and isinstance(usage.get("prompt_tokens"), int):
            self.prompt_tokens = usage["prompt_tokens"]
        if self.completion is not None:
            self.completion.update(_chunk_text(chunk).encode())
        return self._renamed(event, chunk), _usage_of(chunk)

    def _renamed(self, event: bytes, chunk: dict[str, Any]) -> bytes:
        """The event with `model` named as Airlock names it."""
        if self.admission.target.model is None or "model" not in chunk:
            return event
        chunk["model"] = self.admission.model.repo_id
        return b"data: " + json.dumps(chunk).encode() + b"\n\n"

    def answered(self, answer: dict[str, Any]) -> None:
        """Hash a whole (non-streaming) answer's text."""
        if self.completion is not None:
            self.completion.update(_answer_text(answer).encode())

    def estimate(self) -> int:
        """Tokens used by a stream that reported no usage: the prompt (the upstream's count,
        else the estimate) plus one per content-bearing chunk delivered."""
        prompt = self.prompt_tokens if self.prompt_tokens is not None else self.admission.prompt
        return prompt + self.chunks

    def digests(self) -> dict[str, str]:
        """`prompt_sha256` (the canonical JSON of messages/prompt/input) and, for generations,
        `completion_sha256` (the completion text delivered, UTF-8)."""
        found = {"prompt_sha256": prompt_sha256(self.body)}
        if self.completion is not None and self.path != "/embeddings":
            found["completion_sha256"] = self.completion.hexdigest()
        return found


def prompt_sha256(body: dict[str, Any]) -> str:
    """SHA-256 of the request's `messages`, `prompt` and `input` as canonical JSON (sorted keys,
    no spaces, UTF-8)."""
    prompt = {k: body[k] for k in PROMPT_KEYS if k in body}
    canonical = json.dumps(prompt, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _outbound(admission: Admission, body: dict[str, Any]) -> dict[str, Any]:
    """The body as the upstream gets it: `model` named as the upstream serves it."""
    served_as = admission.target.model
    return body if served_as is None else {**body, "model": served_as}


def _chunk_text(chunk: dict[str, Any]) -> str:
    """The completion text one streamed chunk carries (every choice's delta or text)."""
    return _choices_text(chunk, "delta")


def _answer_text(answer: dict[str, Any]) -> str:
    """The completion text of a whole answer (every choice's message content or text)."""
    return _choices_text(answer, "message")


def _choices_text(body: dict[str, Any], holder: str) -> str:
    """Every choice's `holder` content (`delta` or `message`), or its `text` without one."""
    choices = body.get("choices")
    if not isinstance(choices, list):
        return ""
    parts = []
    for choice in choices:
        if not isinstance(choice, dict):
            continue
        held = choice.get(holder)
        text = held.get("content") if isinstance(held, dict) else choice.get("text")
        if isinstance(text, str):
            parts.append(text)
    return "".join(parts)


def _room(limits: Limits) -> tuple[float, ...]:
    """How much a tier's limits allow, most telling first (no limit beats any number)."""
    found = (
        limits.tokens_per_month,
        limits.tokens_per_day,
        limits.tokens_per_minute,
        limits.requests_per_minute,
    )
    return tuple(math.inf if q is None else q for q in found)


CONCURRENCY_RETRY_SECONDS = 1.0  # Retry-After of a concurrent-requests refusal
LIMITER_DOWN_MESSAGE = (
    "The rate limiter could not be reached, so the request was refused rather than let "
    "through uncounted; try again shortly."
)
SCOPE_MESSAGE = "The API token lacks the 'models:read' scope inference needs."
NO_GRANT_MESSAGE = "You hold no live grant for a tier of this model that includes inference."


class Relay:
    """A relayed stream whose `close` settles the request even if it never started (a
    generator closed before its first `next` skips its own `finally`)."""

    def __init__(self, events: Generator[bytes], abandon: Callable[[], None]) -> None:
        self.events = events
        self.abandon = abandon
        self.started = False

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        self.started = True
        return next(self.events)

    def close(self) -> None:
        """End the upstream request (the WSGI server calls this, also on disconnects)."""
        if self.started:
            self.events.close()
        else:
            self.started = True
            self.abandon()


def error_event(exc: UpstreamFailed) -> bytes:
    """An error after streaming began, as the SDK reads it: one `data: {"error": ...}` event."""
    body = {"message": exc.detail, "type": "upstream_error", "param": None, "code": exc.code}
    return b"data: " + json.dumps({"error": body}).encode() + b"\n\n"


def _chunk_of(event: bytes) -> dict[str, Any] | None:
    """The JSON object an event carries (`data: {...}`), else None."""
    if not event.startswith(b"data:"):
        return None
    try:
        chunk = json.loads(event[5:])
    except ValueError:
        return None
    return chunk if isinstance(chunk, dict) else None


def _usage_of(chunk: dict[str, Any] | None) -> dict[str, Any] | None:
    """The usage a chunk reports if it is the final usage chunk, else None."""
    usage = chunk.get("usage") if chunk is not None else None
    if isinstance(usage, dict) and chunk is not None and chunk.get("choices") == []:
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


def _checked_model(name: str) -> str:
    if not UPSTREAM_MODEL.fullmatch(name):
        raise InvalidInput(
            "the upstream model name must be 1 to 200 printable characters without spaces"
        )
    return name


def _checked_ref(ref: str) -> str:
    if not KEY_REF.fullmatch(ref):
        raise InvalidInput(
            f"the credential reference must name an environment variable {UPSTREAM_KEY_PREFIX}"
            "<NAME> (capitals, digits, underscores)"
        )
    return ref


def estimate_prompt_tokens(body: dict[str, Any]) -> int:
    """An estimate of the prompt's tokens: its text's UTF-8 bytes / 4, rounded up, at least 1."""
    parts: list[str] = []
    for key in ("messages", "prompt", "input"):
        _texts(body.get(key), parts)
    return max(1, math.ceil(sum(len(p.encode()) for p in parts) / 4))


def _texts(value: Any, into: list[str]) -> None:
    if isinstance(value, str):
        into.append(value)
    elif isinstance(value, list):
        for item in value:
            _texts(item, into)
    elif isinstance(value, dict):
        for key in ("content", "text"):
            _texts(value.get(key), into)


def _output_cap(body: dict[str, Any]) -> int | None:
    """The client's output cap, if any; 400 unless a positive integer."""
    found = body.get("max_completion_tokens", body.get("max_tokens"))
    if found is None:
        return None
    if isinstance(found, bool) or not isinstance(found, int) or found < 1:
        raise InvalidInput("max_tokens must be a positive integer")
    return found


def _gcra_dimensions(grant: int, limits: Limits, tokens: int) -> list[Dimension]:
    """Requests per minute, then tokens per minute, per day and per calendar month (charged
    the reservation)."""
    dims = []
    if limits.requests_per_minute:
        rpm = limits.requests_per_minute
        dims.append(Dimension(f"inf:{grant}:rpm", "requests", rpm, MINUTE))
    if limits.tokens_per_minute:
        dims.append(
            Dimension(
                f"inf:{grant}:tpm", "tokens", limits.tokens_per_minute, MINUTE, tokens, "tokens"
            )
        )
    if limits.tokens_per_day:
        dims.append(
            Dimension(
                f"inf:{grant}:tpd", "tokens-day", limits.tokens_per_day, DAY, tokens, "tokens"
            )
        )
    if limits.tokens_per_month:
        quota = limits.tokens_per_month
        dims.append(MonthlyQuota(f"inf:{grant}:tpmo", "tokens-month", quota, cost=tokens))
    return dims


def _refusal_message(repo_id: str, refused: Dimension, result: LimitResult, never: bool) -> str:
    """OpenAI's wording, which clients grep: 'Rate limit reached for <model> ...'."""
    if isinstance(refused, Lease):
        return (
            f"Rate limit reached for {repo_id} on concurrent requests: Limit {refused.quota}. "
            "Please try again when one of your requests has finished."
        )
    unit = "tokens per min (TPM)" if refused.window == MINUTE else "tokens per day (TPD)"
    if refused.unit == "requests":
        unit = "requests per min (RPM)"
    if never:
        return (
            f"Request too large for {repo_id} on {unit}: Limit {refused.quota}, "
            f"Requested {refused.cost}. Lower max_tokens or shorten the prompt."
        )
    state = next(st for st in result.states if st.dimension == refused)
    used = refused.quota - state.remaining
    return (
        f"Rate limit reached for {repo_id} on {unit}: Limit {refused.quota}, Used {used}, "
        f"Requested {refused.cost}. Please try again in {go_duration(result.retry_after)}."
    )


def openai_ratelimit_headers(result: LimitResult | None) -> dict[str, str]:
    """The six `x-ratelimit-*` headers (requests per minute and tokens per minute)."""
    headers: dict[str, str] = {}
    if result is None:
        return headers
    for state in result.states:
        dim = state.dimension
        kind = {"requests": "requests", "tokens": "tokens"}.get(dim.name)
        if kind is None or isinstance(dim, Lease):
            continue
        headers[f"x-ratelimit-limit-{kind}"] = str(dim.quota)
        headers[f"x-ratelimit-remaining-{kind}"] = str(max(0, state.remaining))
        headers[f"x-ratelimit-reset-{kind}"] = go_duration(state.reset_after)
    return headers


def go_duration(seconds: float) -> str:
    """A Go duration string: `0s`, `12ms`, `2.844s`, `6m0s`, `1h0m0s`."""
    if seconds <= 0:
        return "0s"
    ms = max(1, math.ceil(round(seconds * 1000, 3)))  # float noise must not add a millisecond
    if ms < 1000:
        return f"{ms}ms"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs = f"{rest / 1000:.3f}".rstrip("0").rstrip(".") + "s"
    if hours:
        return f"{hours}h{minutes}m{secs}"
    if minutes:
        return f"{minutes}m{secs}"
    return secs
