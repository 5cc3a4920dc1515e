"""Release policies: the YAML a publisher writes, validated strictly into frozen dataclasses."""

import re
from dataclasses import dataclass, field
from datetime import timedelta
from fnmatch import fnmatchcase
from urllib.parse import urlsplit

from policies._document import Reader, child, read_document
from policies.errors import PolicyError, PolicyIssue
from policies.forms import FormField, validate_form
from policies.packs import (
    CUSTOM_PREFIX,
    JurisdictionPack,
    PackRegistry,
    parse_reference,
    read_pack,
)
from policies.units import format_duration
from policies.vocab import (
    ApprovalMode,
    Effect,
    FieldType,
    GrantKind,
    KycLevel,
    Signal,
    Stage,
)

__all__ = [
    "AffiliationRule",
    "Agreement",
    "AgreementRef",
    "Approval",
    "FormField",
    "JurisdictionRule",
    "Limits",
    "PolicyError",
    "PolicyIssue",
    "ReleasePolicy",
    "Requirements",
    "Tier",
    "Upstream",
    "is_relative_path",
    "parse_policy",
    "validate_form",
]

NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
NAME_HINT = "a name of lower-case letters, digits and '-' (at most 63 characters)"
_MODEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}")
_FIELD_NAME = re.compile(r"[a-z][a-z0-9_]{0,62}")
_AGREEMENT_REF = re.compile(r"([a-z0-9][a-z0-9-]{0,62})@([1-9][0-9]{0,8})")
_ORG = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}")
_DOMAIN = re.compile(r"\.?[a-z0-9-]+(\.[a-z0-9-]+)*")
_SECRET_REF = re.compile(r"(env|secret):[A-Za-z_][A-Za-z0-9_./-]{0,127}")
DEFAULT_SIGNALS = (Signal.NATIONALITY, Signal.RESIDENCE_COUNTRY)
DEFAULT_SIGNED_URL_TTL = timedelta(minutes=10)
MAX_SIGNED_URL_TTL = timedelta(hours=1)
_SERVING = frozenset({GrantKind.INFERENCE, GrantKind.WEIGHTS})
# At most one value in this many is marked: keeps a bf16 tensor's relative L2 change < 1e-3.
MARK_DENSITY = 128


def _compact(found: dict[str, object]) -> dict[str, object]:
    return {key: value for key, value in found.items() if value not in (None, [], ())}


def is_relative_path(path: str) -> bool:
    """Whether `path` is a safe repository-relative path or glob: not absolute, no `..`."""
    if not path or path.startswith(("/", "\\")) or re.match(r"[A-Za-z]:", path):
        return False
    return "\\" not in path and "\0" not in path and ".." not in path.split("/")


@dataclass(frozen=True)
class Agreement:
    """A versioned agreement a requester must accept, given inline or by file."""

    id: str
    version: int
    text: str | None = None
    text_file: str | None = None

    def to_dict(self) -> dict[str, object]:
        """Canonical JSON-ready form."""
        return _compact({"version": self.version, "text": self.text, "text_file": self.text_file})


@dataclass(frozen=True)
class AgreementRef:
    """A tier's reference to one exact version of a declared agreement."""

    id: str
    version: int

    def __str__(self) -> str:
        return f"{self.id}@{self.version}"


@dataclass(frozen=True)
class Approval:
    """Whether grants are automatic or decided by a number of reviewers."""

    mode: ApprovalMode = ApprovalMode.AUTO
    reviewers: int = 0

    def to_dict(self) -> object:
        """Canonical JSON-ready form: `auto`, or `{mode: manual, reviewers: n}`."""
        if self.mode is ApprovalMode.AUTO:
            return self.mode.value
        return {"mode": self.mode.value, "reviewers": self.reviewers}


