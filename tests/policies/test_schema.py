"""Release policy schema: strict validation with paths and lines, and the parsed shapes."""

import json
from datetime import timedelta
from pathlib import Path
from typing import NamedTuple

import pytest
import yaml

from policies import (
    ApprovalMode,
    Effect,
    FieldType,
    Fingerprint,
    FormField,
    GrantKind,
    KycLevel,
    PolicyError,
    PolicyIssue,
    Signal,
    Stage,
    load_packs,
    parse_byte_size,
    parse_duration,
    parse_policy,
    validate_form,
)
from policies.units import format_duration

EXAMPLE = (Path(__file__).parent / "data" / "release-policy.yaml").read_text(encoding="utf-8")
PACKS = load_packs()

BASE = """\
model: acme/small
stage: limited
agreements:
  aup:
    version: 2
    text: Be kind to the weights.
forms:
  research:
    - {name: intended_use, type: text, required: true}
tiers:
  - name: card
    grants: [metadata]
    requires: {}
    opens_in: [limited]
  - name: weights
    grants: [metadata, weights]
    files: ["*.safetensors"]
    requires:
      kyc: identity
      agreement: aup@2
      form: research
      approval: {mode: manual, reviewers: 2}
      jurisdiction:
        deny: [pack:us-ofac-comprehensive]
    limits: {bytes_per_day: 400GB}
    grant_ttl: 90d
    opens_in: [limited, general]
upstream:
  base_url: https://vllm.example/v1
  api_key: env:VLLM_KEY
"""


def line_of(text: str, marker: str | int) -> int:
    """The 1-based line of the first occurrence of `marker` in `text` (or `marker` itself)."""
    if isinstance(marker, int):
        return marker
    return next(n for n, line in enumerate(text.splitlines(), 1) if marker in line)


class Bad(NamedTuple):
    id: str
    old: str
    new: str
    path: str
    marker: str | int  # text on the line the issue must point at, or that line
    message: str  # a fragment of the message


