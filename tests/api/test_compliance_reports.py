"""Compliance API: facet filters (tier, reason, country), the streaming export, the access report,
denial statistics and timelines, each confined to the caller's organizations."""

from __future__ import annotations

import csv
import io
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from werkzeug.test import TestResponse

from gateway.audit.canonical import BODY_FIELDS, entry_hash
from gateway.audit.exports import read_events
from gateway.auth.tokens import Scope
from gateway.db.models import Grant, utcnow
from gateway.services.audit_log import AuditFilter, AuditLogService
from gateway.settings import Settings
from tests.api.apikit import (
    FORM,
    REPO,
    RIVAL_REPO,
    Api,
    audit_events,
    backdate,
    make_api,
    ok,
    past,
    problem,
)
from tests.factories import Actor, World
from tests.pg import on_both_engines

HEADER = "X-Airlock-Country"
PROXY = "10.0.0.5"
ROW_FIELDS = (*BODY_FIELDS, "prev_hash", "entry_hash")
AUDIT_PATHS = ("/api/v1/audit", "/api/v1/audit/export", "/api/v1/compliance/timeline")
ENDPOINTS = (
    "/api/v1/audit?country=IR",
    "/api/v1/audit/export",
    "/api/v1/audit/export?format=csv",
    "/api/v1/compliance/access-report",
    "/api/v1/compliance/access-report?format=csv",
    "/api/v1/compliance/denials",
    "/api/v1/compliance/timeline?user=ira",
)


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.with_overrides(trusted_proxies=(PROXY,), geo_header=HEADER)


@pytest.fixture
def cast(client: Any, world: World) -> tuple[Api, Actor]:
    """Acme and globex each grant rob (GB) weights from FR/DE, deny ira (IR) from IR, and acme
    sends rob's request for the manual tier to review."""
    api = make_api(client, world)
    ira = world.actor("ira")
    for reviewer, org in ((api.reviewer, "acme"), (api.rival_reviewer, "globex")):
        world.kyc(reviewer, api.researcher, org=org)
        world.kyc(reviewer, ira, org=org, country="IR")
    assert ask(api, api.researcher, REPO, "weights-auto", "FR")["status"] == "approved"
    assert ask(api, api.researcher, REPO, "weights-manual", "FR")["status"] == "pending"
    assert ask(api, ira, REPO, "weights-auto", "IR")["status"] == "denied"
    assert ask(api, api.researcher, RIVAL_REPO, "weights-auto", "DE")["status"] == "approved"
    assert ask(api, ira, RIVAL_REPO, "weights-auto", "IR")["status"] == "denied"
    return api, ira


@pytest.fixture
def api(cast: tuple[Api, Actor]) -> Api:
    return cast[0]


@pytest.fixture
def ira(cast: tuple[Api, Actor]) -> Actor:
    return cast[1]


def ask(api: Api, actor: Actor, repo: str, tier: str, country: str) -> dict[str, Any]:
    response = api.post(
        f"/api/v1/models/{repo}/access",
        actor,
        json={"tier": tier, "agreement": "aup@1", "form": FORM},
        headers={HEADER: country},
        environ_base={"REMOTE_ADDR": PROXY},
    )
    body: dict[str, Any] = ok(response, 201)
    return body


def org_id(api: Api, slug: str) -> int:
    return api.world.org(slug).id


def tier_of(event: dict[str, Any]) -> str | None:
    payload = event["payload"]
    return payload.get("tier") or (payload.get("decision") or {}).get("tier")


def codes_of(event: dict[str, Any]) -> set[str]:
    payload = event["payload"]
    reasons = payload.get("reasons") or (payload.get("decision") or {}).get("reasons") or []
    return {r["code"] for r in reasons}


