"""`airlock policy check` predicts, against a live gateway, exactly the grants that applying the
policy then revokes (each with an audit event); `airlock policy explain` runs offline."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from flask import Flask
from sqlalchemy import select, update

from gateway.cli import main
from gateway.db.models import AuditEvent, Grant, KycVerification, Role, utcnow
from gateway.settings import Settings
from tests.factories import World, policy_text
from tests.ports import serving

REPO = "acme/tiny"
RU_DENIED = policy_text(REPO).replace(
    "deny: [pack:us-ofac-comprehensive]", "deny: [pack:us-ofac-comprehensive, RU]"
)


@pytest.fixture
def live(app: Flask) -> Iterator[str]:
    with serving(app) as url:
        yield url


def cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stdout if result.exit_code == 0 else result.output


def test_check_predicts_exactly_the_grants_apply_revokes(
    live: str, world: World, tmp_path: Path
) -> None:
    world.org("acme")
    publisher = world.actor("pat", org="acme", role=Role.PUBLISHER)
    reviewer = world.actor("rita", org="acme", role=Role.REVIEWER)
    world.model(publisher, REPO)
    with world.airlock.db.session() as s:
        model = world.airlock.publishing.get_model(s, REPO)
    countries = {"ann": "GB", "boris": "RU", "dima": "RU", "eva": "DE", "fyodor": "RU"}
    grant_of = {}
    for name, country in countries.items():
        actor = world.actor(name)
        world.kyc(reviewer, actor, country=country)
        grant_of[name] = world.grant(actor, model).id
    policy = tmp_path / "policy.yaml"
    policy.write_text(RU_DENIED)
    auth = ("--endpoint", live, "--token", publisher.token)

    code, out = cli("policy", "check", str(policy), "--json", *auth)
    assert code == 0, out
    predicted = {g["grant_id"] for g in json.loads(out)["grants"] if g["action"] == "revoke"}
    assert predicted == {grant_of[n] for n, c in countries.items() if c == "RU"}
    code, text = cli("policy", "check", str(policy), *auth)
    assert code == 0, text
    assert f"revoke    grant {grant_of['boris']} boris (weights-auto): " in text
    assert "nationality 'RU' matches 'RU'" in text
    assert "grants: 2 keep, 3 revoke" in text.splitlines()[-1]

    code, out = cli("policy", "apply", str(policy), *auth)
    assert code == 0 and "policy version 2 applied" in out, out

    with world.airlock.db.session() as s:
        revoked = set(s.scalars(select(Grant.id).where(Grant.status == "revoked")))
        events = s.scalars(select(AuditEvent).where(AuditEvent.action == "grant:revoke")).all()
        assert revoked == predicted
        assert sorted(e.payload["grant_id"] for e in events) == sorted(predicted)
        for event in events:
            codes = {r["code"] for r in event.payload["reasons"]}
            assert codes == {"jurisdiction_denied"}
            assert event.payload["cause"]["kind"] == "policy_apply"
    code, out = cli("policy", "check", str(policy), "--json", *auth)
    assert code == 0
    assert {g["grant_id"] for g in json.loads(out)["grants"]} == {
        grant_of[n] for n, c in countries.items() if c != "RU"
    }


def test_check_is_refused_to_a_researcher(live: str, world: World, tmp_path: Path) -> None:
    world.org("acme")
    world.model(world.actor("pat", org="acme", role=Role.PUBLISHER), REPO)
    policy = tmp_path / "policy.yaml"
    policy.write_text(RU_DENIED)
    researcher = world.actor("rob")
    code, out = cli("policy", "check", str(policy), "--endpoint", live, "--token", researcher.token)
    assert code == 1 and "error 403" in out


def test_explain_prints_the_decision_as_json(tmp_path: Path) -> None:
    policy, subject = tmp_path / "policy.yaml", tmp_path / "subject.json"
    policy.write_text(policy_text(REPO))
    subject.write_text(
        json.dumps(
            {
                "kyc_level": "identity",
                "nationality": "GB",
                "residence_country": "UA",
                "residence_subdivision": "UA-43",
                "accepted_agreements": ["aup@1"],
            }
        )
    )
    args = ("policy", "explain", str(policy), "--tier", "weights-auto", "--subject", str(subject))
    code, out = cli(*args)
    assert code == 0, out
    decision = json.loads(out)
    assert decision["effect"] == "deny" and decision["model"] == REPO
    denied = [r for r in decision["reasons"] if r["effect"] == "deny"]
    assert [r["code"] for r in denied] == ["jurisdiction_denied"]
    assert denied[0]["rule"] == "tiers[weights-auto].requires.jurisdiction.deny[0]"
    assert "place of residence 'UA-43'" in denied[0]["message"]
    [pack] = decision["packs_used"]
    assert pack["id"] == "us-ofac-comprehensive" and pack["version"] and pack["content_hash"]
    code, out = cli(*args, "--at", "2014-01-01T00:00:00Z")
    assert code == 0 and json.loads(out)["effect"] == "allow"


CUSTOM_PACK = """packs:
  - id: custom-acme-embargo
    version: "2026-01-15"
    title: Countries Acme's counsel excludes
    status: active
    sources: [Acme legal memo 2026-01-15]
    lists:
      default: [GB]