BAD = [
    Bad(
        "missing-requires",
        "    requires: {}\n",
        "",
        "tiers[0].requires",
        "- name: card",
        "explicit",
    ),
    Bad(
        "unknown-key-typo",
        "grant_ttl: 90d",
        "grant_tll: 90d",
        "tiers[1].grant_tll",
        "grant_tll",
        "did you mean 'grant_ttl'",
    ),
    Bad(
        "unknown-top-key",
        "stage: limited",
        "stage: limited\nstages: [x]",
        "stages",
        "stages",
        "unknown",
    ),
    Bad(
        "unknown-stage", "stage: limited", "stage: beta", "stage", "stage: beta", "research-preview"
    ),
    Bad("missing-stage", "stage: limited\n", "", "stage", "model:", "required"),
    Bad(
        "unknown-stage-in-opens-in",
        "[limited, general]",
        "[limited, genral]",
        "tiers[1].opens_in[1]",
        "genral",
        "allowed",
    ),
    Bad(
        "bad-duration",
        "grant_ttl: 90d",
        "grant_ttl: 90 days",
        "tiers[1].grant_ttl",
        "90 days",
        "90d",
    ),
    Bad("zero-duration", "grant_ttl: 90d", "grant_ttl: 0d", "tiers[1].grant_ttl", "0d", "duration"),
    Bad(
        "bad-byte-size",
        "bytes_per_day: 400GB",
        "bytes_per_day: 400 gigs",
        "tiers[1].limits.bytes_per_day",
        "400 gigs",
        "byte size",
    ),
    Bad(
        "negative-limit",
        "{bytes_per_day: 400GB}",
        "{downloads_per_day: -1}",
        "tiers[1].limits.downloads_per_day",
        "downloads_per_day",
        "at least 1",
    ),
    Bad(
        "zero-monthly-quota",
        "{bytes_per_day: 400GB}",
        "{tokens_per_month: 0}",
        "tiers[1].limits.tokens_per_month",
        "tokens_per_month",
        "at least 1",
    ),
    Bad(
        "agreement-version-mismatch",
        "agreement: aup@2",
        "agreement: aup@1",
        "tiers[1].requires.agreement",
        "aup@1",
        "declared at version 2",
    ),
    Bad(
        "agreement-undeclared",
        "agreement: aup@2",
        "agreement: tos@2",
        "tiers[1].requires.agreement",
        "tos@2",
        "not declared",
    ),
    Bad(
        "agreement-ref-format",
        "agreement: aup@2",
        "agreement: aup",
        "tiers[1].requires.agreement",
        "agreement: aup",
        "id@version",
    ),
    Bad(
        "agreement-text-and-file",
        "    text: Be kind to the weights.",
        "    text: Be kind.\n    text_file: aup.md",
        "agreements.aup",
        "  aup:",
        "exactly one",
    ),
    Bad(
        "undeclared-form",
        "form: research",
        "form: survey",
        "tiers[1].requires.form",
        "survey",
        "not declared",
    ),
    Bad("glob-parent", '"*.safetensors"', '"../x"', "tiers[1].files[0]", "../x", "relative"),
    Bad(
        "glob-absolute", '"*.safetensors"', '"/abs/*.bin"', "tiers[1].files[0]", "/abs", "relative"
    ),
    Bad(
        "files-without-weights",
        "    grants: [metadata]\n",
        '    grants: [metadata]\n    files: ["*.json"]\n',
        "tiers[0].files",
        "*.json",
        "weights",
    ),
    Bad(
        "literal-api-key",
        "api_key: env:VLLM_KEY",
        "api_key: sk-live-0123456789abcdef",
        "upstream.api_key",
        "sk-live",
        "env:NAME",
    ),
    Bad(
        "credentials-in-url",
        "https://vllm.example/v1",
        "https://user:hunter2@vllm.example/v1",
        "upstream.base_url",
        "hunter2",
        "credentials",
    ),
    Bad(
        "duplicate-tier",
        "name: weights",
        "name: card",
        "tiers[1].name",
        line_of(BASE, "name: weights"),
        "twice",
    ),
    Bad("bad-tier-name", "name: weights", "name: Weights Tier", "tiers[1].name", "Weights", "name"),
    Bad(
        "frozen-weights-tier",
        "[limited, general]",
        "[limited, frozen]",
        "tiers[1].opens_in[1]",
        "frozen",
        "frozen",
    ),
    Bad(
        "empty-grants", "grants: [metadata]", "grants: []", "tiers[0].grants", "grants: []", "empty"
    ),
    Bad(
        "unknown-grant",
        "grants: [metadata]",
        "grants: [metadta]",
        "tiers[0].grants[0]",
        "metadta",
        "allowed",
    ),
    Bad(
        "missing-opens-in",
        "    opens_in: [limited]\n",
        "",
        "tiers[0].opens_in",
        "- name: card",
        "required",
    ),
    Bad("empty-tiers", BASE[BASE.index("tiers:") :], "tiers: []\n", "tiers", "tiers: []", "empty"),
    Bad("bad-model", "model: acme/small", "model: acme", "model", "model:", "org/name"),
    Bad(
        "unknown-kyc",
        "kyc: identity",
        "kyc: passport",
        "tiers[1].requires.kyc",
        "passport",
        "institution",
    ),
    Bad("null-value", "kyc: identity", "kyc:", "tiers[1].requires.kyc", "kyc:", "no value"),
    Bad(
        "zero-reviewers",
        "reviewers: 2",
        "reviewers: 0",
        "tiers[1].requires.approval.reviewers",
        "reviewers",
        "at least 1",
    ),
    Bad(
        "reviewers-with-auto",
        "mode: manual",
        "mode: auto",
        "tiers[1].requires.approval.reviewers",
        "reviewers",
        "manual",
    ),
    Bad(
        "unknown-approval",
        "approval: {mode: manual, reviewers: 2}",
        "approval: sometimes",
        "tiers[1].requires.approval",
        "sometimes",
        "auto, manual",
    ),
    Bad(
        "unknown-signal",
        "deny: [pack:us-ofac-comprehensive]",
        "deny: [pack:us-ofac-comprehensive]\n        signals: [ip_country]",
        "tiers[1].requires.jurisdiction.signals[0]",
        "ip_country",
        "request_country",
    ),
    Bad(
        "unknown-otherwise",
        "deny: [pack:us-ofac-comprehensive]",
        "deny: [pack:us-ofac-comprehensive]\n        otherwise: maybe",
        "tiers[1].requires.jurisdiction.otherwise",
        "maybe",
        "allow, deny, review",
    ),
    Bad(
        "jurisdiction-without-lists",
        "deny: [pack:us-ofac-comprehensive]",
        "signals: [nationality]",
        "tiers[1].requires.jurisdiction",
        "jurisdiction:",
        "at least one",
    ),
    Bad(
        "not-an-iso-code",
        "pack:us-ofac-comprehensive]",
        "UK]",
        "tiers[1].requires.jurisdiction.deny[0]",
        "UK",
        "ISO 3166",
    ),
    Bad(
        "lowercase-code",
        "pack:us-ofac-comprehensive]",
        "cn]",
        "tiers[1].requires.jurisdiction.deny[0]",
        "cn]",
        "ISO 3166",
    ),
    Bad(
        "signed-url-ttl-too-long",
        "grant_ttl: 90d",
        "signed_url_ttl: 2h",
        "tiers[1].signed_url_ttl",
        "signed_url_ttl",
        "1h",
    ),
    Bad(
        "fingerprint-without-weights",
        "    grants: [metadata]\n",
        "    grants: [metadata]\n    fingerprint: true\n",
        "tiers[0].fingerprint",
        "fingerprint",
        "weights",
    ),
    Bad(
        "fingerprint-unknown-setting",
        "grant_ttl: 90d",
        "grant_ttl: 90d\n    fingerprint: {positions: 64, density: 2}",
        "tiers[1].fingerprint.density",
        "fingerprint",
        "density",
    ),
    Bad(
        "fingerprint-zero-positions",
        "grant_ttl: 90d",
        "grant_ttl: 90d\n    fingerprint: {positions: 0}",
        "tiers[1].fingerprint.positions",
        "fingerprint",
        "at least 1",
    ),
    Bad(
        "fingerprint-not-a-mapping",
        "grant_ttl: 90d",
        "grant_ttl: 90d\n    fingerprint: sometimes",
        "tiers[1].fingerprint",
        "fingerprint",
        "mapping",
    ),
    Bad(
        "fingerprint-files-escape",
        "grant_ttl: 90d",
        "grant_ttl: 90d\n    fingerprint: {files: [../x.safetensors]}",
        "tiers[1].fingerprint.files[0]",
        "fingerprint",
        "relative",
    ),
    Bad(
        "affiliation-empty",
        "form: research",
        "form: research\n      affiliation: {}",
        "tiers[1].requires.affiliation",
        "affiliation",
        "at least one",
    ),
    Bad(
        "duplicate-yaml-key",
        "grant_ttl: 90d",
        "grant_ttl: 90d\n    grant_ttl: 30d",
        "tiers[1].grant_ttl",
        "30d",
        "duplicate",
    ),
    Bad(
        "select-without-options",
        "type: text, required: true}",
        "type: select, required: true}",
        "forms.research[0].options",
        "select",
        "options",
    ),
    Bad(
        "unsupported-tag",
        "text: Be kind to the weights.",
        "text: !!python/name:os.system echo",
        "agreements.aup.text",
        "python",
        "unsupported",
    ),
]


