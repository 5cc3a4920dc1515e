"""The decision engine: a subject's request for a tier becomes allow, deny or review, with reasons.

Deny by default: every requirement is checked and every reason kept; deny beats review beats
allow, and a decision allows only when at least one reason allows and none objects.
"""

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from functools import cached_property

from policies.forms import validate_form
from policies.iso3166 import is_jurisdiction_code
from policies.packs import ListRef, PackEntry, PackRegistry
from policies.schema import Approval, JurisdictionRule, ReleasePolicy, Tier
from policies.units import format_duration
from policies.vocab import (
    ApprovalMode,
    Effect,
    KycLevel,
    Match,
    ReasonCode,
    Signal,
    Stage,
    kyc_at_least,
)

_SIGNAL_LABELS = {
    Signal.DOCUMENT_COUNTRY: "identity document's issuing country",
    Signal.NATIONALITY: "nationality",
    Signal.ORG_HQ_COUNTRY: "organization's headquarters country",
    Signal.REQUEST_COUNTRY: "request location",
    Signal.RESIDENCE_COUNTRY: "place of residence",
}


@dataclass(frozen=True)
class Subject:
    """The facts about a requester that a decision may use; unknown facts stay None."""

    user_id: str = ""
    kyc_level: KycLevel = KycLevel.NONE
    kyc_expires_at: datetime | None = None
    kyc_verified_at: datetime | None = None
    sanctions_hit: bool | None = None
    nationality: str | None = None
    residence_country: str | None = None
    residence_subdivision: str | None = None
    document_country: str | None = None
    org_hq_country: str | None = None
    request_country: str | None = None
    affiliation_org: str | None = None
    email: str | None = None
    accepted_agreements: frozenset[tuple[str, int]] = frozenset()
    form: Mapping[str, object] | None = None

    def __post_init__(self) -> None:
        for name in ("kyc_expires_at", "kyc_verified_at"):
            instant = getattr(self, name)
            if instant is not None and instant.tzinfo is None:
                raise ValueError(f"{name} must be timezone-aware")

    def signal(self, signal: Signal) -> str | None:
        """The value of a jurisdiction signal; residence prefers the subdivision when known."""
        values = {
            Signal.DOCUMENT_COUNTRY: self.document_country,
            Signal.NATIONALITY: self.nationality,
            Signal.ORG_HQ_COUNTRY: self.org_hq_country,
            Signal.REQUEST_COUNTRY: self.request_country,
            Signal.RESIDENCE_COUNTRY: self.residence_subdivision or self.residence_country,
        }
        return values[signal]


@dataclass(frozen=True)
class Reason:
    """One finding of a decision: a stable code, a sentence, the rule it came from, its effect."""

    code: ReasonCode
    message: str
    rule: str
    effect: Effect

    def to_dict(self) -> dict[str, str]:
        """JSON-ready form."""
        return {
            "code": self.code,
            "message": self.message,
            "rule": self.rule,
            "effect": self.effect,
        }


@dataclass(frozen=True)
class Decision:
    """The outcome for one subject and tier, with every reason and the packs consulted.

    `approval` is what a grant still needs: the tier's approval, or one manual reviewer when a
    request for an automatic tier goes to review. It is None only for an unknown tier.
    """

    effect: Effect
    reasons: tuple[Reason, ...]
    tier: str
    approval: Approval | None = None
    packs_used: tuple[tuple[str, str, str], ...] = ()

    @property
    def allowed(self) -> bool:
        """Whether access may be granted now."""
        return self.effect is Effect.ALLOW

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form."""
        approval = self.approval
        return {
            "effect": self.effect.value,
            "allowed": self.allowed,
            "tier": self.tier,
            "reasons": [reason.to_dict() for reason in self.reasons],
            "approval": {"mode": approval.mode.value, "reviewers": approval.reviewers}
            if approval
            else None,
            "packs_used": [
                {"id": pack_id, "version": version, "content_hash": content_hash}
                for pack_id, version, content_hash in self.packs_used
            ],
        }


@dataclass(frozen=True)
class _Request:
    """One evaluation's inputs, shared by the checks."""

    policy: ReleasePolicy
    tier: Tier
    subject: Subject
    now: datetime
    packs: PackRegistry
    unobserved: frozenset[Signal] = frozenset()

    @cached_property
    def day(self) -> date:
        return self.now.astimezone(UTC).date()

    def rule(self, suffix: str) -> str:
        return f"tiers[{self.tier.name}].{suffix}"


