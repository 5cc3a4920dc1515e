"""A publisher's own jurisdiction packs, written inline in the release policy."""

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from policies import (
    Effect,
    PackError,
    PolicyError,
    ReasonCode,
    Subject,
    evaluate,
    load_packs,
    parse_policy,
)

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
PACKS = load_packs()

POLICY = """\
model: acme/frontier-70b
stage: limited
packs:
  - id: custom-acme-embargo
    version: "2026-01-15"
    title: Countries Acme's counsel excludes
    status: active
    sources: [Acme legal memo 2026-01-15]
    lists:
      default:
        - BR
        - {code: AR, effective_to: 2026-02-01, note: lifted on 2026-02-01}
        - {code: CL, effective_from: 2026-06-01}
      watch: [MX]
tiers:
  - name: api
    grants: [inference]
    requires:
      jurisdiction:
        deny: [pack:custom-acme-embargo, pack:us-ofac-comprehensive]
        review: [pack:custom-acme-embargo#watch]
        signals: [nationality]
    opens_in: [limited]
"""


def decide(nationality: str, text: str = POLICY) -> tuple[Effect, set[str]]:
    policy = parse_policy(text, packs=PACKS)
    decision = evaluate(policy, "api", Subject(nationality=nationality), now=NOW, packs=PACKS)
    return decision.effect, {reason.code for reason in decision.reasons}


@pytest.mark.parametrize(
    ("nationality", "effect", "code"),
    [
        ("BR", Effect.DENY, ReasonCode.JURISDICTION_DENIED),  # the custom list denies
        ("AR", Effect.ALLOW, ReasonCode.JURISDICTION_ALLOWED),  # entry ended: ignored
        ("CL", Effect.ALLOW, ReasonCode.JURISDICTION_ALLOWED),  # entry not yet in effect
        ("MX", Effect.REVIEW, ReasonCode.JURISDICTION_REVIEW),  # a named custom list
        ("CU", Effect.DENY, ReasonCode.JURISDICTION_DENIED),  # shipped pack beside it
        ("FR", Effect.ALLOW, ReasonCode.JURISDICTION_ALLOWED),
    ],
)
def test_custom_pack_decides_like_a_shipped_one(
    nationality: str, effect: Effect, code: ReasonCode
) -> None:
    found, codes = decide(nationality)
    assert found is effect and code in codes


def test_decision_names_custom_pack_version_and_hash() -> None:
    policy = parse_policy(POLICY, packs=PACKS)
    decision = evaluate(policy, "api", Subject(nationality="BR"), now=NOW, packs=PACKS)
    used = {pack_id: (version, digest) for pack_id, version, digest in decision.packs_used}
    assert used["custom-acme-embargo"] == ("2026-01-15", policy.packs[0].content_hash)
    assert "us-ofac-comprehensive" in used
    denied = next(r for r in decision.reasons if r.effect is Effect.DENY)
    assert "pack custom-acme-embargo version 2026-01-15" in denied.message


def test_a_changed_custom_pack_changes_its_hash_and_the_decision() -> None:
    changed = POLICY.replace("        - BR\n", "        - PE\n")
    before = parse_policy(POLICY, packs=PACKS).packs[0]
    after = parse_policy(changed, packs=PACKS).packs[0]
    assert before.content_hash != after.content_hash
    assert decide("BR", changed)[0] is Effect.ALLOW


def test_custom_packs_stay_in_their_policy() -> None:
    """Another policy, parsed with the same registry, cannot name this one's pack."""
    parse_policy(POLICY, packs=PACKS)
    assert PACKS.get("custom-acme-embargo") is None
    other = POLICY.split("packs:\n", 1)[0] + "tiers:" + POLICY.split("tiers:", 1)[1]
    with pytest.raises(PolicyError) as caught:
        parse_policy(other, packs=PACKS)
    assert "unknown jurisdiction pack 'custom-acme-embargo'" in str(caught.value)


def line_of(text: str, needle: str) -> int:
    return next(n for n, line in enumerate(text.splitlines(), 1) if needle in line)


@pytest.mark.parametrize(
    ("old", "new", "path", "needle", "words"),
    [
        (
            "id: custom-acme-embargo",
            "id: eu",
            "packs[0].id",
            "id: eu",
            "'eu' is a shipped pack",
        ),
        (
            "id: custom-acme-embargo",
            "id: acme-embargo",
            "packs[0].id",
            "id: acme-embargo",
            "must start with 'custom-'",
        ),
        (
            "deny: [pack:custom-acme-embargo,",
            "deny: [pack:custom-acme-embargoes,",
            "tiers[0].requires.jurisdiction.deny[0]",
            "deny: [pack:custom-acme-embargoes",
            "unknown jurisdiction pack 'custom-acme-embargoes'",
        ),
        (
            "review: [pack:custom-acme-embargo#watch]",
            "review: [pack:custom-acme-embargo#watchlist]",
            "tiers[0].requires.jurisdiction.review[0]",
            "#watchlist",
            "has no list 'watchlist'",
        ),
        (
            "        - BR\n",
            "        - XZ\n",
            "packs[0].lists.default[0].code",
            "- XZ",
            "'XZ' is not an assigned",
        ),
        (
            "{code: AR, effective_to: 2026-02-01,",
            "{code: AR, effective_to: 2026-02-30,",
            "packs[0].lists.default[1].effective_to",
            "code: AR",
            "2026-02-30",
        ),
        ("    status: active\n", "    status: live\n", "packs[0].status", "status: live", "live"),
        (
            "    sources: [Acme legal memo 2026-01-15]\n",
            "",
            "packs[0].sources",
            "id: custom-acme-embargo",
            "sources",
        ),
    ],
)
def test_bad_custom_pack_is_an_error_at_its_line(
    old: str, new: str, path: str, needle: str, words: str
) -> None:
    text = POLICY.replace(old, new, 1)
    assert text != POLICY
    with pytest.raises(PolicyError) as caught:
        parse_policy(text, packs=PACKS)
    issues = [i for i in caught.value.issues if i.path == path]
    assert issues, [(i.path, i.message) for i in caught.value.issues]
    assert issues[0].line == line_of(text, needle)
    assert words in issues[0].message


def test_a_custom_pack_defined_twice_is_an_error() -> None:
    start = POLICY.index("  - id: custom-acme-embargo")
    end = POLICY.index("tiers:")
    text = POLICY[:end] + POLICY[start:end] + POLICY[end:]
    with pytest.raises(PolicyError) as caught:
        parse_policy(text, packs=PACKS)
    (issue,) = caught.value.issues
    assert issue.path == "packs[1].id" and "defined twice" in issue.message


def test_shipped_pack_files_may_not_take_the_custom_prefix(tmp_path: Path) -> None:
    document = "id: custom-x\nversion: 1\ntitle: X\nstatus: active\nsources: [s]\nlists: {}\n"
    (tmp_path / "custom-x.yaml").write_text(document, encoding="utf-8")
    with pytest.raises(PackError, match="reserved"):
        load_packs(tmp_path)


def test_to_dict_round_trips_with_custom_packs() -> None:
    policy = parse_policy(POLICY, packs=PACKS)
    document = json.loads(json.dumps(policy.to_dict()))
    assert parse_policy(yaml.safe_dump(document), packs=PACKS) == policy
