"""The acceptance flow of issue 8 in Debian's Chromium against a live demo: a researcher asks
for the weights tier and sees it pending with its reasons, a reviewer approves it on the review
page, the researcher sees the grant and creates a token, and the compliance officer finds the
request, approval, grant and token creation events and sees the chain verified.

Screenshots of each page are kept under the test's tmp dir (`screenshots/flow-*.png`).
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.e2e.live import Server, sign_in
from tests.e2e.test_web_researcher import _post, browser, demo

pytestmark = pytest.mark.e2e
__all__ = ["browser", "demo"]  # the researcher test's fixtures, shared
REPO = "acme/tiny-llm"
TIER = "weights-vetted"


class Browser:
    """One person's browser: a context, a page, screenshots, and CSP refusals seen."""

    def __init__(self, browser: Any, server: Server, who: str) -> None:
        self.context = browser.new_context()
        self.context.set_default_timeout(10_000)
        self.page = self.context.new_page()
        self.server, self.who = server, who
        self.refused: list[str] = []
        self.page.on("console", self._console)

    def _console(self, message: Any) -> None:
        if "Content Security" in message.text:
            self.refused.append(message.text)

    def nav(self, label: str) -> None:
        self.page.get_by_role("navigation", name="Main").get_by_role("link", name=label).click()

    def shot(self, name: str) -> None:
        path = self.server.tmp / "screenshots" / f"flow-{self.who}-{name}.png"
        self.page.screenshot(path=path, full_page=True)

    def main(self) -> str:
        return str(self.page.locator("main").inner_text())


def _researcher_asks(researcher: Browser, link: str) -> int:
    page = researcher.page
    sign_in(page, link)
    researcher.nav("Models")
    page.get_by_role("link", name=REPO).click()
    tier = page.locator("section", has=page.get_by_role("heading", name=f"Tier {TIER}"))
    tier.get_by_text(f"Request the tier {TIER}").click()
    tier.get_by_label("Affiliation (required)").fill("Oxbridge University")
    tier.get_by_label("Intended use (required)").fill("Interpretability of small models")
    tier.get_by_label("I accept acme-research-aup version 2").check()
    tier.get_by_role("button", name=f"Request {TIER}").click()
    page.get_by_role("heading", name="Every reason").wait_for()
    body = researcher.main()
    assert "is pending" in body and "approval_required" in body and "kyc_level_met" in body
    researcher.shot("pending")
    found = re.search(r"/ui/requests/(\d+)", page.url)
    assert found, page.url
    return int(found.group(1))


def _reviewer_approves(reviewer: Browser, link: str, request_id: int) -> None:
    page = reviewer.page
    sign_in(page, link)
    reviewer.nav("Review queue")
    page.get_by_role("link", name=f"#{request_id}").click()
    page.wait_for_url(f"**/ui/review/{request_id}")
    reviewer.shot("request")
    page.get_by_label("Note to the requester").fill("Approved for interpretability work.")
    page.get_by_role("button", name="Approve").click()
    page.wait_for_url("**/ui/review")
    reviewer.shot("approved")


def _researcher_takes_a_token(researcher: Browser) -> None:
    page = researcher.page
    researcher.nav("My grants")
    grants = researcher.main()
    assert TIER in grants and "active" in grants
    researcher.shot("grants")
    researcher.nav("API tokens")
    page.get_by_label("Name").fill("flow-laptop")
    page.get_by_label("models:read").check()
    page.get_by_role("button", name="Create token").click()
    assert page.get_by_label("New token").input_value().startswith("alk_")
    researcher.shot("token")


def _officer_finds(officer: Browser, action: str) -> str:
    """Search rob's events of `action` on the model, open the newest, return its page."""
    page = officer.page
    officer.nav("Audit")
    page.get_by_label("Action").select_option(action)
    page.get_by_label("Subject (username)").fill("rob")
    page.get_by_role("button", name="Search").click()
    page.wait_for_url("**/ui/compliance/audit?*")
    links = page.get_by_role("link", name=re.compile(r"^Event \d+$"))
    assert links.count() >= 1, officer.main()
    officer.shot(f"search-{action.replace(':', '-')}")
    links.last.click()
    page.get_by_role("heading", name="Chain position").wait_for()
    officer.shot(f"event-{action.replace(':', '-')}")
    return officer.main()


def test_request_review_grant_token_and_audit_in_the_browser(
    server: Server, demo: dict[str, Any], browser: Any
) -> None:
    links = demo["login_links"]
    # The demo's researcher already holds the weights tier: a reviewer ends it first.
    grant = next(g for g in server.get("/api/v1/me/grants", "researcher")["grants"])
    _post(server, f"/api/v1/grants/{grant['id']}/revoke", "reviewer", {"reason": "e2e re-ask"})
    people = {who: Browser(browser, server, who) for who in ("rob", "rita", "carol")}

    request_id = _researcher_asks(people["rob"], links["researcher"])
    _reviewer_approves(people["rita"], links["reviewer"], request_id)
    _researcher_takes_a_token(people["rob"])

    officer = people["carol"]
    sign_in(officer.page, links["compliance"])
    asked = _officer_finds(officer, "request:create")
    assert f'"request_id": {request_id}' in asked and "approval_required" in asked
    approved = _officer_finds(officer, "request:approve")
    assert f'"request_id": {request_id}' in approved and "rita" in approved
    granted = _officer_finds(officer, "grant:create")
    assert TIER in granted
    # A token is rob's, not acme's (no organization), but rob asked acme for access: its
    # officer reads it.
    token = _officer_finds(officer, "token:create")
    assert '"name": "flow-laptop"' in token and "models:read" in token
    officer.nav("Chain")
    officer.page.get_by_role("button", name="Verify now").click()
    officer.page.get_by_role("heading", name="Chain verified").wait_for()
    assert "valid" in officer.main()
    officer.shot("chain-verified")
    officer.nav("Denials")
    officer.page.locator("svg").first.wait_for()
    officer.shot("denials")

    for person in people.values():
        assert not person.refused, person.refused  # no inline script or style was blocked
        person.context.close()