tiers:"""


def test_explain_reports_a_policy_own_pack(tmp_path: Path) -> None:
    policy, subject = tmp_path / "policy.yaml", tmp_path / "subject.json"
    text = policy_text(REPO).replace("tiers:", CUSTOM_PACK, 1)
    text = text.replace(
        "deny: [pack:us-ofac-comprehensive]",
        "deny: [pack:us-ofac-comprehensive, pack:custom-acme-embargo]",
    )
    policy.write_text(text)
    subject.write_text(
        json.dumps({"kyc_level": "identity", "nationality": "GB", "accepted_agreements": ["aup@1"]})
    )
    args = ("policy", "explain", str(policy), "--tier", "weights-auto", "--subject", str(subject))
    code, out = cli(*args)
    assert code == 0, out
    decision = json.loads(out)
    assert decision["effect"] == "deny"
    denied = [r for r in decision["reasons"] if r["effect"] == "deny"]
    assert [r["rule"] for r in denied] == ["tiers[weights-auto].requires.jurisdiction.deny[1]"]
    assert "pack custom-acme-embargo version 2026-01-15" in denied[0]["message"]
    used = {pack["id"]: pack for pack in decision["packs_used"]}
    assert set(used) == {"custom-acme-embargo", "us-ofac-comprehensive"}
    assert used["custom-acme-embargo"]["version"] == "2026-01-15"
    assert len(used["custom-acme-embargo"]["content_hash"]) == 64
    policy.write_text(text.replace("id: custom-acme-embargo", "id: eu"))
    code, out = cli(*args)
    assert code == 1 and "packs[0].id: 'eu' is a shipped pack" in out


def test_explain_reports_every_problem_of_the_subject(tmp_path: Path) -> None:
    policy, subject = tmp_path / "policy.yaml", tmp_path / "subject.json"
    policy.write_text(policy_text(REPO))
    subject.write_text(json.dumps({"nationality": "XX", "kyc_level": "gold", "shoe_size": 9}))
    code, out = cli("policy", "explain", str(policy), "--tier", "card", "--subject", str(subject))
    assert code == 1
    assert "nationality: 'XX' is not an assigned" in out
    assert "kyc_level: unknown KYC level 'gold'" in out
    assert "shoe_size: unknown key" in out
    subject.write_text("{not json")
    code, out = cli("policy", "explain", str(policy), "--tier", "card", "--subject", str(subject))
    assert code == 1 and "is not JSON" in out


def test_rescreen_runs_once_in_process(world: World, settings: Settings) -> None:
    world.org("acme")
    publisher = world.actor("pat", org="acme", role=Role.PUBLISHER)
    reviewer = world.actor("rita", org="acme", role=Role.REVIEWER)
    world.model(publisher, REPO)
    with world.airlock.db.session() as s:
        model = world.airlock.publishing.get_model(s, REPO)
    ann = world.actor("ann")
    world.kyc(reviewer, ann, country="GB")
    grant = world.grant(ann, model)
    with world.airlock.db.session() as s:
        s.execute(
            update(KycVerification)
            .where(KycVerification.user_id == ann.user.id)
            .values(expires_at=utcnow() - timedelta(minutes=1))
        )
        s.commit()
    env = {
        "AIRLOCK_DATA_DIR": str(settings.data_dir),
        "AIRLOCK_DATABASE_URL": settings.database_url,
        "AIRLOCK_SECRET_KEY": "test-secret",
    }
    result = CliRunner().invoke(main, ["policy", "rescreen"], env=env)
    assert result.exit_code == 0 and "rescreen done" in result.output, result.output
    with world.airlock.db.session() as s:
        stored = s.get_one(Grant, grant.id)
        assert stored.status == "suspended"
        assert "expired" in (stored.end_reason or "")