def evaluate(
    policy: ReleasePolicy,
    tier_name: str,
    subject: Subject,
    *,
    now: datetime,
    packs: PackRegistry,
    model_frozen: bool = False,
    unobserved: frozenset[Signal] = frozenset(),
) -> Decision:
    """Decide `subject`'s request for `tier_name` under `policy` at `now`, with every reason.

    `unobserved` names signals this evaluation cannot see (the request country when grants are
    re-evaluated between requests): rules skip them instead of sending the request to review.
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    tier = policy.tier(tier_name)
    if tier is None:
        return Decision(Effect.DENY, (_unknown_tier(policy, tier_name),), tier_name)
    registry = packs.with_custom(policy.packs)
    q = _Request(policy, tier, subject, now, registry, unobserved)
    reasons = [*_availability(q, model_frozen), *_requirements(q)]
    reasons += _approval(q, reasons)
    effect = _combine(reasons)
    return Decision(effect, tuple(reasons), tier.name, _approval_needed(tier, effect), _packs(q))


def _approval_needed(tier: Tier, effect: Effect) -> Approval:
    """The tier's approval; a request of an automatic tier sent to review needs one reviewer."""
    if effect is Effect.REVIEW and tier.requires.approval.mode is ApprovalMode.AUTO:
        return Approval(ApprovalMode.MANUAL, 1)
    return tier.requires.approval


def _combine(reasons: Iterable[Reason]) -> Effect:
    effects = {reason.effect for reason in reasons}
    strongest = (Effect.DENY, Effect.REVIEW, Effect.ALLOW)
    return next((effect for effect in strongest if effect in effects), Effect.DENY)


def _unknown_tier(policy: ReleasePolicy, name: str) -> Reason:
    tiers = ", ".join(f"'{tier.name}'" for tier in policy.tiers)
    message = f"The policy for {policy.model} has no tier '{name}'; its tiers are {tiers}."
    return Reason(ReasonCode.TIER_UNKNOWN, message, "tiers", Effect.DENY)


def _availability(q: _Request, model_frozen: bool) -> list[Reason]:
    reasons = []
    if q.policy.stage not in q.tier.opens_in:
        stages = ", ".join(f"'{stage}'" for stage in Stage if stage in q.tier.opens_in)
        message = f"Tier '{q.tier.name}' opens only in stages {stages};"
        message += f" the model is in stage '{q.policy.stage}'."
        reasons.append(Reason(ReasonCode.STAGE_CLOSED, message, q.rule("opens_in"), Effect.DENY))
    if model_frozen and q.tier.serves_model:
        message = "The model is under an emergency freeze: no tier serves its weights or"
        message += " inference until the freeze is lifted."
        reasons.append(Reason(ReasonCode.MODEL_FROZEN, message, q.rule("grants"), Effect.DENY))
    return reasons


def _requirements(q: _Request) -> list[Reason]:
    if q.tier.requires.explicit_empty:
        message = f"Tier '{q.tier.name}' explicitly has no requirements."
        return [Reason(ReasonCode.NO_REQUIREMENTS, message, q.rule("requires"), Effect.ALLOW)]
    checks = (_kyc, _sanctions, _agreement, _form, _jurisdiction, _affiliation)
    return [reason for check in checks for reason in check(q)]


def _approval(q: _Request, reasons: list[Reason]) -> list[Reason]:
    if q.tier.requires.explicit_empty or any(r.effect is not Effect.ALLOW for r in reasons):
        return []
    rule, approval = q.rule("requires.approval"), q.tier.requires.approval
    if approval.mode is ApprovalMode.MANUAL:
        reviewers = approval.reviewers
        count = "one reviewer" if reviewers == 1 else f"{reviewers} reviewers"
        message = f"All requirements are met; the grant still needs approval by {count}."
        return [Reason(ReasonCode.APPROVAL_REQUIRED, message, rule, Effect.REVIEW)]
    message = "All requirements are met and this tier grants access without manual approval."
    return [Reason(ReasonCode.REQUIREMENTS_MET, message, rule, Effect.ALLOW)]


