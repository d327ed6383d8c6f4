"""In a real browser: a supplier and a buyer trade through the portal with live updates, the regulator finds
the trade, the page switches to Chinese and back, and the pages fit 1280 px and 390 px screens."""

from __future__ import annotations

import re
import time

import pytest
from playwright.sync_api import Page, expect

from tests.e2e.conftest import OUTPUT

pytestmark = [pytest.mark.slow]
PASSWORD = "pw-12345-x"  # tests/factories.UserFactory
WAIT = 15_000  # ms


def sign_in(page: Page, base: str, username: str, next_path: str) -> None:
    page.goto(f"{base}/accounts/login/?next={next_path}")
    page.get_by_label("User name").fill(username)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"{base}{next_path}")


def shot(page: Page, name: str) -> None:
    page.screenshot(path=str(OUTPUT / f"{name}.png"), full_page=True)


def no_horizontal_scroll(page: Page) -> None:
    overflow = page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
    assert overflow <= 1, f"{page.url} is {overflow}px wider than the screen"


def test_supplier_and_buyer_trade_live_and_the_regulator_sees_it(portal, browser):
    w, server = portal
    inst = w["instrument"]
    path = f"/instruments/{inst.pk}/"
    started = time.monotonic()
    try:
        desktop = {"viewport": {"width": 1280, "height": 900}, "locale": "en-GB"}
        supplier = browser.new_context(**desktop).new_page()
        buyer = browser.new_context(**desktop).new_page()
        sign_in(supplier, server.url, "qp-trader", path)
        sign_in(buyer, server.url, "my-trader", path)
        for page in (supplier, buyer):
            expect(page.locator("#feed-state")).to_have_attribute("data-state", "live", timeout=WAIT)

        # The supplier posts an ask; the buyer's book shows it without a reload.
        supplier.get_by_label("Sell").check()
        supplier.get_by_label("Price (CNY per unit)").fill("15.00")
        supplier.get_by_label("Quantity (lots)").fill("3")
        supplier.get_by_role("button", name="Place order").click()
        expect(supplier.locator("#t-result")).to_contain_text("Order placed", timeout=WAIT)
        expect(buyer.locator("#book-rows td.ask").first).to_have_text("15.00", timeout=WAIT)
        expect(buyer.locator("#book-rows td.ask").nth(1)).to_have_text("3")

        # The ticket checks tick, band and funds before sending, next to the field.
        price, qty = buyer.get_by_label("Price (CNY per unit)"), buyer.get_by_label("Quantity (lots)")
        price.fill("15.001")
        qty.fill("3")
        buyer.get_by_role("button", name="Place order").click()
        expect(buyer.locator("#err-price")).to_contain_text("multiple of the tick")
        expect(price).to_have_attribute("aria-invalid", "true")
        price.fill("19.00")
        buyer.get_by_role("button", name="Place order").click()
        expect(buyer.locator("#err-price")).to_contain_text("within the band (13.50–16.50)")
        price.fill("15.00")
        qty.fill("1000")  # 15,000 CNY and the fee: more than the 10,000 available
        buyer.get_by_role("button", name="Place order").click()
        expect(buyer.locator("#err-form")).to_contain_text("Not enough available funds")

        # The buyer lifts the ask; both see the fill, the tape and the emptied book without reloading.
        qty.fill("3")
        buyer.get_by_role("button", name="Place order").click()
        expect(buyer.locator("#t-result")).to_contain_text("Order placed", timeout=WAIT)
        for page in (buyer, supplier):
            expect(page.locator("#my-fills li").first).to_contain_text("3 @ 15.00", timeout=WAIT)
            expect(page.locator("#tape-rows tr").first).to_contain_text("15.00", timeout=WAIT)
            expect(page.locator("#last-price")).to_have_text("15.00")
            expect(page.locator("#book-rows td.ask").first).to_have_text("")
        expect(supplier.locator("#my-orders [data-field=status]").first).to_have_text("filled")
        shot(buyer, "instrument-buyer")

        # A server refusal the ticket cannot foresee (more capacity than the listing has) shows in the ticket.
        supplier.get_by_label("Sell").check()
        supplier.get_by_label("Price (CNY per unit)").fill("15.50")
        supplier.get_by_label("Quantity (lots)").fill("90000")
        supplier.get_by_role("button", name="Place order").click()
        expect(supplier.locator("#ticket .error:not(:empty)").first).to_be_visible(timeout=WAIT)

        # A dropped market socket reconnects and starts again from a snapshot.
        snapshots = buyer.evaluate("window.suanliMarket.snapshots")
        buyer.evaluate("window.suanliMarket.socket.close()")
        expect(buyer.locator("#feed-state")).to_have_attribute("data-state", "reconnecting")
        buyer.wait_for_function("n => window.suanliMarket.snapshots > n", arg=snapshots, timeout=WAIT)
        expect(buyer.locator("#feed-state")).to_have_attribute("data-state", "live")
        assert buyer.evaluate("window.suanliMarket.snapshots") == snapshots + 1
        # A gap (the copy falls one update behind) is noticed and repaired from a fresh snapshot.
        buyer.evaluate("window.suanliMarket.book.seq -= 1")
        buyer.wait_for_function("n => window.suanliMarket.snapshots > n", arg=snapshots + 1, timeout=WAIT)
        assert buyer.evaluate("window.suanliMarket.resyncs") >= 1
        supplier.get_by_label("Quantity (lots)").fill("2")
        supplier.get_by_role("button", name="Place order").click()
        expect(buyer.locator("#book-rows td.ask").first).to_have_text("15.50", timeout=WAIT)

        # My orders, wallet and the consoles.
        buyer.goto(f"{server.url}/orders/")
        expect(buyer.get_by_test_id("contracts")).to_contain_text("Qingpu Compute")
        shot(buyer, "orders")
        buyer.goto(f"{server.url}/wallet/")
        expect(buyer.get_by_test_id("balance-available")).to_contain_text("¥")
        shot(buyer, "wallet")
        # My orders: an amend the server refuses shows its message on the row; a cancel empties the list.
        supplier.goto(f"{server.url}/orders/")
        row = supplier.locator("[data-testid=open-orders] tbody tr").first
        row.get_by_label("New price").fill("99.00")
        row.get_by_role("button", name="Amend").click()
        expect(row.locator(".error")).to_contain_text("price", timeout=WAIT)
        row.get_by_role("button", name="Cancel").click()
        expect(supplier.get_by_test_id("open-orders")).to_contain_text("No open orders.", timeout=WAIT)
        supplier.goto(f"{server.url}/supplier/")
        expect(supplier.get_by_test_id("listings")).to_contain_text("AI-TRAIN")
        shot(supplier, "supplier")

        # The regulator finds the trade on the tape.
        regulator = browser.new_context(**desktop).new_page()
        sign_in(regulator, server.url, "reg", "/regulator/")
        regulator.get_by_label("Organisation name contains").fill("Moyuan")
        regulator.get_by_role("button", name="Filter").click()
        row = regulator.locator("[data-testid=reg-tape] tbody tr").first
        expect(row).to_contain_text("Qingpu Compute")
        expect(row).to_contain_text("15.00")
        expect(row).to_contain_text(inst.code)
        shot(regulator, "regulator")
        regulator.goto(f"{server.url}/regulator/metrics/")
        shot(regulator, "metrics")

        # Chinese and back, on the instrument page.
        buyer.goto(f"{server.url}{path}")
        buyer.get_by_test_id("lang-zh-hans").click()
        expect(buyer.locator("h2#book-h")).to_have_text("订单簿")
        expect(buyer.locator("#feed-state")).to_have_text("实时", timeout=WAIT)
        expect(buyer.locator("#my-orders [data-field=status]").first).to_have_text("已成交")
        expect(buyer.get_by_test_id("lang-en")).to_have_text("English")
        shot(buyer, "instrument-zh")
        buyer.get_by_test_id("lang-en").click()
        expect(buyer.locator("h2#book-h")).to_have_text("Order book")
        expect(buyer.get_by_test_id("lang-zh-hans")).to_have_text("简体中文")

        # 390 px: every main page fits the screen (wide tables scroll inside their box).
        phone = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True).new_page()
        sign_in(phone, server.url, "my-trader", "/")
        for p in ("/", "/products/", "/inventory/", path, "/orders/", "/wallet/", "/vouchers/"):
            phone.goto(f"{server.url}{p}")
            no_horizontal_scroll(phone)
            shot(phone, "phone-" + (re.sub(r"\W+", "-", p).strip("-") or "home"))
        for p in ("/", "/products/", "/inventory/", path):
            buyer.goto(f"{server.url}{p}")
            no_horizontal_scroll(buyer)
        shot(buyer, "home")
    except BaseException:
        print("server log (tail):\n" + server.log()[-4000:])
        raise
    assert "Internal Server Error" not in server.log(), server.log()[-4000:]  # no page or API call failed
    print(f"\nbrowser test: {time.monotonic() - started:.1f} s; screenshots in {OUTPUT}")
