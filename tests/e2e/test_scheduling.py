"""In a real browser: a buyer states a compute demand, reads the plan and its chart, confirms it and sees the
fills (tests/portal/test_scheduling_page.py has the books: 5 + 6 + 1 lots over three windows, 172.00 CNY)."""

from __future__ import annotations

import pytest
from django.utils import timezone
from playwright.sync_api import expect

from tests.e2e.conftest import Server
from tests.e2e.test_trading import WAIT, shot, sign_in

pytestmark = [pytest.mark.slow]


@pytest.fixture
def portal_books(transactional_db, tmp_path):
    """The portal world with asks on three instruments from two data centres, then the server over it."""
    from tests.portal.test_scheduling_page import asks_build
    from tests.portal.world import world_build

    world = asks_build(world_build())
    fmt = "%Y-%m-%dT%H:%M"
    insts = world["sched_instruments"]
    world["start"] = timezone.localtime(insts[0].delivery_start).strftime(fmt)
    world["deadline"] = timezone.localtime(insts[2].delivery_end).strftime(fmt)
    server = Server(tmp_path)
    yield world, server
    server.stop()


def test_buyer_plans_sees_the_chart_confirms_and_sees_the_fills(portal_books, browser):
    w, server = portal_books
    page = browser.new_context(viewport={"width": 1280, "height": 900}, locale="en-GB").new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    sign_in(page, server.url, "my-trader", "/")
    page.get_by_role("link", name="Compute demands").click()
    page.wait_for_url(f"{server.url}/demands/")

    # A mistake first: the message is next to its field.
    page.get_by_label("Quantity (standard units)").fill("0")
    page.get_by_label("Earliest start").fill(w["start"])
    page.get_by_label("Deadline").fill(w["deadline"])
    page.get_by_role("button", name="Plan").click()
    expect(page.locator("#id_quantity_error")).to_contain_text("greater than or equal to")
    expect(page.get_by_label("Quantity (standard units)")).to_have_attribute("aria-invalid", "true")

    page.get_by_label("Quantity (standard units)").fill("12")
    page.get_by_role("button", name="Plan").click()
    page.wait_for_url(f"{server.url}/demands/*/")
    expect(page.get_by_test_id("demand-status")).to_have_text("planned")
    expect(page.get_by_test_id("plan-cost")).to_have_text("¥172.00")
    chart = page.get_by_test_id("schedule-chart")
    expect(chart).to_be_visible()
    expect(chart.locator("rect.plan-bar")).to_have_count(3)
    expect(chart.locator("g.dc-row")).to_have_count(2)
    units = sorted(chart.locator("rect.plan-bar").evaluate_all("bars => bars.map(b => b.dataset.units)"), key=int)
    assert units == ["1", "5", "6"]
    heights = chart.locator("rect.plan-bar").evaluate_all("bars => bars.map(b => b.getBBox().height)")
    assert max(heights) > min(heights) * 3  # 6 units against 1
    expect(page.get_by_test_id("alternative")).to_contain_text("the plan saves ¥8.00")
    shot(page, "scheduling-plan")

    page.get_by_role("button", name="Confirm and buy").click()
    expect(page.get_by_test_id("execution")).to_be_visible(timeout=WAIT)
    expect(page.get_by_test_id("filled-units")).to_have_text("12", timeout=WAIT)
    expect(page.get_by_test_id("demand-status")).to_have_text("filled")
    expect(page.locator('[data-testid="children"] tr[data-status="filled"]')).to_have_count(3)
    expect(chart.locator('rect.plan-bar[data-filled="100"]')).to_have_count(3)
    expect(page.get_by_test_id("confirm-form")).to_have_count(0)
    shot(page, "scheduling-report")
    assert errors == []
    assert "Internal Server Error" not in server.log(), server.log()[-4000:]