@on_both_engines
def test_filter_by_tier_reason_and_country(api: Api) -> None:
    acme, globex = org_id(api, "acme"), org_id(api, "globex")
    manual = audit_events(api, api.compliance, tier="weights-manual")
    assert [e["action"] for e in manual] == ["request:create"]
    auto = audit_events(api, api.compliance, tier="weights-auto")
    assert {"request:create", "grant:create"} <= {e["action"] for e in auto}
    assert {tier_of(e) for e in auto} == {"weights-auto"}
    assert {e["org_id"] for e in auto} == {acme}

    denied = audit_events(api, api.compliance, reason="jurisdiction_denied")
    assert [(e["action"], e["effect"], e["org_id"]) for e in denied] == [
        ("request:create", "deny", acme)
    ]
    assert "jurisdiction_denied" in codes_of(denied[0])
    review = audit_events(api, api.compliance, reason="approval_required", effect="review")
    assert [tier_of(e) for e in review] == ["weights-manual"]
    assert audit_events(api, api.compliance, reason="approval_required", effect="deny") == []

    iran = audit_events(api, api.compliance, country="IR")
    assert {e["action"] for e in iran} == {"kyc:verify", "request:create"}
    assert {e["org_id"] for e in iran} == {acme}
    assert [e["payload"]["request_country"] for e in iran if e["action"] == "request:create"] == [
        "IR"
    ]
    assert {e["org_id"] for e in audit_events(api, api.rival_compliance, country="IR")} == {globex}
    # Another organization's values select nothing of theirs.
    assert audit_events(api, api.compliance, country="DE") == []
    assert audit_events(api, api.rival_compliance, country="FR") == []
    assert audit_events(api, api.rival_compliance, tier="weights-manual") == []


BAD_FILTERS = (
    ("action=grant:nothing", "action"),
    ("effect=maybe", "effect"),
    ("reason=because", "reason"),
    ("country=ZZ", "country"),
    ("country=gb", "country"),
    ("country=GBR", "country"),
    ("tier=Not%20A%20Tier", "tier"),
    ("since=2026-01-02T00:00:00Z&until=2026-01-01T00:00:00Z", "until"),
    ("since=2026-01-01T00:00:00Z&until=2026-01-01T00:00:00Z", "until"),
    ("until=2026-01-01", "until"),
)
BAD_PERIODS = (
    ("since=2026-02-01T00:00:00Z&until=2026-01-01T00:00:00Z", "until"),
    ("since=2020-01-01T00:00:00Z&until=2026-01-01T00:00:00Z", "since"),  # > 1000 days
    ("bucket=month", "bucket"),
)


def test_bad_filters_and_periods_are_refused_naming_the_field(client: Any, world: World) -> None:
    api = make_api(client, world, publish=False)
    cases = [(f"{path}?{query}", field) for query, field in BAD_FILTERS for path in AUDIT_PATHS]
    cases += [(f"/api/v1/compliance/denials?{query}", field) for query, field in BAD_PERIODS]
    for url, field in cases:
        body = problem(api.get(url, api.compliance), 422, "invalid_input")
        assert body["errors"][0]["path"] == field, (url, body)
    long_weeks = "since=2020-01-01T00:00:00Z&until=2026-01-01T00:00:00Z&bucket=week"
    ok(api.get(f"/api/v1/compliance/denials?{long_weeks}", api.compliance))


def exported(response: TestResponse, tmp_path: Path) -> list[dict[str, Any]]:
    """The rows of an export, read back by the offline verifier's strict reader."""
    assert response.status_code == 200, response.get_data(as_text=True)
    kind = {"application/x-ndjson": "jsonl", "text/csv": "csv"}[response.mimetype]
    path = tmp_path / f"events.{kind}"
    path.write_bytes(response.get_data())
    return list(read_events(path, kind))


@on_both_engines
def test_export_streams_verifiable_rows_of_own_orgs_only(api: Api, tmp_path: Path) -> None:
    for kind in ("jsonl", "csv"):
        check_export(api, kind, tmp_path)