@pytest.mark.parametrize("bad", BAD, ids=[bad.id for bad in BAD])
def test_invalid_policy_reports_path_and_line(bad: Bad) -> None:
    assert bad.old in BASE, "the case must change the base policy"
    text = BASE.replace(bad.old, bad.new, 1)
    with pytest.raises(PolicyError) as caught:
        parse_policy(text, packs=PACKS)
    issues = [(issue.path, issue.line) for issue in caught.value.issues]
    assert (bad.path, line_of(text, bad.marker)) in issues, caught.value.issues
    (issue,) = [issue for issue in caught.value.issues if issue.path == bad.path]
    assert bad.message in issue.message


def test_the_base_policy_is_valid() -> None:
    policy = parse_policy(BASE, packs=PACKS)
    assert [tier.name for tier in policy.tiers] == ["card", "weights"]


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        ("pack:us-ofac", "unknown jurisdiction pack 'us-ofac'"),
        ("pack:us-bis-ai-diffusion-2025#tier2", "has no list 'tier2'"),
        ("pack:us-bis-ai-diffusion-2025", "has no list 'default'"),
        ("pack:EU", "well-formed"),
    ],
)
def test_unknown_pack_references_need_a_registry(ref: str, message: str) -> None:
    text = BASE.replace("pack:us-ofac-comprehensive", ref)
    with pytest.raises(PolicyError) as caught:
        parse_policy(text, packs=PACKS)
    (issue,) = caught.value.issues
    assert issue.path == "tiers[1].requires.jurisdiction.deny[0]"
    assert issue.line == line_of(text, ref)
    assert message in issue.message
    if ref != "pack:EU":
        assert parse_policy(text).tier("weights") is not None  # without packs: syntax only


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        ("model: a/b\nstage: limited\ntiers:\n  - name: card\n    grants: [metadata\n", 6, "']'"),
        ("model: a/b\nstage: limited\n  bad: indent\n", 3, "not allowed here"),
        ("model: a/b\n\tstage: limited\n", 2, "'\\t'"),
        ('model: a/b\nstage: "limited\ntiers: []\n', 4, "end of stream"),
        ("model: a/b\n---\nmodel: c/d\n", 2, "single document"),
        ("", 1, "empty"),
    ],
    ids=["unclosed-list", "bad-indent", "tab", "unclosed-quote", "two-documents", "empty"],
)
def test_yaml_syntax_errors_give_the_line(text: str, line: int, fragment: str) -> None:
    with pytest.raises(PolicyError) as caught:
        parse_policy(text)
    (issue,) = caught.value.issues
    assert (issue.path, issue.line) == ("", line)
    assert fragment in issue.message