@dataclass(frozen=True)
class JurisdictionRule:
    """Allow, deny and review lists of jurisdiction references, tested on several signals."""

    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()
    review: tuple[str, ...] = ()
    signals: tuple[Signal, ...] = DEFAULT_SIGNALS
    otherwise: Effect = Effect.ALLOW

    def references(self) -> tuple[str, ...]:
        """Every reference the rule uses, in deny, review, allow order."""
        return (*self.deny, *self.review, *self.allow)

    def to_dict(self) -> dict[str, object]:
        """Canonical JSON-ready form."""
        found = {"allow": list(self.allow), "deny": list(self.deny), "review": list(self.review)}
        signals = [signal.value for signal in self.signals]
        return _compact({**found, "signals": signals, "otherwise": self.otherwise.value})


@dataclass(frozen=True)
class AffiliationRule:
    """Organizations and email domains whose members may hold a tier."""

    orgs: tuple[str, ...] = ()
    email_domains: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, object]:
        """Canonical JSON-ready form."""
        return _compact({"orgs": list(self.orgs), "email_domains": list(self.email_domains)})


@dataclass(frozen=True)
class Requirements:
    """What a requester must satisfy; `explicit_empty` marks a deliberate `requires: {}`."""

    kyc: KycLevel = KycLevel.NONE
    kyc_max_age: timedelta | None = None
    agreement: AgreementRef | None = None
    form: str | None = None
    approval: Approval = field(default_factory=Approval)
    jurisdiction: JurisdictionRule | None = None
    affiliation: AffiliationRule | None = None
    explicit_empty: bool = False

    def to_dict(self) -> dict[str, object]:
        """Canonical JSON-ready form (`{}` for an explicitly empty set)."""
        if self.explicit_empty:
            return {}
        jurisdiction, affiliation = self.jurisdiction, self.affiliation
        found: dict[str, object] = {
            "kyc": self.kyc.value,
            "kyc_max_age": format_duration(self.kyc_max_age) if self.kyc_max_age else None,
            "agreement": str(self.agreement) if self.agreement else None,
            "form": self.form,
            "approval": self.approval.to_dict(),
            "jurisdiction": jurisdiction.to_dict() if jurisdiction else None,
            "affiliation": affiliation.to_dict() if affiliation else None,
        }
        return _compact(found)


@dataclass(frozen=True)
class Limits:
    """Usage limits of a tier; None means the tier sets no limit of that kind."""

    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    tokens_per_day: int | None = None
    tokens_per_month: int | None = None  # per UTC calendar month
    downloads_per_day: int | None = None
    bytes_per_day: int | None = None
    concurrent_downloads: int | None = None
    concurrent_requests: int | None = None

    def to_dict(self) -> dict[str, object]:
        """Canonical JSON-ready form (unset limits left out)."""
        return _compact(dict(vars(self)))


