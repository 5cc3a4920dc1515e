"""Stand-ins for the KYC providers' APIs on loopback, speaking their documented JSON, and the
providers' webhook signatures computed the way each provider computes them."""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from werkzeug.routing import Map, Rule
from werkzeug.wrappers import Request, Response

from gateway.settings import KycProviderSettings
from tests.ports import serving

PERSONA_KEY, STRIPE_KEY, ONFIDO_KEY = "persona_test_key", "sk_test_stripe", "onfido_test_token"
OLD_SECRET, NEW_SECRET = "whsec_old_rotating_out", "whsec_new_rotating_in"

ROUTES = Map(
    [
        Rule("/persona/api/v1/inquiries", methods=["POST"], endpoint="persona_create"),
        Rule(
            "/persona/api/v1/inquiries/<ref>/generate-one-time-link",
            methods=["POST"],
            endpoint="persona_link",
        ),
        Rule("/persona/api/v1/inquiries/<ref>", methods=["GET"], endpoint="persona_get"),
        Rule(
            "/stripe/v1/identity/verification_sessions", methods=["POST"], endpoint="stripe_create"
        ),
        Rule(
            "/stripe/v1/identity/verification_sessions/<ref>",
            methods=["GET"],
            endpoint="stripe_get",
        ),
        Rule("/onfido/v3.6/applicants", methods=["POST"], endpoint="onfido_applicant"),
        Rule("/onfido/v3.6/applicants/<ref>", methods=["GET"], endpoint="onfido_get_applicant"),
        Rule("/onfido/v3.6/workflow_runs", methods=["POST"], endpoint="onfido_run"),
        Rule("/onfido/v3.6/workflow_runs/<ref>", methods=["GET"], endpoint="onfido_get_run"),
        Rule("/onfido/v3.6/checks", methods=["GET"], endpoint="onfido_checks"),
        Rule("/onfido/v3.6/reports", methods=["GET"], endpoint="onfido_reports"),
    ]
)
AUTH = {
    "persona": f"Bearer {PERSONA_KEY}",
    "stripe": f"Bearer {STRIPE_KEY}",
    "onfido": f"Token token={ONFIDO_KEY}",
}