def _kyc(q: _Request) -> list[Reason]:
    need, have, rule = q.tier.requires.kyc, q.subject.kyc_level, q.rule("requires.kyc")
    if need is KycLevel.NONE:
        message = "This tier requires no identity verification."
        return [Reason(ReasonCode.KYC_LEVEL_MET, message, rule, Effect.ALLOW)]
    reasons = []
    expires = q.subject.kyc_expires_at
    if have is not KycLevel.NONE and expires is not None and expires <= q.now:
        message = f"The requester's identity verification at level '{have}' expired on"
        message += f" {expires.astimezone(UTC):%Y-%m-%d %H:%M} UTC and counts as 'none'."
        reasons.append(Reason(ReasonCode.KYC_EXPIRED, message, rule, Effect.DENY))
        have = KycLevel.NONE
    message = f"Identity verification at level '{need}' is required; the requester has '{have}'."
    if kyc_at_least(have, need):
        reasons.append(Reason(ReasonCode.KYC_LEVEL_MET, message, rule, Effect.ALLOW))
        reasons += _kyc_age(q)
    else:
        reasons.append(Reason(ReasonCode.KYC_LEVEL_INSUFFICIENT, message, rule, Effect.DENY))
    return reasons


def kyc_too_old(verified_at: datetime | None, limit: timedelta | None, now: datetime) -> bool:
    """Whether a verification made at `verified_at` (None: unknown) is older than `limit`."""
    return limit is not None and (verified_at is None or now - verified_at > limit)


def _kyc_age(q: _Request) -> list[Reason]:
    limit, verified = q.tier.requires.kyc_max_age, q.subject.kyc_verified_at
    if limit is None or not kyc_too_old(verified, limit, q.now):
        return []
    rule, most = q.rule("requires.kyc_max_age"), f"at most {_words(limit)} old"
    if verified is None:
        message = "The date of the requester's identity verification is unknown, and this tier"
        message += f" accepts a verification {most}; a reviewer must decide."
    else:
        day, age = f"{verified.astimezone(UTC):%Y-%m-%d}", _age(q.now - verified)
        message = f"The requester's identity verification dates from {day} ({age} ago), and"
        message += f" this tier accepts a verification {most}; it must be renewed, or a reviewer"
        message += " must decide."
    return [Reason(ReasonCode.KYC_TOO_OLD, message, rule, Effect.REVIEW)]


_UNIT_WORDS = {"w": "week", "d": "day", "h": "hour", "m": "minute", "s": "second"}


def _count(count: int, unit: str) -> str:
    return f"{count} {unit}" + ("" if count == 1 else "s")


def _words(limit: timedelta) -> str:
    """A policy's duration in words: `365 days`, `2 weeks`, `12 hours`."""
    text = format_duration(limit)
    return _count(int(text[:-1]), _UNIT_WORDS[text[-1]])


