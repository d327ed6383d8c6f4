"""In a real browser, every portal page for each role: no server error, no script error, and the pages a
role may not see answer 403 or lead to the sign-in page."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from tests.e2e.test_trading import sign_in

pytestmark = [pytest.mark.slow]

PUBLIC = ["/", "/products/", "/products/?chip_class=training&min_security=3", "/inventory/", "/inventory/?group_by=supplier"]
MEMBER = ["/orders/", "/wallet/", "/vouchers/"]
SUPPLIER = ["/supplier/"]
REVIEW = ["/vouchers/review/"]
REGULATOR = ["/regulator/", "/regulator/metrics/", "/regulator/audit/"]
DEMANDS = ["/demands/"]  # members (their organisation's) and regulators (all); not the voucher authority
# role -> the page groups it may open (others: 403, or the sign-in page when signed out)
ROLES = {
    None: set(),
    "my-trader": {"member", "demands"},
    "qp-trader": {"member", "supplier", "demands"},
    "reg": {"review", "regulator", "demands"},
    "authority": {"review"},
}


def test_every_page_for_every_role(portal_traded, browser):
    w, server = portal_traded
    groups = {"member": MEMBER, "supplier": SUPPLIER, "review": REVIEW, "regulator": REGULATOR, "demands": DEMANDS}
    instrument = f"/instruments/{w['instrument'].pk}/"
    visited = 0
    for username, allowed in ROLES.items():
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        page = context.new_page()
        script_errors: list[str] = []
        page.on("pageerror", lambda exc, errors=script_errors: errors.append(str(exc)))
        page.on("console", lambda msg, errors=script_errors: msg.type == "error" and "Failed to load resource" not in msg.text and errors.append(msg.text))
        if username:
            sign_in(page, server.url, username, "/")
        for path in PUBLIC + [instrument]:
            response = page.goto(server.url + path)
            assert response.status == 200, (username, path, response.status)
            visited += 1
        expect(page.locator("#feed-state")).to_have_attribute("data-state", "live", timeout=15_000)
        for group, paths in groups.items():
            for path in paths:
                response = page.goto(server.url + path)
                visited += 1
                if group in allowed:
                    assert response.status == 200, (username, path, response.status)
                elif username is None:
                    assert page.url.startswith(f"{server.url}/accounts/login/?next="), (path, page.url)
                else:
                    assert response.status == 403, (username, path, response.status)
                    expect(page.locator("h1")).to_have_text("Not allowed")
        assert script_errors == [], (username, script_errors)
        context.close()
    assert visited == 5 * (len(PUBLIC) + 1 + sum(map(len, groups.values())))
    assert "Internal Server Error" not in server.log(), server.log()[-4000:]
