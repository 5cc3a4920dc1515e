"""A tier's requirements and grants in plain words, for people rather than programs."""

from __future__ import annotations

from policies import KycLevel
from policies.schema import Requirements, Tier
from policies.units import format_duration
from policies.vocab import ApprovalMode

KYC_WORDS = {
    KycLevel.NONE: "no identity verification",
    KycLevel.EMAIL: "a confirmed email address",
    KycLevel.IDENTITY: "a verified government identity document",
    KycLevel.INSTITUTION: "verification by a reviewer of the publisher (an institution check)",
}
GRANT_WORDS = {
    "inference": "use the model through the inference API",
    "metadata": "read the model card and file list",
    "weights": "download the weights",
}


def grants_in_words(tier: Tier) -> list[str]:
    """What holding the tier lets you do."""
    return [GRANT_WORDS.get(str(kind), str(kind)) for kind in sorted(tier.grants)]


def requirements_in_words(tier: Tier) -> list[str]:
    """Each requirement of the tier as a sentence."""
    req = tier.requires
    if req.explicit_empty:
        return ["Nothing: anyone signed in gets this tier at once."]
    found = _identity(req) + _agreement_and_form(req) + _jurisdiction(req) + _affiliation(req)
    return [*found, _approval(req)]


def _identity(req: Requirements) -> list[str]:
    if req.kyc is KycLevel.NONE:
        return []
    age = f", done within the last {format_duration(req.kyc_max_age)}" if req.kyc_max_age else ""
    return [f"Identity: {KYC_WORDS[req.kyc]}{age}."]


def _agreement_and_form(req: Requirements) -> list[str]:
    found = []
    if req.agreement:
        found.append(f"Accept the agreement '{req.agreement.id}', version {req.agreement.version}.")
    if req.form:
        found.append(f"Fill in the request form '{req.form}'.")
    return found


def _jurisdiction(req: Requirements) -> list[str]:
    rule = req.jurisdiction
    if rule is None:
        return []
    checked = ", ".join(str(s).replace("_", " ") for s in rule.signals)
    found = []
    if rule.deny:
        found.append(f"Not available under: {', '.join(rule.deny)} (checked on: {checked}).")
    if rule.allow:
        found.append(f"Only available under: {', '.join(rule.allow)} (checked on: {checked}).")
    if rule.review:
        found.append(f"A reviewer decides for: {', '.join(rule.review)}.")
    return found


def _affiliation(req: Requirements) -> list[str]:
    rule = req.affiliation
    if rule is None:
        return []
    parts = [*(f"organization {o}" for o in rule.orgs)]
    parts += [f"an email address at {d}" for d in rule.email_domains]
    return [f"Affiliation: one of {', '.join(parts)}."]


def _approval(req: Requirements) -> str:
    if req.approval.mode is ApprovalMode.AUTO:
        return "Granted at once when every requirement is met."
    n = req.approval.reviewers
    return f"Then {n} reviewer{'s' if n != 1 else ''} of the publisher must approve."


def duration(tier: Tier) -> str:
    """How long a grant of the tier lasts."""
    return format_duration(tier.grant_ttl) if tier.grant_ttl else "no fixed end"