@dataclass
class ProviderApis:
    """In-memory provider state behind a WSGI app; tests set results, adapters read them."""

    docs: dict[str, dict[str, Any]] = field(default_factory=dict)
    calls: list[tuple[str, str]] = field(default_factory=list)
    failing: bool = False
    ids: Iterator[int] = field(default_factory=lambda: itertools.count(1))
    base_url: str = ""

    def __call__(self, environ: Any, start_response: Any) -> Any:
        request = Request(environ)
        adapter = ROUTES.bind_to_environ(environ)
        endpoint, args = adapter.match()
        self.calls.append((request.method, request.path))
        if request.headers.get("Authorization") != AUTH[str(endpoint).split("_")[0]]:
            return _json({"errors": [{"title": "Unauthorized"}]}, 401)(environ, start_response)
        if self.failing:
            return _json({"error": "upstream"}, 500)(environ, start_response)
        handler = getattr(self, f"_{endpoint}")
        status, body = handler(request, **args)
        return _json(body, status)(environ, start_response)

    def fetches(self) -> int:
        """How many results adapters fetched (GETs)."""
        return sum(1 for method, _ in self.calls if method == "GET")

    def configs(self) -> tuple[KycProviderSettings, ...]:
        """Settings pointing the three adapters here, each with two active webhook secrets."""
        secrets = (OLD_SECRET, NEW_SECRET)
        return (
            KycProviderSettings(
                "persona", f"{self.base_url}/persona/api/v1", PERSONA_KEY, "itmpl_test", secrets
            ),
            KycProviderSettings(
                "stripe_identity", f"{self.base_url}/stripe", STRIPE_KEY, "", secrets
            ),
            KycProviderSettings(
                "onfido", f"{self.base_url}/onfido/v3.6", ONFIDO_KEY, "wf_test", secrets
            ),
        )

    # -- Persona: JSON:API inquiries -------------------------------------------------------------
    def _persona_create(self, request: Request) -> tuple[int, Any]:
        assert request.headers["Persona-Version"]
        attrs = request.get_json()["data"]["attributes"]
        ref = f"inq_{next(self.ids)}"
        self.docs[ref] = persona_inquiry(ref, "created", reference=attrs["reference-id"])
        return 201, self.docs[ref]

    def _persona_link(self, request: Request, ref: str) -> tuple[int, Any]:
        return 200, {**self.docs[ref], "meta": {"one-time-link": f"https://persona.test/v/{ref}"}}

    def _persona_get(self, request: Request, ref: str) -> tuple[int, Any]:
        assert request.args.get("include") == "verifications,reports"
        return (200, self.docs[ref]) if ref in self.docs else (404, {"errors": []})

    # -- Stripe Identity: VerificationSessions (form-encoded requests) ---------------------------
    def _stripe_create(self, request: Request) -> tuple[int, Any]:
        assert request.form["type"] == "document"
        ref = f"vs_{next(self.ids)}"
        self.docs[ref] = stripe_session(ref, "requires_input")
        return 200, self.docs[ref]

    def _stripe_get(self, request: Request, ref: str) -> tuple[int, Any]:
        assert set(request.args.getlist("expand[]")) == {
            "verified_outputs",
            "last_verification_report",
        }
        return (200, self.docs[ref]) if ref in self.docs else (404, {"error": {}})

    # -- Onfido: applicants, workflow runs, checks and reports -----------------------------------
    def _onfido_applicant(self, request: Request) -> tuple[int, Any]:
        ref = f"app_{next(self.ids)}"
        self.docs[ref] = {"id": ref, **request.get_json(), "address": None}
        return 201, self.docs[ref]

    def _onfido_get_applicant(self, request: Request, ref: str) -> tuple[int, Any]:
        return 200, self.docs[ref]

    def _onfido_run(self, request: Request) -> tuple[int, Any]:
        body = request.get_json()
        ref = f"wfr_{next(self.ids)}"
        self.docs[ref] = {
            "id": ref,
            "applicant_id": body["applicant_id"],
            "workflow_id": body["workflow_id"],
            "status": "awaiting_input",
            "link": {"url": f"https://onfido.test/l/{ref}"},
        }
        return 201, self.docs[ref]

    def _onfido_get_run(self, request: Request, ref: str) -> tuple[int, Any]:
        return 200, self.docs[ref]

    def _onfido_checks(self, request: Request) -> tuple[int, Any]:
        key = f"checks:{request.args['applicant_id']}"
        return 200, {"checks": self.docs.get(key, {}).get("checks", [])}

    def _onfido_reports(self, request: Request) -> tuple[int, Any]:
        return 200, {"reports": self.docs.get(f"reports:{request.args['check_id']}", {})["list"]}

    # -- results tests set -------------------------------------------------------------------------
    def persona_result(self, ref: str, status: str, *, hit: bool = False) -> None:
        """An inquiry decided: a German passport, living in California, screened."""
        self.docs[ref] = persona_inquiry(ref, status, hit=hit)

    def stripe_result(self, ref: str, status: str, *, error: str | None = None) -> None:
        """A session with a French ID card and an address in Île-de-France."""
        self.docs[ref] = stripe_session(ref, status, error=error)

    def onfido_result(self, ref: str, status: str, *, watchlist: str = "clear") -> None:
        """A run decided with a British passport (alpha-3, as Onfido sends it)."""
        run = self.docs[ref]
        run.update(status=status, updated_at="2026-11-27T08:00:00Z")
        applicant = self.docs[run["applicant_id"]]
        applicant["address"] = {"country": "GBR", "state": "ENG", "town": "London"}
        check = f"chk_{ref}"
        self.docs[f"checks:{run['applicant_id']}"] = {
            "checks": [{"id": check, "status": "complete", "result": "clear"}]
        }
        self.docs[f"reports:{check}"] = {
            "list": [
                {
                    "name": "document",
                    "result": "clear",
                    "properties": {
                        "issuing_country": "GBR",
                        "nationality": "GBR",
                        "document_type": "passport",
                        "date_of_expiry": "2031-03-01",
                    },
                },
                {
                    "name": "watchlist_standard",
                    "result": watchlist,
                    "created_at": "2026-11-27T07:59:00Z",
                },
            ]
        }