def check_export(api: Api, kind: str, tmp_path: Path) -> None:
    listed = audit_events(api, api.compliance, limit=1000)
    rows = exported(api.get(f"/api/v1/audit/export?format={kind}", api.compliance), tmp_path)
    assert [r["seq"] for r in rows] == [e["seq"] for e in listed]
    for row in rows:
        assert set(row) == set(ROW_FIELDS)
        body = {name: row[name] for name in BODY_FIELDS}
        assert entry_hash(row["prev_hash"], body) == row["entry_hash"], row["seq"]
    rival = exported(api.get(f"/api/v1/audit/export?format={kind}", api.rival_compliance), tmp_path)
    assert rival
    assert {r["org_id"] for r in rival} == {org_id(api, "globex"), None}
    shared = [r for r in rival if r["seq"] in {mine["seq"] for mine in rows}]
    assert shared  # rob's and ira's tokens: both asked both organizations
    assert {r["org_id"] for r in shared} == {None}
    filtered = f"/api/v1/audit/export?format={kind}&reason=jurisdiction_denied&country=IR"
    assert [r["seq"] for r in exported(api.get(filtered, api.compliance), tmp_path)] == [
        e["seq"] for e in audit_events(api, api.compliance, reason="jurisdiction_denied")
    ]
    theirs = f"/api/v1/audit/export?format={kind}&repo_id={RIVAL_REPO}"
    assert exported(api.get(theirs, api.compliance), tmp_path) == []


def test_export_reads_in_batches_and_stops_at_the_head(api: Api) -> None:
    airlock = api.world.airlock
    everything = [e["seq"] for e in audit_events(api, api.compliance, limit=1000)]
    rows = AuditLogService().export(
        airlock.db.sessionmaker,
        principal=api.compliance.principal,
        filters=AuditFilter(),
        batch=2,
    )
    first = next(rows)
    ask(api, api.researcher, REPO, "card", "FR")  # appended after the export began
    assert [first["seq"], *(r["seq"] for r in rows)] == everything


@on_both_engines
def test_access_report_lists_grants_in_force_with_kyc_and_reasons(api: Api) -> None:
    report = ok(api.get("/api/v1/compliance/access-report", api.compliance))
    [grant] = report["grants"]
    assert grant["repo_id"] == REPO
    assert grant["organization"] == "acme"
    assert (grant["username"], grant["email"]) == ("rob", "rob@example.org")
    assert grant["user_id"] == api.researcher.user.id
    assert grant["affiliation"] == "oxbridge"
    assert (grant["tier"], grant["policy_version"]) == ("weights-auto", 1)
    assert grant["kyc_level"] == "institution"
    assert grant["nationality"] == grant["residence_country"] == "GB"
    assert grant["decision_effect"] == "allow"
    assert "requirements_met" in {r["code"] for r in grant["reasons"]}
    assert all(r["message"] for r in grant["reasons"])
    assert grant["expires_at"] > grant["granted_at"]

    [rival] = ok(api.get("/api/v1/compliance/access-report", api.rival_compliance))["grants"]
    assert rival["repo_id"] == RIVAL_REPO
    assert rival["grant_id"] != grant["grant_id"]

    response = api.get("/api/v1/compliance/access-report?format=csv", api.compliance)
    assert response.status_code == 200
    assert response.mimetype == "text/csv"
    rows = list(csv.DictReader(io.StringIO(response.get_data(as_text=True))))
    assert [(r["username"], r["repo_id"], r["tier"], r["kyc_level"]) for r in rows] == [
        ("rob", REPO, "weights-auto", "institution")
    ]
    assert "requirements_met" in rows[0]["reason_codes"].split(";")

    backdate(api.world, Grant, grant["grant_id"], expires_at=past())
    assert ok(api.get("/api/v1/compliance/access-report", api.compliance))["grants"] == []