def test_every_issue_is_collected() -> None:
    text = BASE.replace("stage: limited", "stage: beta").replace("aup@2", "aup@3")
    text = text.replace("grant_ttl: 90d", "grant_tll: 90d").replace("400GB", "lots")
    with pytest.raises(PolicyError) as caught:
        parse_policy(text)
    paths = {issue.path for issue in caught.value.issues}
    expected = {"stage", "tiers[1].requires.agreement", "tiers[1].grant_tll"}
    assert paths == expected | {"tiers[1].limits.bytes_per_day"}
    assert "tiers[1].grant_tll (line 26)" in str(caught.value)


def test_literal_api_key_is_never_echoed() -> None:
    secret = "sk-live-0123456789abcdef"
    with pytest.raises(PolicyError) as caught:
        parse_policy(BASE.replace("env:VLLM_KEY", secret))
    assert secret not in str(caught.value)


def test_example_policy_parses() -> None:
    policy = parse_policy(EXAMPLE, packs=PACKS)
    assert policy.model == "acme/frontier-70b" and policy.stage is Stage.RESEARCH_PREVIEW
    assert [tier.name for tier in policy.tiers] == ["card", "api-researcher", "weights-vetted"]
    assert policy.agreements["acme-research-aup"].version == 2
    assert [field.name for field in policy.forms["research"]][-1] == "compute_environment"
    assert policy.upstream is not None and policy.upstream.api_key_ref == "env:ACME_VLLM_KEY"
    assert policy.tier("nope") is None


def test_example_tiers() -> None:
    policy = parse_policy(EXAMPLE, packs=PACKS)
    card, api, weights = policy.tiers
    assert card.requires.explicit_empty and card.grants == {GrantKind.METADATA}
    assert not api.requires.explicit_empty and api.requires.kyc is KycLevel.IDENTITY
    assert api.grant_ttl == timedelta(days=180) and api.signed_url_ttl == timedelta(minutes=10)
    assert api.limits.tokens_per_day == 2_000_000 and api.limits.bytes_per_day is None
    assert weights.requires.approval.mode is ApprovalMode.MANUAL
    assert weights.requires.approval.reviewers == 2
    assert weights.limits.bytes_per_day == 400 * 10**9
    assert weights.signed_url_ttl == timedelta(minutes=15) and weights.fingerprint
    assert weights.opens_in == {Stage.LIMITED, Stage.GENERAL}