def persona_inquiry(ref: str, status: str, *, reference: str = "", hit: bool = False) -> Any:
    """Persona's GET /inquiries/{id}?include=verifications,reports."""
    return {
        "data": {
            "type": "inquiry",
            "id": ref,
            "attributes": {
                "status": status,
                "reference-id": reference,
                "address-country-code": "US",
                "address-subdivision": "CA",
                "updated-at": "2026-11-27T07:58:00.000Z",
                "decisioned-at": "2026-11-27T07:58:00.000Z",
            },
        },
        "included": [
            {
                "type": "verification/government-id",
                "id": "ver_1",
                "attributes": {
                    "status": "passed",
                    "country-code": "DE",
                    "nationality": "DEU",
                    "id-class": "pp",
                    "expiration-date": "2030-06-30",
                },
            },
            {
                "type": "report/watchlist",
                "id": "rep_1",
                "attributes": {
                    "status": "ready",
                    "has-match": hit,
                    "completed-at": "2026-11-27T07:57:00.000Z",
                },
            },
        ],
    }


def stripe_session(ref: str, status: str, *, error: str | None = None) -> Any:
    """Stripe's VerificationSession with verified_outputs and last_verification_report expanded."""
    verified = status == "verified"
    return {
        "id": ref,
        "object": "identity.verification_session",
        "status": status,
        "type": "document",
        "url": f"https://verify.stripe.test/start/{ref}",
        "last_error": {"code": error, "reason": "The document was unreadable."} if error else None,
        "verified_outputs": {"address": {"country": "FR", "state": "IDF"}} if verified else None,
        "last_verification_report": {
            "id": "vr_1",
            "object": "identity.verification_report",
            "created": 1795766400,
            "document": {
                "status": "verified",
                "type": "id_card",
                "issuing_country": "FR",
                "expiration_date": {"day": 1, "month": 12, "year": 2029},
            },
        }
        if verified
        else None,
    }


def _json(body: Any, status: int) -> Response:
    return Response(json.dumps(body), status=status, mimetype="application/json")


@contextmanager
def running_apis() -> Iterator[ProviderApis]:
    """The stand-in on a loopback port for the duration of the block."""
    apis = ProviderApis()
    with serving(apis) as url:
        apis.base_url = url
        yield apis


# -- webhook bodies and signatures, as each provider sends them ------------------------------------
def hex_hmac(secret: str, message: bytes) -> str:
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def timestamped(secret: str, body: bytes, t: int) -> str:
    """`t=<unix>,v1=<hex>` over `t.body` (Persona and Stripe)."""
    return f"t={t},v1={hex_hmac(secret, f'{t}.'.encode() + body)}"


def persona_event(event_id: str, name: str, ref: str, at: datetime) -> bytes:
    stamp = at.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    payload = {"data": {"type": "inquiry", "id": ref, "attributes": {"status": name}}}
    event = {"type": "event", "id": event_id, "attributes": {"name": f"inquiry.{name}"}}
    event["attributes"].update({"created-at": stamp, "payload": payload})
    return json.dumps({"data": event}).encode()


def stripe_event(event_id: str, kind: str, ref: str, at: datetime) -> bytes:
    session = {"id": ref, "object": "identity.verification_session", "status": kind}
    return json.dumps(
        {
            "id": event_id,
            "object": "event",
            "type": f"identity.verification_session.{kind}",
            "created": int(at.timestamp()),
            "data": {"object": session},
        }
    ).encode()


def onfido_event(event_id: str, status: str, ref: str, at: datetime) -> bytes:
    # Onfido sends no event id; `event_id` only varies the body so distinct events differ.
    stamp = at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    obj = {"id": ref, "status": status, "completed_at_iso8601": stamp, "tag": event_id}
    obj["href"] = f"https://api.eu.onfido.com/v3.6/workflow_runs/{ref}"
    action = "workflow_run.completed"
    return json.dumps(
        {"payload": {"resource_type": "workflow_run", "action": action, "object": obj}}
    ).encode()