@dataclass(frozen=True, kw_only=True)
class Fingerprint:
    """Which files and tensors a tier marks per recipient, and how many values per tensor."""

    files: tuple[str, ...] = ("*",)
    tensors: tuple[str, ...] = ("*",)
    positions: int = 4096
    min_numel: int = 16384

    def stages_file(self, path: str) -> bool:
        """Whether `path` gets a per-grant copy (marked if safetensors); others are shared."""
        name = path.rsplit("/", 1)[-1]
        return any(fnmatchcase(path, g) or fnmatchcase(name, g) for g in self.files)

    def positions_for(self, tensor: str, numel: int) -> int:
        """How many values of the tensor to move (0: not marked); at most 1 in 128 values."""
        if numel < self.min_numel or not any(fnmatchcase(tensor, g) for g in self.tensors):
            return 0
        return min(self.positions, numel // MARK_DENSITY)

    def to_dict(self) -> object:
        """Canonical JSON-ready form: `true` for the defaults, else the settings."""
        if self == Fingerprint():
            return True
        found = dict(vars(self))
        return {k: list(v) if isinstance(v, tuple) else v for k, v in found.items()}


@dataclass(frozen=True, kw_only=True)
class Tier:
    """A release tier: what it grants, to whom, within which limits, in which stages."""

    name: str
    grants: frozenset[GrantKind]
    requires: Requirements
    opens_in: frozenset[Stage]
    files: tuple[str, ...] = ()
    limits: Limits = field(default_factory=Limits)
    grant_ttl: timedelta | None = None
    signed_url_ttl: timedelta = DEFAULT_SIGNED_URL_TTL
    fingerprint: Fingerprint | None = None

    @property
    def serves_model(self) -> bool:
        """Whether the tier grants weights or inference (what a freeze stops)."""
        return bool(self.grants & _SERVING)

    def allows_file(self, path: str) -> bool:
        """Whether holders may download the repository-relative `path` (needs a weights grant)."""
        if GrantKind.WEIGHTS not in self.grants or not is_relative_path(path):
            return False
        name = path.rsplit("/", 1)[-1]
        return not self.files or any(
            fnmatchcase(path, g) or fnmatchcase(name, g) for g in self.files
        )

    def to_dict(self) -> dict[str, object]:
        """Canonical JSON-ready form."""
        found: dict[str, object] = {
            "name": self.name,
            "grants": sorted(self.grants),
            "files": list(self.files),
            "requires": self.requires.to_dict(),
            "limits": self.limits.to_dict(),
            "grant_ttl": format_duration(self.grant_ttl) if self.grant_ttl else None,
            "signed_url_ttl": format_duration(self.signed_url_ttl),
            "opens_in": [stage.value for stage in Stage if stage in self.opens_in],
            "fingerprint": self.fingerprint.to_dict() if self.fingerprint else False,
        }
        return _compact(found)


@dataclass(frozen=True)
class Upstream:
    """The OpenAI-compatible server inference is proxied to; the key only by reference."""

    base_url: str
    api_key: str | None = None

    @property
    def api_key_ref(self) -> str | None:
        """The key's reference (`env:NAME` or `secret:NAME`), never the key itself."""
        return self.api_key

    def to_dict(self) -> dict[str, object]:
        """Canonical JSON-ready form."""
        return _compact({"base_url": self.base_url, "api_key": self.api_key})


@dataclass(frozen=True, kw_only=True)
class ReleasePolicy:
    """A model's validated release policy."""

    model: str
    stage: Stage
    tiers: tuple[Tier, ...]
    agreements: dict[str, Agreement] = field(default_factory=dict)
    forms: dict[str, tuple[FormField, ...]] = field(default_factory=dict)
    upstream: Upstream | None = None
    packs: tuple[JurisdictionPack, ...] = ()

    def tier(self, name: str) -> Tier | None:
        """The tier called `name`, or None."""
        return next((tier for tier in self.tiers if tier.name == name), None)

    def to_dict(self) -> dict[str, object]:
        """Canonical JSON-ready form; parsing it again yields an equal policy."""
        found: dict[str, object] = {
            "model": self.model,
            "stage": self.stage.value,
            "agreements": {key: value.to_dict() for key, value in self.agreements.items()},
            "forms": {key: [f.to_dict() for f in value] for key, value in self.forms.items()},
            "tiers": [tier.to_dict() for tier in self.tiers],
            "upstream": self.upstream.to_dict() if self.upstream else None,
            "packs": [_pack_document(pack) for pack in self.packs],
        }
        return _compact(found)


def _pack_document(pack: JurisdictionPack) -> dict[str, object]:
    """A policy's own pack as its author would write it: unset keys left out."""
    found = pack.to_dict()
    lists = {name: [e.to_dict() for e in entries.entries] for name, entries in pack.lists.items()}
    found["lists"] = {
        name: [{k: v for k, v in e.items() if v not in (None, False)} for e in entries]
        for name, entries in lists.items()
    }
    return {key: value for key, value in found.items() if value is not None}


@dataclass
class _Context:
    """What tier parsing needs besides the reader: the declarations tiers may reference."""

    r: Reader
    agreements: dict[str, Agreement]
    forms: dict[str, tuple[FormField, ...]]
    packs: PackRegistry | None


def parse_policy(text: str, packs: PackRegistry | None = None) -> ReleasePolicy:
    """Parse and validate a release policy; raise PolicyError listing every issue found."""
    data, r = read_document(text)
    optional = ("agreements", "forms", "upstream", "packs")
    m = r.mapping(data, "", ("model", "stage", "tiers"), optional)
    custom = _custom_packs(r, m.get("packs"), packs)
    registry = packs.with_custom(custom) if packs is not None else None
    c = _Context(r, _agreements(r, m.get("agreements")), _forms(r, m.get("forms")), registry)
    policy = ReleasePolicy(
        model=r.text(m.get("model"), "model", _MODEL, "a model name written org/name") or "",
        stage=r.choice(Stage, m.get("stage"), "stage", "stage") or Stage.INTERNAL,
        tiers=_tiers(c, m.get("tiers")),
        agreements=c.agreements,
        forms=c.forms,
        upstream=_upstream(r, m.get("upstream")),
        packs=custom,
    )
    if r.issues:
        raise PolicyError(r.issues)
    return policy


def _custom_packs(
    r: Reader, value: object, shipped: PackRegistry | None
) -> tuple[JurisdictionPack, ...]:
    """A policy's own packs: the shipped schema, ids starting `custom-`, each id once."""
    found: dict[str, JurisdictionPack] = {}
    for here, item in r.items(value, "packs"):
        pack, where = read_pack(r, item, here), child(here, "id")
        if not pack.id:
            continue
        if shipped is not None and shipped.get(pack.id) is not None:
            r.error(where, f"'{pack.id}' is a shipped pack; a policy's own pack cannot replace it")
        elif not pack.id.startswith(CUSTOM_PREFIX):
            message = f"a policy's own pack id must start with '{CUSTOM_PREFIX}', such as"
            r.error(where, f"{message} '{CUSTOM_PREFIX}{pack.id}'")
        elif pack.id in found:
            r.error(where, f"pack '{pack.id}' is defined twice")
        else:
            found[pack.id] = pack
    return tuple(found.values())


def _names(r: Reader, value: object, path: str) -> dict[str, object]:
    """A mapping keyed by names the author chose, keeping only well-formed names."""
    table = r.table(value, path)
    return {
        key: item for key, item in table.items() if r.text(key, child(path, key), NAME, NAME_HINT)
    }


def _agreements(r: Reader, value: object) -> dict[str, Agreement]:
    found = _names(r, value, "agreements").items()
    return {key: _agreement(r, key, body, child("agreements", key)) for key, body in found}


def _agreement(r: Reader, key: str, value: object, path: str) -> Agreement:
    m = r.mapping(value, path, ("version",), ("text", "text_file"))
    if isinstance(value, dict) and ("text" in m) == ("text_file" in m):
        r.error(path, "give exactly one of 'text' and 'text_file'")
    return Agreement(
        id=key,
        version=r.integer(m.get("version"), child(path, "version")) or 0,
        text=r.text(m.get("text"), child(path, "text")),
        text_file=_relative(r, m.get("text_file"), child(path, "text_file")),
    )


def _relative(r: Reader, value: object, path: str) -> str | None:
    found = r.text(value, path)
    if found is not None and not is_relative_path(found):
        r.error(path, f"{found!r} must be a relative path without '..'")
        return None
    return found


def _forms(r: Reader, value: object) -> dict[str, tuple[FormField, ...]]:
    found = _names(r, value, "forms").items()
    return {name: _form(r, fields, child("forms", name)) for name, fields in found}


def _form(r: Reader, value: object, path: str) -> tuple[FormField, ...]:
    fields = [(here, _form_field(r, item, here)) for here, item in r.items(value, path)]
    _check_unique(r, [(here, f.name) for here, f in fields], "field")
    return tuple(f for _, f in fields)


def _check_unique(r: Reader, named: list[tuple[str, str]], what: str) -> None:
    """Report every (path, name) whose name was already used earlier in the list."""
    seen: set[str] = set()
    for path, name in named:
        if name and name in seen:
            r.error(child(path, "name"), f"{what} name '{name}' is used twice")
        seen.add(name)


def _form_field(r: Reader, value: object, path: str) -> FormField:
    m = r.mapping(value, path, ("name", "type"), ("required", "max_length", "options"))
    kind = r.choice(FieldType, m.get("type"), child(path, "type"), "field type")
    if "max_length" in m and kind not in (FieldType.TEXT, None):
        r.error(child(path, "max_length"), "max_length applies only to text fields")
    if kind is not None and (kind is FieldType.SELECT) != ("options" in m):
        r.error(child(path, "options"), "select fields, and only they, need options")
    options = [
        r.text(item, here) for here, item in r.items(m.get("options"), child(path, "options"))
    ]
    return FormField(
        name=r.text(m.get("name"), child(path, "name"), _FIELD_NAME, "a field name") or "",
        type=kind or FieldType.TEXT,
        required=r.boolean(m.get("required"), child(path, "required")),
        max_length=r.integer(m.get("max_length"), child(path, "max_length")),
        options=tuple(option for option in options if option is not None),
    )


def _tiers(c: _Context, value: object) -> tuple[Tier, ...]:
    tiers = [(here, _tier(c, item, here)) for here, item in c.r.items(value, "tiers")]
    _check_unique(c.r, [(here, tier.name) for here, tier in tiers], "tier")
    return tuple(tier for _, tier in tiers)


_TIER_OPTIONAL = ("requires", "files", "limits", "grant_ttl", "signed_url_ttl", "fingerprint")


def _tier(c: _Context, value: object, path: str) -> Tier:
    r = c.r
    m = r.mapping(value, path, ("name", "grants", "opens_in"), _TIER_OPTIONAL)
    if isinstance(value, dict) and "requires" not in m:
        message = "every tier needs an explicit 'requires'; write 'requires: {}' for none"
        r.error(child(path, "requires"), message)
    grants = _grants(r, m.get("grants"), child(path, "grants"))
    tier = Tier(
        name=r.text(m.get("name"), child(path, "name"), NAME, NAME_HINT) or "",
        grants=grants,
        requires=_requirements(c, m.get("requires"), child(path, "requires")),
        opens_in=_opens_in(r, m.get("opens_in"), child(path, "opens_in"), grants),
        files=_files(r, m.get("files"), child(path, "files"), grants),
        limits=_limits(r, m.get("limits"), child(path, "limits")),
        grant_ttl=r.duration(m.get("grant_ttl"), child(path, "grant_ttl")),
        signed_url_ttl=_signed_url_ttl(r, m.get("signed_url_ttl"), child(path, "signed_url_ttl")),
        fingerprint=_fingerprint(r, m.get("fingerprint"), child(path, "fingerprint")),
    )
    if tier.fingerprint and GrantKind.WEIGHTS not in grants:
        r.error(child(path, "fingerprint"), "fingerprint applies only to tiers that grant weights")
    return tier


_FINGERPRINT = ("files", "tensors", "positions", "min_numel")


def _fingerprint(r: Reader, value: object, path: str) -> Fingerprint | None:
    if value is None or isinstance(value, bool):
        return Fingerprint() if r.boolean(value, path) else None
    m = r.mapping(value, path, optional=_FINGERPRINT)
    files = [
        _relative(r, item, here) for here, item in r.items(m.get("files"), child(path, "files"))
    ]
    tensors = [
        r.text(item, here) for here, item in r.items(m.get("tensors"), child(path, "tensors"))
    ]
    default = Fingerprint()
    return Fingerprint(
        files=tuple(f for f in files if f is not None) or default.files,
        tensors=tuple(t for t in tensors if t is not None) or default.tensors,
        positions=r.integer(m.get("positions"), child(path, "positions")) or default.positions,
        min_numel=r.integer(m.get("min_numel"), child(path, "min_numel")) or default.min_numel,
    )


def _grants(r: Reader, value: object, path: str) -> frozenset[GrantKind]:
    found = [r.choice(GrantKind, item, here, "grant") for here, item in r.items(value, path)]
    return frozenset(grant for grant in found if grant is not None)


def _opens_in(
    r: Reader, value: object, path: str, grants: frozenset[GrantKind]
) -> frozenset[Stage]:
    stages = {here: r.choice(Stage, item, here, "stage") for here, item in r.items(value, path)}
    for here, stage in stages.items():
        if stage is Stage.FROZEN and grants & _SERVING:
            r.error(here, "a tier that grants weights or inference cannot open in 'frozen'")
    return frozenset(stage for stage in stages.values() if stage is not None)


def _files(r: Reader, value: object, path: str, grants: frozenset[GrantKind]) -> tuple[str, ...]:
    if value is not None and GrantKind.WEIGHTS not in grants:
        r.error(path, "files applies only to tiers that grant weights")
    globs = [_relative(r, item, here) for here, item in r.items(value, path)]
    return tuple(glob for glob in globs if glob is not None)


_LIMITS = tuple(Limits.__dataclass_fields__)


def _limits(r: Reader, value: object, path: str) -> Limits:
    if value is None:
        return Limits()
    m = r.mapping(value, path, optional=_LIMITS)
    found = {
        key: r.integer(m.get(key), child(path, key)) for key in _LIMITS if key != "bytes_per_day"
    }
    return Limits(
        **found, bytes_per_day=r.byte_size(m.get("bytes_per_day"), child(path, "bytes_per_day"))
    )


def _signed_url_ttl(r: Reader, value: object, path: str) -> timedelta:
    ttl = r.duration(value, path) or DEFAULT_SIGNED_URL_TTL
    if ttl > MAX_SIGNED_URL_TTL:
        r.error(path, "must be at most 1h: signed URLs must die within minutes")
    return ttl


_REQUIREMENTS = (
    "kyc",
    "kyc_max_age",
    "agreement",
    "form",
    "approval",
    "jurisdiction",
    "affiliation",
)


def _requirements(c: _Context, value: object, path: str) -> Requirements:
    if value == {}:
        return Requirements(explicit_empty=True)
    m = c.r.mapping(value, path, optional=_REQUIREMENTS) if value is not None else {}
    kyc = c.r.choice(KycLevel, m.get("kyc"), child(path, "kyc"), "KYC level") or KycLevel.NONE
    max_age = c.r.duration(m.get("kyc_max_age"), child(path, "kyc_max_age"))
    if max_age is not None and kyc is KycLevel.NONE:
        c.r.error(child(path, "kyc_max_age"), "kyc_max_age needs a kyc level other than none")
    return Requirements(
        kyc=kyc,
        kyc_max_age=max_age,
        agreement=_agreement_ref(c, m.get("agreement"), child(path, "agreement")),
        form=_form_ref(c, m.get("form"), child(path, "form")),
        approval=_approval(c.r, m.get("approval"), child(path, "approval")),
        jurisdiction=_jurisdiction(c, m.get("jurisdiction"), child(path, "jurisdiction")),
        affiliation=_affiliation(c.r, m.get("affiliation"), child(path, "affiliation")),
    )


def _agreement_ref(c: _Context, value: object, path: str) -> AgreementRef | None:
    hint = "an agreement reference written id@version, such as acme-aup@2"
    text = c.r.text(value, path, _AGREEMENT_REF, hint)
    if text is None:
        return None
    agreement_id, _, version = text.partition("@")
    ref = AgreementRef(agreement_id, int(version))
    declared = c.agreements.get(ref.id)
    if declared is None:
        c.r.error(path, f"agreement '{ref.id}' is not declared under 'agreements'")
    elif declared.version != ref.version:
        message = (
            f"agreement '{ref.id}' is declared at version {declared.version}, not {ref.version}"
        )
        c.r.error(path, message)
    return ref


def _form_ref(c: _Context, value: object, path: str) -> str | None:
    name = c.r.text(value, path, NAME, NAME_HINT)
    if name is not None and name not in c.forms:
        c.r.error(path, f"form '{name}' is not declared under 'forms'")
    return name


def _approval(r: Reader, value: object, path: str) -> Approval:
    if value is None or isinstance(value, str):
        mode = r.choice(ApprovalMode, value, path, "approval mode") or ApprovalMode.AUTO
        return Approval(mode, 1 if mode is ApprovalMode.MANUAL else 0)
    m = r.mapping(value, path, ("mode",), ("reviewers",))
    chosen = r.choice(ApprovalMode, m.get("mode"), child(path, "mode"), "approval mode")
    reviewers = r.integer(m.get("reviewers"), child(path, "reviewers"))
    if reviewers is not None and chosen is ApprovalMode.AUTO:
        r.error(child(path, "reviewers"), "reviewers applies only to manual approval")
    if chosen is ApprovalMode.MANUAL:
        return Approval(chosen, reviewers or 1)
    return Approval()


_JURISDICTION = ("allow", "deny", "review", "signals", "otherwise")


def _jurisdiction(c: _Context, value: object, path: str) -> JurisdictionRule | None:
    if value is None:
        return None
    m = c.r.mapping(value, path, optional=_JURISDICTION)
    lists = {
        key: _references(c, m.get(key), child(path, key)) for key in ("allow", "deny", "review")
    }
    if isinstance(value, dict) and not any(key in m for key in lists):
        c.r.error(path, "name at least one of allow, deny or review")
    default = Effect.DENY if lists["allow"] else Effect.ALLOW
    otherwise = c.r.choice(Effect, m.get("otherwise"), child(path, "otherwise"), "effect")
    signals = _signals(c.r, m.get("signals"), child(path, "signals"))
    return JurisdictionRule(**lists, signals=signals, otherwise=otherwise or default)


def _references(c: _Context, value: object, path: str) -> tuple[str, ...]:
    refs = [_reference(c, item, here) for here, item in c.r.items(value, path)]
    return tuple(ref for ref in refs if ref is not None)


def _reference(c: _Context, value: object, path: str) -> str | None:
    ref = c.r.text(value, path)
    if ref is None:
        return None
    try:
        c.packs.resolve(ref) if c.packs is not None else parse_reference(ref)
    except (LookupError, ValueError) as exc:
        c.r.error(path, str(exc))
        return None
    return ref


def _signals(r: Reader, value: object, path: str) -> tuple[Signal, ...]:
    if value is None:
        return DEFAULT_SIGNALS
    found = [r.choice(Signal, item, here, "signal") for here, item in r.items(value, path)]
    return tuple(dict.fromkeys(signal for signal in found if signal is not None))


def _affiliation(r: Reader, value: object, path: str) -> AffiliationRule | None:
    if value is None:
        return None
    m = r.mapping(value, path, optional=("orgs", "email_domains"))
    orgs = _texts(r, m.get("orgs"), child(path, "orgs"), _ORG, "an organization slug")
    hint = "an email domain such as example.edu"
    domains = _texts(r, m.get("email_domains"), child(path, "email_domains"), _DOMAIN, hint)
    if isinstance(value, dict) and not (orgs or domains):
        r.error(path, "name at least one of orgs or email_domains")
    return AffiliationRule(orgs, tuple(domain.lstrip(".") for domain in domains))


def _texts(
    r: Reader, value: object, path: str, pattern: re.Pattern[str], hint: str
) -> tuple[str, ...]:
    found = [r.text(item, here, pattern, hint) for here, item in r.items(value, path)]
    return tuple(text for text in found if text is not None)


def _upstream(r: Reader, value: object) -> Upstream | None:
    if value is None:
        return None
    m = r.mapping(value, "upstream", ("base_url",), ("api_key",))
    return Upstream(
        base_url=_base_url(r, m.get("base_url"), "upstream.base_url") or "",
        api_key=_secret_ref(r, m.get("api_key"), "upstream.api_key"),
    )


def _base_url(r: Reader, value: object, path: str) -> str | None:
    url = r.text(value, path)
    parts = urlsplit(url or "")
    if url is not None and (parts.scheme not in ("http", "https") or not parts.hostname):
        r.error(path, "must be an http:// or https:// URL")
    elif url is not None and (parts.username or parts.password or parts.query):
        r.error(path, "must not carry credentials or a query; give the key as api_key: env:NAME")
    else:
        return url
    return None


def _secret_ref(r: Reader, value: object, path: str) -> str | None:
    # Never echo the value: it may be a pasted key.
    if value is not None and not (isinstance(value, str) and _SECRET_REF.fullmatch(value)):
        r.error(path, "must be a reference such as env:NAME or secret:NAME, never the key itself")
        return None
    return value if isinstance(value, str) else None