@on_both_engines
def test_denial_statistics_by_reason_country_and_day(api: Api, ira: Actor) -> None:
    stats = ok(api.get("/api/v1/compliance/denials", api.compliance))
    assert stats["totals"] == {"deny": 1, "review": 1}
    by_reason = {r["code"]: (r["deny"], r["review"]) for r in stats["by_reason"]}
    assert by_reason["jurisdiction_denied"] == (1, 0)
    assert by_reason["approval_required"] == (0, 1)
    assert "requirements_met" not in by_reason  # an allow reason never counts as a denial
    by_country = {c["country"]: (c["deny"], c["review"]) for c in stats["by_country"]}
    assert by_country == {"IR": (1, 0), "FR": (0, 1)}
    assert len(stats["series"]) in (30, 31)
    today = utcnow().date().isoformat()
    assert stats["series"][-1] == {"start": today, "deny": 1, "review": 1}
    assert sum(b["deny"] for b in stats["series"]) == 1

    rival = ok(api.get("/api/v1/compliance/denials?bucket=week", api.rival_compliance))
    assert rival["totals"] == {"deny": 1, "review": 0}
    assert {c["country"] for c in rival["by_country"]} == {"IR"}
    assert sum(b["deny"] for b in rival["series"]) == 1
    assert all(b["start"] <= today for b in rival["series"])

    later = {"since": utcnow() + timedelta(hours=1), "until": utcnow() + timedelta(hours=2)}
    quiet = ok(api.get(f"/api/v1/compliance/denials?{urlencode(later)}", api.compliance))
    assert quiet["totals"] == {"deny": 0, "review": 0}

    # Refused downloads and inference calls count too, under the request's country.
    origin = {"headers": {HEADER: "IR"}, "environ_base": {"REMOTE_ADDR": PROXY}}
    download = api.get(f"/{REPO}/resolve/main/model.safetensors", ira, **origin)
    assert download.status_code == 403
    chat = {"model": REPO, "messages": [{"role": "user", "content": "hi"}]}
    assert api.post("/v1/chat/completions", ira, json=chat, **origin).status_code == 403
    stats = ok(api.get("/api/v1/compliance/denials", api.compliance))
    assert stats["totals"] == {"deny": 3, "review": 1}
    by_reason = {r["code"]: (r["deny"], r["review"]) for r in stats["by_reason"]}
    assert by_reason["no_grant"] == (2, 0)
    assert {c["country"]: c["deny"] for c in stats["by_country"]}["IR"] == 3
    assert ok(api.get("/api/v1/compliance/denials", api.rival_compliance))["totals"]["deny"] == 1


def test_timelines_of_a_user_and_a_model(api: Api) -> None:
    mine = ok(api.get("/api/v1/compliance/timeline?user=ira", api.compliance))["events"]
    personal = ["user:create", "token:create"]  # no organization's, seen by both she asked
    assert [e["action"] for e in mine] == [*personal, "kyc:verify", "request:create"]
    assert {e["org_id"] for e in mine} == {org_id(api, "acme"), None}
    assert [e["seq"] for e in mine] == sorted(e["seq"] for e in mine)
    theirs = ok(api.get("/api/v1/compliance/timeline?user=ira", api.rival_compliance))["events"]
    assert [e["action"] for e in theirs] == [*personal, "kyc:verify", "request:create"]
    assert {e["seq"] for e in mine} & {e["seq"] for e in theirs} == {e["seq"] for e in mine[:2]}

    model = ok(api.get(f"/api/v1/compliance/timeline?model={REPO}&limit=2", api.compliance))
    assert len(model["events"]) == 2
    assert model["events"][0]["action"] == "model:create"
    rest = ok(
        api.get(
            f"/api/v1/compliance/timeline?model={REPO}&cursor={model['next_cursor']}",
            api.compliance,
        )
    )
    assert rest["events"][0]["seq"] > model["events"][-1]["seq"]
    assert {e["model_id"] for e in model["events"] + rest["events"]} == {
        model["events"][0]["model_id"]
    }

    for repo in (RIVAL_REPO, "acme/nothing"):  # another org's model and none look the same
        url = f"/api/v1/compliance/timeline?model={repo}"
        problem(api.get(url, api.compliance), 404, "not_found")
    assert ok(api.get("/api/v1/compliance/timeline?user=nobody", api.compliance))["events"] == []
    for query in ("", f"?user=ira&model={REPO}"):
        url = f"/api/v1/compliance/timeline{query}"
        assert problem(api.get(url, api.compliance), 422, "invalid_input")["errors"]


def test_every_compliance_endpoint_needs_the_role_and_the_scope(api: Api) -> None:
    narrow = api.token(api.compliance, [Scope.ACCESS_REQUEST, Scope.MODELS_READ])
    for url in ENDPOINTS:
        problem(api.get(url), 401, "authentication_required")
        problem(api.get(url, narrow), 403, "forbidden")
        for caller in (api.publisher, api.reviewer, api.researcher, api.outsider):
            problem(api.get(url, caller), 403, "forbidden")