def test_example_jurisdiction_defaults() -> None:
    policy = parse_policy(EXAMPLE, packs=PACKS)
    api_rule = policy.tiers[1].requires.jurisdiction
    weights_rule = policy.tiers[2].requires.jurisdiction
    assert api_rule is not None and weights_rule is not None
    assert api_rule.signals == (Signal.NATIONALITY, Signal.RESIDENCE_COUNTRY)
    assert api_rule.otherwise is Effect.ALLOW  # no allow list: unlisted is allowed
    assert weights_rule.otherwise is Effect.DENY  # an allow list: unlisted is denied
    assert len(weights_rule.signals) == 5


def test_a_monthly_token_quota_parses_and_round_trips() -> None:
    source = BASE.replace("{bytes_per_day: 400GB}", "{tokens_per_month: 5000000}")
    limits = parse_policy(source).tiers[1].limits
    assert limits.tokens_per_month == 5_000_000 and limits.tokens_per_day is None
    assert limits.to_dict() == {"tokens_per_month": 5_000_000}


def test_to_dict_round_trips() -> None:
    policy = parse_policy(EXAMPLE, packs=PACKS)
    document = json.loads(json.dumps(policy.to_dict()))
    assert parse_policy(yaml.safe_dump(document), packs=PACKS) == policy
    assert document["tiers"][0]["requires"] == {}


@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        ("", None),
        ("\n    fingerprint: false", None),
        ("\n    fingerprint: true", Fingerprint()),
        (
            "\n    fingerprint:\n      files: [model-0000*.safetensors]\n      tensors: ['*.mlp.*']"
            "\n      positions: 1000\n      min_numel: 100000",
            Fingerprint(
                files=("model-0000*.safetensors",),
                tensors=("*.mlp.*",),
                positions=1000,
                min_numel=100000,
            ),
        ),
        ("\n    fingerprint: {positions: 64}", Fingerprint(positions=64)),
    ],
)
def test_fingerprint_forms(setting: str, expected: Fingerprint | None) -> None:
    policy = parse_policy(BASE.replace("grant_ttl: 90d", "grant_ttl: 90d" + setting, 1))
    assert policy.tiers[1].fingerprint == expected
    again = json.loads(json.dumps(policy.to_dict()))
    assert parse_policy(yaml.safe_dump(again)) == policy


@pytest.mark.parametrize(
    ("tensor", "numel", "k"),
    [
        ("layers.0.mlp.up.weight", 10**6, 4096),
        ("layers.0.mlp.up.weight", 128 * 100, 0),  # under min_numel
        ("layers.0.mlp.up.weight", 128 * 200, 200),  # at most 1 value in 128
        ("layers.0.attn.q.weight", 10**6, 0),  # not selected
    ],
)
def test_fingerprint_positions_per_tensor(tensor: str, numel: int, k: int) -> None:
    settings = Fingerprint(tensors=("*.mlp.*",), min_numel=20000)
    assert settings.positions_for(tensor, numel) == k


def test_fingerprint_files_select_the_marked_shards() -> None:
    settings = Fingerprint(files=("model-00001-*.safetensors",))
    assert settings.stages_file("sub/model-00001-of-00002.safetensors")
    assert not settings.stages_file("model-00002-of-00002.safetensors")
    assert Fingerprint().stages_file("model.safetensors") and Fingerprint().stages_file("c.json")


def test_norway_is_a_country_not_false() -> None:
    text = BASE.replace("pack:us-ofac-comprehensive", "NO")
    rule = parse_policy(text).tiers[1].requires.jurisdiction
    assert rule is not None and rule.deny == ("NO",)


@pytest.mark.parametrize(
    ("approval", "mode", "reviewers"),
    [
        ("auto", ApprovalMode.AUTO, 0),
        ("manual", ApprovalMode.MANUAL, 1),
        ("{mode: manual}", ApprovalMode.MANUAL, 1),
        ("{mode: manual, reviewers: 3}", ApprovalMode.MANUAL, 3),
    ],
)
def test_approval_forms(approval: str, mode: ApprovalMode, reviewers: int) -> None:
    text = BASE.replace("{mode: manual, reviewers: 2}", approval)
    found = parse_policy(text).tiers[1].requires.approval
    assert (found.mode, found.reviewers) == (mode, reviewers)


