"""In Debian's Chromium (Playwright, no browser download): a reviewer signs in with the demo's
login link, opens the review queue and approves the researcher's pending weights request.

Screenshots of each page are kept under the test's tmp dir (`screenshots/`), not committed.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.e2e.live import Server, sign_in
from tests.e2e.test_web_researcher import _post, browser, demo

pytestmark = pytest.mark.e2e
__all__ = ["browser", "demo"]  # the researcher test's fixtures, shared
REPO = "acme/tiny-llm"


def _pending_weights_request(server: Server) -> int:
    """The demo's researcher holds the weights tier: a reviewer ends it, and the researcher
    asks again, which goes to review."""
    grant = next(g for g in server.get("/api/v1/me/grants", "researcher")["grants"])
    _post(server, f"/api/v1/grants/{grant['id']}/revoke", "reviewer", {"reason": "e2e re-ask"})
    form = {"affiliation": "Oxbridge University", "intended_use": "Interpretability"}
    body = {"tier": "weights-vetted", "form": form, "agreement": "acme-research-aup@2"}
    made = _post(server, f"/api/v1/models/{REPO}/access", "researcher", body)
    assert made["status"] == "pending", json.dumps(made)
    return int(made["id"])


def test_reviewer_approves_the_pending_weights_request(
    server: Server, demo: dict[str, Any], browser: Any
) -> None:
    request_id = _pending_weights_request(server)
    shots = server.tmp / "screenshots"
    context = browser.new_context()
    context.set_default_timeout(10_000)
    page = context.new_page()
    refused: list[str] = []
    page.on("console", lambda m: refused.append(m.text) if "Content Security" in m.text else None)

    sign_in(page, demo["login_links"]["reviewer"])
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Review queue").click()
    page.wait_for_url("**/ui/review")
    page.screenshot(path=shots / "review-queue.png", full_page=True)
    page.get_by_role("link", name=f"#{request_id}").click()
    page.wait_for_url(f"**/ui/review/{request_id}")
    body = page.locator("main").inner_text()
    assert "Interpretability" in body and "approval_required" in body and "institution" in body
    page.screenshot(path=shots / "review-request.png", full_page=True)

    page.get_by_label("Note to the requester").fill("Approved for interpretability work.")
    page.get_by_role("button", name="Approve").click()
    page.wait_for_url("**/ui/review")
    assert f"Request #{request_id}" in page.locator("main").inner_text()
    page.screenshot(path=shots / "review-done.png", full_page=True)

    page.get_by_role("navigation", name="Main").get_by_role("link", name="Manage models").click()
    page.get_by_role("link", name=REPO).click()
    page.get_by_role("heading", name="Revisions").wait_for()
    page.screenshot(path=shots / "manage-model.png", full_page=True)
    assert not refused, refused  # no inline script or style was blocked by the policy
    context.close()

    grants = server.get("/api/v1/me/grants", "researcher")["grants"]
    assert any(g["tier"] == "weights-vetted" and g["status"] == "active" for g in grants)


def test_publisher_pages_render_and_validate_in_place(
    server: Server, demo: dict[str, Any], browser: Any
) -> None:
    shots = server.tmp / "screenshots"
    context = browser.new_context()
    context.set_default_timeout(10_000)
    page = context.new_page()
    sign_in(page, demo["login_links"]["publisher"])
    page.goto(f"{server.endpoint}/ui/manage/models/{REPO}/grants")
    page.screenshot(path=shots / "manage-grants.png", full_page=True)
    page.goto(f"{server.endpoint}/ui/manage/models/{REPO}/policy")
    editor = page.get_by_label("Policy document (YAML)")
    editor.fill(editor.input_value().replace("kyc: institution", "kyc: passport", 1))
    page.get_by_role("button", name="Validate").click()
    page.get_by_role("alert").wait_for()
    problem = page.locator("li.has-error").first.inner_text()
    assert "kyc: passport" in problem and "unknown KYC level" in problem
    page.screenshot(path=shots / "manage-policy-invalid.png", full_page=True)
    context.close()
