"""In Debian's Chromium (Playwright, no browser download): a researcher signs in with the
demo's login link, requests the weights tier and sees it pending with its reasons.

Screenshots of each page are kept under the test's tmp dir (`screenshots/`), not committed.
"""

from __future__ import annotations

import json
import os
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.live import Server, sign_in

pytestmark = pytest.mark.e2e
CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless system Chromium; missing, it skips locally and fails in CI."""
    if not CHROMIUM.exists():
        if os.environ.get("CI"):
            pytest.fail("chromium is required in CI: apt-get install chromium")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture(scope="module")
def demo(server: Server) -> dict[str, Any]:
    document: dict[str, Any] = json.loads((server.tmp / "data" / "demo.json").read_text())
    return document


def _post(server: Server, path: str, role: str, body: dict[str, Any]) -> Any:
    request = urllib.request.Request(
        server.endpoint + path,
        data=json.dumps(body).encode(),
        method="POST",
        headers={
            "Authorization": f"Bearer {server.tokens[role]}",
            "Content-Type": "application/json",
        },
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


def test_researcher_requests_the_weights_tier_and_sees_it_pending(
    server: Server, demo: dict[str, Any], browser: Any
) -> None:
    links = demo["login_links"]
    assert set(links) == {"publisher", "reviewer", "compliance", "researcher"}
    # The demo's researcher already holds the weights tier: a reviewer ends it, so asking
    # again goes to review.
    grant = next(g for g in server.get("/api/v1/me/grants", "researcher")["grants"])
    _post(server, f"/api/v1/grants/{grant['id']}/revoke", "reviewer", {"reason": "e2e re-ask"})

    shots = server.tmp / "screenshots"
    context = browser.new_context()
    context.set_default_timeout(10_000)
    page = context.new_page()
    refused: list[str] = []
    page.on("console", lambda m: refused.append(m.text) if "Content Security" in m.text else None)

    sign_in(page, links["researcher"])
    assert page.url.endswith("/ui/")
    page.get_by_text("Signed in as").wait_for()
    page.screenshot(path=shots / "home.png", full_page=True)

    page.get_by_role("navigation", name="Main").get_by_role("link", name="Models").click()
    page.wait_for_url("**/ui/models")
    page.screenshot(path=shots / "catalog.png", full_page=True)
    page.get_by_role("link", name="acme/tiny-llm").click()
    page.wait_for_url("**/ui/models/acme/tiny-llm")
    tier = page.locator("section", has=page.get_by_role("heading", name="Tier weights-vetted"))
    page.screenshot(path=shots / "model.png", full_page=True)

    tier.get_by_text("Request the tier weights-vetted").click()
    tier.get_by_label("Affiliation (required)").fill("Oxbridge University")
    tier.get_by_label("Intended use (required)").fill("Interpretability of small models")
    tier.get_by_label("Compute environment").select_option("on-premises")
    tier.get_by_label("I accept acme-research-aup version 2").check()
    tier.get_by_role("button", name="Request weights-vetted").click()

    page.get_by_role("heading", name="Every reason").wait_for()
    body = page.locator("main").inner_text()
    assert "is pending" in body and "approval_required" in body
    assert "kyc_level_met" in body and "agreement_accepted" in body
    page.screenshot(path=shots / "request.png", full_page=True)

    for name, path in (("requests", "requests"), ("grants", "grants"), ("tokens", "tokens")):
        page.goto(f"{server.endpoint}/ui/{path}")
        page.screenshot(path=shots / f"{name}.png", full_page=True)
    assert "revoked" in page.goto(f"{server.endpoint}/ui/grants").text()  # type: ignore[union-attr]
    page.keyboard.press("Tab")  # keyboard users reach the skip link first
    assert page.evaluate("document.activeElement.textContent") == "Skip to main content"
    assert not refused, refused  # no inline script or style was blocked by the policy

    again = browser.new_context().new_page()
    again.goto(links["researcher"])  # opening it again is harmless; pressing is refused
    again.get_by_role("button", name="Sign in").click()
    assert "not valid, was used, or has expired" in again.locator("main").inner_text()
    context.close()