def _age(span: timedelta) -> str:
    """An age in whole days, or in hours (at least one) when under a day."""
    if span.days:
        return _count(span.days, "day")
    return _count(max(1, span // timedelta(hours=1)), "hour")


def _sanctions(q: _Request) -> list[Reason]:
    # Screening comes with identity-level verification; below that the tier does not use it.
    screened = kyc_at_least(q.tier.requires.kyc, KycLevel.IDENTITY)
    if not screened or q.subject.sanctions_hit is not True:
        return []
    message = "Sanctions screening of the requester reported a hit; access stays denied until"
    message += " the hit is cleared."
    rule = q.rule("requires.kyc")
    return [Reason(ReasonCode.SANCTIONS_SCREENING_HIT, message, rule, Effect.DENY)]


def _agreement(q: _Request) -> list[Reason]:
    ref = q.tier.requires.agreement
    if ref is None:
        return []
    rule = q.rule("requires.agreement")
    if (ref.id, ref.version) in q.subject.accepted_agreements:
        message = f"The requester accepted agreement '{ref.id}' version {ref.version}."
        return [Reason(ReasonCode.AGREEMENT_ACCEPTED, message, rule, Effect.ALLOW)]
    other = sorted(version for key, version in q.subject.accepted_agreements if key == ref.id)
    earlier = f"; they accepted only version {', '.join(map(str, other))}" if other else ""
    message = f"Agreement '{ref.id}' version {ref.version} must be accepted{earlier}."
    return [Reason(ReasonCode.AGREEMENT_NOT_ACCEPTED, message, rule, Effect.DENY)]


def _form(q: _Request) -> list[Reason]:
    name = q.tier.requires.form
    if name is None:
        return []
    rule, fields, values = q.rule("requires.form"), q.policy.forms.get(name), q.subject.form
    if fields is None or values is None:
        missing = "has not been submitted" if fields is not None else "is not defined by the policy"
        message = f"The '{name}' form {missing}."
        return [Reason(ReasonCode.FORM_INCOMPLETE, message, rule, Effect.DENY)]
    problems = validate_form(fields, values)
    if problems:
        message = f"The '{name}' form is incomplete: {' '.join(problems)}"
        return [Reason(ReasonCode.FORM_INCOMPLETE, message, rule, Effect.DENY)]
    message = f"The requester completed the '{name}' form."
    return [Reason(ReasonCode.FORM_COMPLETE, message, rule, Effect.ALLOW)]


def _affiliation(q: _Request) -> list[Reason]:
    rule = q.tier.requires.affiliation
    if rule is None:
        return []
    where, org, domain = q.rule("requires.affiliation"), q.subject.affiliation_org, _domain(q)
    if org is not None and org in rule.orgs:
        message = f"The requester's organization '{org}' is one this tier admits."
        return [Reason(ReasonCode.AFFILIATION_ALLOWED, message, where, Effect.ALLOW)]
    if domain is not None and any(_within(domain, suffix) for suffix in rule.email_domains):
        message = f"The requester's email domain '{domain}' is one this tier admits."
        return [Reason(ReasonCode.AFFILIATION_ALLOWED, message, where, Effect.ALLOW)]
    if org is None and domain is None:
        message = "The requester's organization and email domain are unknown; a reviewer"
        message += " must confirm the affiliation."
        return [Reason(ReasonCode.AFFILIATION_UNKNOWN, message, where, Effect.REVIEW)]
    message = f"Neither the requester's organization ({org or 'unknown'}) nor their email domain"
    message += f" ({domain or 'unknown'}) is one this tier admits."
    return [Reason(ReasonCode.AFFILIATION_NOT_ALLOWED, message, where, Effect.DENY)]


def _domain(q: _Request) -> str | None:
    email = q.subject.email
    if email is None or "@" not in email:
        return None
    return email.rsplit("@", 1)[1].strip().rstrip(".").lower() or None


def _within(domain: str, suffix: str) -> bool:
    return domain == suffix or domain.endswith(f".{suffix}")


def _jurisdiction(q: _Request) -> list[Reason]:
    rule = q.tier.requires.jurisdiction
    if rule is None:
        return []
    unavailable = [reason for ref in rule.references() for reason in _unavailable(q, ref)]
    if unavailable:
        return unavailable
    signals = [signal for signal in rule.signals if signal not in q.unobserved]
    return [reason for signal in signals for reason in _signal(q, rule, signal)]


def _unavailable(q: _Request, ref: str) -> list[Reason]:
    try:
        q.packs.resolve(ref)
    except (LookupError, ValueError) as exc:
        message = f"Jurisdiction reference '{ref}' cannot be evaluated ({exc}), so access is"
        message += " denied until the pack is available."
        rule = q.rule("requires.jurisdiction")
        return [Reason(ReasonCode.PACK_UNAVAILABLE, message, rule, Effect.DENY)]
    return []


def _signal(q: _Request, rule: JurisdictionRule, signal: Signal) -> list[Reason]:
    value, label = q.subject.signal(signal), _SIGNAL_LABELS[signal]
    where = q.rule("requires.jurisdiction.signals")
    if value is None:
        message = f"The rule needs the requester's {label}, which is not known; a reviewer must"
        message += " decide."
        return [Reason(ReasonCode.SIGNAL_MISSING, message, where, Effect.REVIEW)]
    code = value.strip().upper()
    if not is_jurisdiction_code(code):
        message = f"The requester's {label} {value!r} is not an assigned ISO 3166 code; a reviewer"
        message += " must decide."
        return [Reason(ReasonCode.SIGNAL_INVALID, message, where, Effect.REVIEW)]
    return (
        _listed(q, rule.deny, "deny", signal, code)
        or _listed(q, rule.review, "review", signal, code)
        or _listed(q, rule.allow, "allow", signal, code)
        or [_otherwise(q, rule, signal, code)]
    )


@dataclass(frozen=True)
class _Hit:
    """A match of a signal's code against one reference of one of the rule's lists."""

    kind: str
    index: int
    ref: str
    found: Match
    entry: PackEntry


def _listed(
    q: _Request, refs: tuple[str, ...], kind: str, signal: Signal, code: str
) -> list[Reason]:
    reasons = []
    for index, ref in enumerate(refs):
        found, entry = q.packs.match_entry(ref, code, q.day)
        if entry is not None:
            reasons.append(_listed_reason(q, signal, code, _Hit(kind, index, ref, found, entry)))
    return reasons


_LISTED = {
    "allow": (ReasonCode.JURISDICTION_ALLOWED, Effect.ALLOW, "allows"),
    "deny": (ReasonCode.JURISDICTION_DENIED, Effect.DENY, "denies"),
    "review": (ReasonCode.JURISDICTION_REVIEW, Effect.REVIEW, "sends to review"),
}


def _listed_reason(q: _Request, signal: Signal, code: str, hit: _Hit) -> Reason:
    where = q.rule(f"requires.jurisdiction.{hit.kind}[{hit.index}]")
    subject = f"The requester's {_SIGNAL_LABELS[signal]} '{code}'"
    listed = f"'{hit.entry.code}'" + (f" ({hit.entry.note})" if hit.entry.note else "")
    source = _source(q, hit.ref)
    if hit.found is Match.FULL:
        reason, effect, verb = _LISTED[hit.kind]
        if source is None:
            message = f"{subject} matches {listed}, which this tier's rule {verb} by name."
        else:
            message = f"{subject} matches {listed} on {source}, which this tier {verb}."
        return Reason(reason, message, where, effect)
    source = source or "this tier's rule"
    if hit.entry.code.startswith(f"{code}-"):
        message = f"{subject} is not precise enough to decide: {source} lists {listed},"
        message += f" which is only part of '{code}'."
    else:
        message = f"{subject} is not enough to decide: {source} covers only part of {listed}."
    message += " A reviewer must decide."
    return Reason(ReasonCode.JURISDICTION_REVIEW, message, where, Effect.REVIEW)


def _source(q: _Request, ref: str) -> str | None:
    target = q.packs.resolve(ref)
    if isinstance(target, ListRef):
        return f"list '{target.list_name}' of pack {target.pack_id} version {target.version}"
    return None


def _otherwise(q: _Request, rule: JurisdictionRule, signal: Signal, code: str) -> Reason:
    where = q.rule("requires.jurisdiction.otherwise")
    subject = f"The requester's {_SIGNAL_LABELS[signal]} '{code}' is on none of this tier's"
    if rule.otherwise is Effect.DENY:
        message = f"{subject} lists, and unlisted jurisdictions are denied."
        return Reason(ReasonCode.JURISDICTION_NOT_LISTED, message, where, Effect.DENY)
    if rule.otherwise is Effect.REVIEW:
        message = f"{subject} lists, and unlisted jurisdictions go to review."
        return Reason(ReasonCode.JURISDICTION_REVIEW, message, where, Effect.REVIEW)
    message = f"{subject} deny or review lists."
    return Reason(ReasonCode.JURISDICTION_ALLOWED, message, where, Effect.ALLOW)


def _packs(q: _Request) -> tuple[tuple[str, str, str], ...]:
    rule = q.tier.requires.jurisdiction
    return q.packs.used_by(rule.references()) if rule else ()