@pytest.mark.parametrize(
    ("path", "allowed"),
    [
        ("model-00001-of-00002.safetensors", True),
        ("sub/dir/model.safetensors", True),
        ("config.json", True),
        ("nested/config.json", True),
        ("tokenizer.json", True),
        ("tokenizer_config.json", True),
        ("generation_config.json", True),
        ("pytorch_model.bin", False),
        ("model.safetensors.bak", False),
        ("../config.json", False),
        ("a/../../config.json", False),
        ("/config.json", False),
        ("", False),
    ],
)
def test_allows_file(path: str, allowed: bool) -> None:
    weights = parse_policy(EXAMPLE).tiers[2]
    assert weights.allows_file(path) is allowed


def test_allows_file_needs_a_weights_grant_and_defaults_to_every_file() -> None:
    policy = parse_policy(EXAMPLE)
    assert not policy.tiers[1].allows_file("config.json")
    no_globs = BASE.replace('    files: ["*.safetensors"]\n', "")
    assert parse_policy(no_globs).tiers[1].allows_file("anything/at/all.bin")


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("400GB", 400 * 10**9),
        ("500MB", 500 * 10**6),
        ("1.5GiB", 1536 * 2**20),
        ("10 KiB", 10 * 1024),
        ("2TB", 2 * 10**12),
        ("1PiB", 2**50),
        ("123B", 123),
        (1024, 1024),
    ],
)
def test_byte_sizes(text: str | int, size: int) -> None:
    assert parse_byte_size(text) == size


@pytest.mark.parametrize("text", ["400", "400gb", "GB", "-1GB", "1.5", "4e9B", "400 GBs"])
def test_bad_byte_sizes(text: str) -> None:
    with pytest.raises(ValueError, match="byte size"):
        parse_byte_size(text)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("15m", 900), ("12h", 43200), ("90d", 90 * 86400), ("2w", 14 * 86400)],
)
def test_durations(text: str, seconds: int) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)
    assert format_duration(parse_duration(text)) == text


@pytest.mark.parametrize("text", ["0d", "90", "1.5h", "-1d", "90D", "1y", " 9d", "9 d"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


FORM = (
    FormField("affiliation", FieldType.TEXT, required=True),
    FormField("intended_use", FieldType.TEXT, required=True, max_length=10),
    FormField("country", FieldType.COUNTRY, required=True),
    FormField("start", FieldType.DATE),
    FormField("agree", FieldType.CHECKBOX, required=True),
    FormField("env", FieldType.SELECT, options=("cloud", "on-premises")),
)
FILLED = {"affiliation": "MIT", "intended_use": "evals", "country": "US", "agree": True}


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({}, None),
        ({"start": "2026-01-31", "env": "cloud"}, None),
        ({"affiliation": None}, "Field 'affiliation' is required."),
        ({"affiliation": "   "}, "Field 'affiliation' is required."),
        ({"intended_use": 42}, "Field 'intended_use' must be text."),
        ({"intended_use": "x" * 11}, "at most 10 characters"),
        ({"country": "Germany"}, "ISO 3166-1 alpha-2"),
        ({"country": "UK"}, "ISO 3166-1 alpha-2"),
        ({"start": "31/01/2026"}, "YYYY-MM-DD"),
        ({"start": "2026-02-30"}, "YYYY-MM-DD"),
        ({"agree": False}, "Field 'agree' must be checked."),
        ({"agree": "yes"}, "true or false"),
        ({"env": "moon"}, "must be one of cloud, on-premises"),
        ({"extra": "x"}, "'extra' is not a field of this form."),
    ],
)
def test_validate_form(changes: dict[str, object], problem: str | None) -> None:
    values = {**FILLED, **changes}
    problems = validate_form(FORM, {k: v for k, v in values.items() if v is not None})
    if problem is None:
        assert problems == []
    else:
        assert len(problems) == 1 and problem in problems[0]


def test_policy_issue_reads_well() -> None:
    issue = PolicyIssue("tiers[1].requires.kyc", 12, "unknown KYC level 'passport'")
    assert str(issue) == "tiers[1].requires.kyc (line 12): unknown KYC level 'passport'"


def test_huge_integers_are_a_schema_error_not_a_crash() -> None:
    text = "model: acme/x\nstage: limited\ntiers: []\nlimit: " + "9" * 5000 + "\n"
    with pytest.raises(PolicyError) as caught:
        parse_policy(text)
    assert ("limit", 4) in {(i.path, i.line) for i in caught.value.issues}
