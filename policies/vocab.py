"""Vocabularies of the policy engine: every value a policy, pack or decision may carry."""

from enum import StrEnum


class ApprovalMode(StrEnum):
    """How a request that meets a tier's requirements becomes a grant."""

    AUTO = "auto"
    MANUAL = "manual"


class Effect(StrEnum):
    """What a decision, or one reason inside it, does to a request."""

    ALLOW = "allow"
    DENY = "deny"
    REVIEW = "review"


class FieldType(StrEnum):
    """Input types a request form field may have."""

    CHECKBOX = "checkbox"
    COUNTRY = "country"
    DATE = "date"
    SELECT = "select"
    TEXT = "text"


class GrantKind(StrEnum):
    """What a tier gives its holders."""

    INFERENCE = "inference"
    METADATA = "metadata"
    WEIGHTS = "weights"


class KycLevel(StrEnum):
    """Identity verification levels; declared weakest first, so declaration order is the rank."""

    NONE = "none"
    EMAIL = "email"
    IDENTITY = "identity"
    INSTITUTION = "institution"

    @property
    def rank(self) -> int:
        """Position of this level in the order none < email < identity < institution."""
        return _KYC_RANK[self]


_KYC_RANK = {level: rank for rank, level in enumerate(KycLevel)}


def kyc_at_least(have: KycLevel, need: KycLevel) -> bool:
    """Whether verification level `have` satisfies a requirement of `need`."""
    return have.rank >= need.rank


class Match(StrEnum):
    """How a jurisdiction code relates to a pack list or a literal code."""

    FULL = "full"
    NONE = "none"
    PARTIAL = "partial"


class PackStatus(StrEnum):
    """Whether a jurisdiction pack describes rules currently enforced by their authority."""

    ACTIVE = "active"
    NOT_ENFORCED = "not_enforced"
    RETIRED = "retired"


class ReasonCode(StrEnum):
    """Stable codes of decision reasons: `<subject>_<outcome>`."""

    AFFILIATION_ALLOWED = "affiliation_allowed"
    AFFILIATION_NOT_ALLOWED = "affiliation_not_allowed"
    AFFILIATION_UNKNOWN = "affiliation_unknown"
    AGREEMENT_ACCEPTED = "agreement_accepted"
    AGREEMENT_NOT_ACCEPTED = "agreement_not_accepted"
    APPROVAL_REQUIRED = "approval_required"
    FORM_COMPLETE = "form_complete"
    FORM_INCOMPLETE = "form_incomplete"
    JURISDICTION_ALLOWED = "jurisdiction_allowed"
    JURISDICTION_DENIED = "jurisdiction_denied"
    JURISDICTION_NOT_LISTED = "jurisdiction_not_listed"
    JURISDICTION_REVIEW = "jurisdiction_review"
    KYC_EXPIRED = "kyc_expired"
    KYC_LEVEL_INSUFFICIENT = "kyc_level_insufficient"
    KYC_LEVEL_MET = "kyc_level_met"
    KYC_TOO_OLD = "kyc_too_old"
    MODEL_FROZEN = "model_frozen"
    NO_REQUIREMENTS = "no_requirements"
    PACK_UNAVAILABLE = "pack_unavailable"
    REQUIREMENTS_MET = "requirements_met"
    SANCTIONS_SCREENING_HIT = "sanctions_screening_hit"
    SIGNAL_INVALID = "signal_invalid"
    SIGNAL_MISSING = "signal_missing"
    STAGE_CLOSED = "stage_closed"
    TIER_UNKNOWN = "tier_unknown"


class Signal(StrEnum):
    """Facts about a requester that jurisdiction rules can test."""

    DOCUMENT_COUNTRY = "document_country"
    NATIONALITY = "nationality"
    ORG_HQ_COUNTRY = "org_hq_country"
    REQUEST_COUNTRY = "request_country"
    RESIDENCE_COUNTRY = "residence_country"


class Stage(StrEnum):
    """Release stages of a model; declared in lifecycle order."""

    INTERNAL = "internal"
    RESEARCH_PREVIEW = "research-preview"
    LIMITED = "limited"
    GENERAL = "general"
    FROZEN = "frozen"
