"""Order entry over REST: placement with holds, matching, fills, contracts, cancels, amends, rejections."""

from decimal import Decimal

import pytest
from django.db import IntegrityError, transaction

from exchange.models import CapacityHold, Contract, Order, OrderEvent, Trade
from ledger.models import JournalEntry
from ledger.selectors import balances_get
from ledger.services import platform_account
from ledger.verify import ledger_verify
from marketplace.models import PlatformRole
from tests.factories import OrganisationFactory, UserFactory, member

pytestmark = pytest.mark.django_db


def place(api, user, instrument_, **fields):
    api.force_authenticate(user)
    body = {"instrument": instrument_.pk, "side": "buy", "price": "15.00", "quantity": 1, "client_order_id": "c1"} | fields
    return api.post("/api/v1/orders/", body, format="json")


def test_a_resting_sell_and_a_crossing_buy_trade_at_the_makers_price(api, market_setup):
    m = market_setup
    inst = m["instrument"]
    sell = place(api, m["seller_user"], inst, side="sell", price="15.00", quantity=5, client_order_id="s1")
    assert sell.status_code == 201, sell.json()
    assert sell.json()["status"] == "open" and sell.json()["open_quantity"] == 5
    assert CapacityHold.objects.get(order_id=sell.json()["id"]).lots == 5

    buy = place(api, m["buyer_user"], inst, side="buy", price="15.10", quantity=3, client_order_id="b1")
    assert buy.status_code == 201, buy.json()
    body = buy.json()
    assert body["status"] == "filled" and body["filled_quantity"] == 3
    assert [(f["price"], f["quantity"]) for f in body["fills"]] == [("15.00", 3)]

    trade = Trade.objects.get()
    assert (trade.price_fen_per_lot, trade.quantity, trade.value_fen, trade.taker_side) == (1500, 3, 4500, "buy")
    assert (trade.buyer_fee_fen, trade.seller_fee_fen) == (5, 2)  # 10 bps taker on 45.00 rounds to 0.05; 5 bps maker to 0.02
    contract = Contract.objects.get()
    assert (contract.buyer, contract.seller, contract.quantity, contract.value_fen, contract.listing) == (m["buyer"], m["supplier"], 3, 4500, m["listing"])
    # The buyer paid 45.00 into escrow and 0.05 in fees; the rest of the hold came back.
    assert balances_get(organisation=m["buyer"]) == {"available": 1_000_000 - 4_505, "held": 0, "escrow": 4_500, "receivable": 0}
    assert platform_account(kind="fees").balance_fen == 5
    # ... in one journal entry: the held funds out, the value into escrow and the fee to the platform.
    entry = JournalEntry.objects.get(idempotency_key=f"trade:{inst.pk}:{trade.seq}:escrow")
    postings = sorted((p.account.kind, p.amount_fen) for p in entry.postings.select_related("account"))
    assert (entry.kind, postings) == ("capture", [("escrow", 4_500), ("fees", 5), ("held", -4_505)])
    assert not JournalEntry.objects.filter(idempotency_key__startswith=f"trade:{inst.pk}:").exclude(pk=entry.pk).exists()
    assert ledger_verify().ok
    seller_order = Order.objects.get(pk=sell.json()["id"])
    assert (seller_order.status, seller_order.filled_quantity, seller_order.open_quantity) == ("open", 3, 2)
    assert list(OrderEvent.objects.filter(order=seller_order).values_list("kind", flat=True)) == ["accepted", "filled"]

    book = api.get(f"/api/v1/instruments/{inst.pk}/book/").json()
    assert book["asks"] == [["15.00", 2]] and book["bids"] == []
    assert book["seq"] >= 2
    assert api.get("/api/v1/trades/", {"instrument": inst.pk}).json()["results"][0]["price"] == "15.00"


def test_a_resting_buy_holds_price_times_quantity_plus_maximum_fee(api, market_setup):
    m = market_setup
    response = place(api, m["buyer_user"], m["instrument"], price="14.00", quantity=10)
    assert response.json()["status"] == "open"
    # 10 lots x 14.00 = 140.00; max fee ceil(140.00 x 10 bps) + 0.01 = 0.15.
    assert balances_get(organisation=m["buyer"])["held"] == 14_015
    cancel = api.delete(f"/api/v1/orders/{response.json()['id']}/")
    assert cancel.status_code == 200 and cancel.json()["status"] == "cancelled"
    assert balances_get(organisation=m["buyer"]) == {"available": 1_000_000, "held": 0, "escrow": 0, "receivable": 0}
    assert api.delete(f"/api/v1/orders/{response.json()['id']}/").status_code == 400


def test_retry_with_the_same_client_order_id_returns_the_same_order(api, market_setup):
    m = market_setup
    first = place(api, m["buyer_user"], m["instrument"], price="14.00", quantity=2, client_order_id="retry-1")
    again = place(api, m["buyer_user"], m["instrument"], price="14.00", quantity=2, client_order_id="retry-1")
    assert (first.status_code, again.status_code) == (201, 200)
    assert first.json()["id"] == again.json()["id"]
    assert Order.objects.count() == 1
    assert balances_get(organisation=m["buyer"])["held"] == 2_804
    conflict = place(api, m["buyer_user"], m["instrument"], price="14.01", quantity=2, client_order_id="retry-1")
    assert conflict.status_code == 409 and "client_order_id" in conflict.json()


@pytest.mark.parametrize(
    ("fields", "field", "message"),
    [
        ({"price": "15.005"}, "price", "multiple of the tick"),
        ({"price": "17.00"}, "price", "outside today's band 13.50-16.50"),
        ({"price": "13.49"}, "price", "outside today's band"),
        ({"quantity": 0}, "quantity", "greater than or equal to 1"),
        ({"quantity": 200_000}, "quantity", "between 1 and 100000"),
        ({"instrument": 999_999}, "instrument", "does not exist"),
        ({"type": "market", "price": None, "time_in_force": "GTC"}, "time_in_force", "IOC or FOK"),
        ({"time_in_force": "GTD"}, "expires_at", "needs expires_at"),
        ({"post_only": True, "time_in_force": "IOC"}, "post_only", "cannot be market, IOC or FOK"),
        ({"client_order_id": "has space"}, "client_order_id", "letters, digits"),
        ({"colour": "red"}, "colour", "Unknown field"),
        ({"side": "sell"}, "side", "Only supplier"),
    ],
)
def test_bad_orders_are_refused_with_the_field_and_nothing_is_held(api, market_setup, fields, field, message):
    m = market_setup
    response = place(api, m["buyer_user"], m["instrument"], **fields)
    assert response.status_code == 400, response.json()
    assert message in " ".join(str(x) for x in response.json()[field])
    assert not Order.objects.exists()
    assert balances_get(organisation=m["buyer"])["held"] == 0


def test_insufficient_funds_and_capacity_are_refused(api, market_setup):
    m = market_setup
    response = place(api, m["buyer_user"], m["instrument"], price="15.00", quantity=700)
    assert response.status_code == 400
    assert "Insufficient funds" in response.json()["amount"][0]
    response = place(api, m["seller_user"], m["instrument"], side="sell", price="15.00", quantity=238, client_order_id="big")
    assert response.status_code == 400
    assert "at most 237 lots" in response.json()["quantity"][0]
    assert not Order.objects.exists()
    assert balances_get(organisation=m["buyer"]) == {"available": 1_000_000, "held": 0, "escrow": 0, "receivable": 0}


@pytest.mark.parametrize("instrument", ["²", "١", "0", "-1", "9" * 30, 10**30, True, 1.5, "x"])
def test_an_instrument_that_is_not_an_id_is_a_field_error(api, market_setup, instrument):
    """Unicode digits pass `str.isdigit` and a 30-digit id overflowed SQLite: both were 500s."""
    response = place(api, market_setup["buyer_user"], market_setup["instrument"], instrument=instrument)
    assert response.status_code == 400 and "instrument" in response.json(), response.content
    assert not Order.objects.exists()


def test_halted_instrument_refuses_orders(api, market_setup):
    m = market_setup
    m["instrument"].status = "halted"
    m["instrument"].save()
    response = place(api, m["buyer_user"], m["instrument"])
    assert response.status_code == 400 and "halted" in response.json()["instrument"][0]


def test_foreign_orders_are_not_found_and_regulators_cannot_trade(api, market_setup):
    m = market_setup
    order_id = place(api, m["buyer_user"], m["instrument"], price="14.00").json()["id"]
    rival = member(OrganisationFactory(kind="buyer", name="Rival"), role="trader")
    api.force_authenticate(rival)
    assert api.get(f"/api/v1/orders/{order_id}/").status_code == 404
    assert api.delete(f"/api/v1/orders/{order_id}/").status_code == 404
    assert api.patch(f"/api/v1/orders/{order_id}/", {"quantity": 5}, format="json").status_code == 404
    assert api.get("/api/v1/orders/").json()["results"] == []
    viewer = member(m["buyer"], role="viewer")
    api.force_authenticate(viewer)
    assert api.get(f"/api/v1/orders/{order_id}/").status_code == 200
    assert api.delete(f"/api/v1/orders/{order_id}/").status_code == 403
    regulator = UserFactory(platform_role=PlatformRole.REGULATOR)
    response = place(api, regulator, m["instrument"], client_order_id="reg")
    assert response.status_code == 403
    assert Order.objects.get(pk=order_id).status == "open"


def test_amend_down_keeps_priority_and_amend_up_extends_the_hold(api, market_setup):
    m = market_setup
    inst = m["instrument"]
    first = place(api, m["buyer_user"], inst, price="14.00", quantity=4, client_order_id="a").json()["id"]
    place(api, m["buyer_user"], inst, price="14.00", quantity=1, client_order_id="b")
    api.force_authenticate(m["buyer_user"])
    response = api.patch(f"/api/v1/orders/{first}/", {"quantity": 2}, format="json")
    assert response.status_code == 200 and response.json()["quantity"] == 2
    # Still first in the queue: a sell of 2 fills it, not the later order.
    place(api, m["seller_user"], inst, side="sell", price="14.00", quantity=2, client_order_id="s")
    assert Order.objects.get(pk=first).status == "filled"
    second = Order.objects.get(client_order_id="b")
    api.force_authenticate(m["buyer_user"])
    response = api.patch(f"/api/v1/orders/{second.pk}/", {"price": "14.50", "quantity": 3}, format="json")
    assert response.status_code == 200, response.json()
    assert (response.json()["price"], response.json()["open_quantity"]) == ("14.50", 3)
    # Hold now covers 3 x 14.50 = 43.50 plus the maximum fee 0.05.
    second.hold.refresh_from_db()
    assert second.hold.remaining_fen >= 4_355
    assert ledger_verify().ok


def test_an_amend_down_gives_back_the_funds_and_capacity_the_order_no_longer_needs(api, market_setup):
    m = market_setup
    inst = m["instrument"]
    buy = place(api, m["buyer_user"], inst, price="14.00", quantity=10, client_order_id="big").json()["id"]
    assert balances_get(organisation=m["buyer"])["held"] == 14_015  # 140.00 + max fee 0.15
    api.force_authenticate(m["buyer_user"])
    assert api.patch(f"/api/v1/orders/{buy}/", {"quantity": 4}, format="json").status_code == 200
    # 4 x 14.00 = 56.00 plus the maximum fee ceil(0.056) + 0.01 = 0.07: the other 84.08 is available again.
    assert balances_get(organisation=m["buyer"]) == {"available": 1_000_000 - 5_607, "held": 5_607, "escrow": 0, "receivable": 0}
    assert api.patch(f"/api/v1/orders/{buy}/", {"price": "13.50"}, format="json").status_code == 200
    assert balances_get(organisation=m["buyer"])["held"] == 5_400 + 7  # 4 x 13.50 + 0.07

    sell = place(api, m["seller_user"], inst, side="sell", price="16.00", quantity=8, client_order_id="s").json()["id"]
    api.force_authenticate(m["seller_user"])
    assert api.patch(f"/api/v1/orders/{sell}/", {"quantity": 3}, format="json").status_code == 200
    assert CapacityHold.objects.get(order_id=sell).open_lots == 3
    # A partial fill then a cancel settle from the trimmed hold: 2 lots sold, the last one released.
    place(api, m["buyer_user"], inst, price="16.00", quantity=2, client_order_id="lift")
    api.force_authenticate(m["seller_user"])
    assert api.delete(f"/api/v1/orders/{sell}/").status_code == 200
    cap = CapacityHold.objects.get(order_id=sell)
    assert (cap.lots, cap.sold_lots, cap.open_lots) == (8, 2, 0)
    assert ledger_verify().ok


def test_an_amend_up_the_matcher_refuses_gives_back_what_it_reserved(api, market_setup):
    from exchange import transport
    from exchange.models import RiskLimit

    m = market_setup
    RiskLimit.objects.create(organisation=m["buyer"], max_open_notional_fen=10_000)  # 100.00 CNY open at most
    transport.broadcast({"op": "risk_sync"})
    buy = place(api, m["buyer_user"], m["instrument"], price="14.00", quantity=5, client_order_id="a").json()["id"]
    held = balances_get(organisation=m["buyer"])["held"]
    assert held == 7_008  # 70.00 + ceil(0.07) + 0.01
    api.force_authenticate(m["buyer_user"])
    refused = api.patch(f"/api/v1/orders/{buy}/", {"quantity": 9}, format="json")  # 126.00 open: over the limit
    assert refused.status_code == 400, refused.json()
    assert Order.objects.get(pk=buy).quantity == 5
    assert balances_get(organisation=m["buyer"])["held"] == held  # nothing reserved for the refused 9 lots
    assert ledger_verify().ok


def test_an_amend_up_beyond_the_funds_or_the_capacity_is_refused_and_changes_nothing(api, market_setup):
    m = market_setup
    inst = m["instrument"]
    place(api, m["buyer_user"], inst, price="14.00", quantity=600, client_order_id="big")  # 8,400.00 + 8.41 held
    small = place(api, m["buyer_user"], inst, price="14.00", quantity=50, client_order_id="small").json()["id"]
    before = balances_get(organisation=m["buyer"])
    assert before["available"] == 1_000_000 - 840_841 - 70_071
    api.force_authenticate(m["buyer_user"])
    refused = api.patch(f"/api/v1/orders/{small}/", {"quantity": 200}, format="json")  # 2,800.00: 1,000 more than is free
    assert refused.status_code == 400
    assert "Insufficient funds in available for the amend: short by" in refused.json()["quantity"][0]
    refused = api.patch(f"/api/v1/orders/{small}/", {"price": "16.00"}, format="json")  # 800.00 + 0.81: fits
    assert refused.status_code == 200, refused.json()
    assert balances_get(organisation=m["buyer"])["held"] == before["held"] + 10_010
    assert (Order.objects.get(pk=small).quantity, Order.objects.get(pk=small).price_fen_per_lot) == (50, 1600)

    sell = place(api, m["seller_user"], inst, side="sell", price="16.50", quantity=200, client_order_id="s").json()["id"]
    api.force_authenticate(m["seller_user"])
    refused = api.patch(f"/api/v1/orders/{sell}/", {"quantity": 238}, format="json")  # the listing has 237 lots
    assert refused.status_code == 400
    assert refused.json()["quantity"] == ["Not enough listed capacity for the larger quantity: 37 more lots free on the order's listing."]
    assert CapacityHold.objects.get(order_id=sell).open_lots == 200
    assert api.patch(f"/api/v1/orders/{sell}/", {"quantity": 237}, format="json").status_code == 200
    assert CapacityHold.objects.get(order_id=sell).open_lots == 237
    assert Order.objects.get(pk=sell).quantity == 237
    assert ledger_verify().ok


def test_an_amend_up_that_crosses_trades_from_the_raised_hold(api, market_setup):
    m = market_setup
    inst = m["instrument"]
    place(api, m["seller_user"], inst, side="sell", price="16.00", quantity=5, client_order_id="s")
    buy = place(api, m["buyer_user"], inst, price="14.00", quantity=2, client_order_id="b").json()["id"]
    assert balances_get(organisation=m["buyer"])["held"] == 2_804  # 28.00 + ceil(0.028) + 0.01
    api.force_authenticate(m["buyer_user"])
    response = api.patch(f"/api/v1/orders/{buy}/", {"price": "16.00", "quantity": 5}, format="json")
    assert response.status_code == 200, response.json()
    assert (response.json()["status"], response.json()["filled_quantity"]) == ("filled", 5)
    # Raised to 80.00 + 0.09 in the batch that traded: 80.00 to escrow, the 10 bps taker fee 0.08, 0.01 back.
    assert balances_get(organisation=m["buyer"]) == {"available": 1_000_000 - 8_000 - 8, "held": 0, "escrow": 8_000, "receivable": 0}
    assert ledger_verify().ok


def test_amends_queued_in_one_batch_reserve_and_trim_in_order(api, market_setup):
    """An amend down then an amend up of the same order in one matcher batch (two clients, or one client
    pipelining over a websocket): the matcher owns the hold, so the later price is reserved against what the
    earlier amend left, and a sell that fills the order at the later price settles from the hold."""
    from exchange import transport

    m = market_setup
    inst = m["instrument"]
    buy = place(api, m["buyer_user"], inst, price="14.00", quantity=10, client_order_id="b").json()["id"]
    assert balances_get(organisation=m["buyer"])["held"] == 14_015
    replies = transport.send([
        {"op": "amend", "order": buy, "instrument": inst.pk, "price": 1350, "quantity": None, "actor": m["buyer_user"].pk},
        {"op": "amend", "order": buy, "instrument": inst.pk, "price": 1620, "quantity": 4, "actor": m["buyer_user"].pk},
    ])
    assert [r.get("rejected") for r in replies] == [None, None]
    # 4 x 16.20 = 64.80 + the maximum fee ceil(0.0648) + 0.01 = 0.08: raised from 13,515 after the first amend, trimmed to 6,488.
    assert balances_get(organisation=m["buyer"])["held"] == 6_488
    sold = place(api, m["seller_user"], inst, side="sell", price="16.20", quantity=4, client_order_id="s")
    assert sold.json()["status"] == "filled", sold.json()
    assert Order.objects.get(pk=buy).status == "filled"
    # The buyer rested, so paid the 5 bps maker fee: 64.80 x 0.0005 = 0.03.
    assert balances_get(organisation=m["buyer"]) == {"available": 1_000_000 - 6_480 - 3, "held": 0, "escrow": 6_480, "receivable": 0}
    assert ledger_verify().ok


def test_cancel_all_and_fills_list(api, market_setup):
    m = market_setup
    inst = m["instrument"]
    for i in range(3):
        place(api, m["buyer_user"], inst, price=f"14.0{i}", quantity=1, client_order_id=f"o{i}")
    place(api, m["seller_user"], inst, side="sell", price="14.00", quantity=1, client_order_id="s")
    api.force_authenticate(m["buyer_user"])
    fills = api.get("/api/v1/fills/").json()["results"]
    assert [(f["side"], f["price"], f["liquidity"]) for f in fills] == [("buy", "14.02", "maker")]
    response = api.post("/api/v1/orders/cancel-all/", {}, format="json")
    assert response.json() == {"requested": 2, "confirmed": True}
    assert sorted(Order.objects.filter(organisation=m["buyer"]).values_list("status", flat=True)) == ["cancelled", "cancelled", "filled"]
    assert balances_get(organisation=m["buyer"])["held"] == 0
    assert ledger_verify().ok


def test_catching_up_after_a_reconnect_finds_old_orders_that_changed(api, market_setup):
    """docs/websockets.md "Reconnecting": `updated_since` lists every order changed since the client's last
    event, one created before it included (`since` counts creation only)."""
    m = market_setup
    inst = m["instrument"]
    old = place(api, m["buyer_user"], inst, price="14.00", quantity=2, client_order_id="old").json()
    untouched = place(api, m["buyer_user"], inst, price="13.90", quantity=1, client_order_id="untouched").json()
    last_event = Order.objects.get(pk=untouched["id"]).updated_at.isoformat()
    place(api, m["seller_user"], inst, side="sell", price="14.00", quantity=2, client_order_id="hit")  # fills "old"
    api.force_authenticate(m["buyer_user"])
    changed = api.get("/api/v1/orders/", {"updated_since": last_event}).json()["results"]
    # Inclusive: the order of the last event seen comes again (others of its batch share its time).
    assert sorted((o["client_order_id"], o["status"]) for o in changed) == [("old", "filled"), ("untouched", "open")]
    assert "old" not in [o["client_order_id"] for o in api.get("/api/v1/orders/", {"since": last_event}).json()["results"]]
    assert old["status"] == "open"
    bad = api.get("/api/v1/orders/", {"updated_since": "yesterday"})
    assert bad.status_code == 400 and "updated_since" in bad.json()


def test_fractional_lots_are_refused(api, market_setup):
    m = market_setup
    response = place(api, m["buyer_user"], m["instrument"], quantity="1.5")
    assert response.status_code == 400 and "valid integer" in response.json()["quantity"][0]


def test_the_ticker_sums_the_last_24_hours_only(api, market_setup):
    import datetime as dt

    from django.utils import timezone

    m = market_setup
    inst = m["instrument"]
    quiet = api.get(f"/api/v1/instruments/{inst.pk}/ticker/").json()
    assert (quiet["last"], quiet["open_24h"], quiet["high_24h"], quiet["volume_24h"], quiet["value_24h"], quiet["trades_24h"]) == (
        None, None, None, 0, "0.00", 0)
    place(api, m["seller_user"], inst, side="sell", price="15.30", quantity=2, client_order_id="s1")
    place(api, m["buyer_user"], inst, side="buy", price="15.30", quantity=2, client_order_id="b1")
    Trade.objects.filter(instrument=inst).update(created_at=timezone.now() - dt.timedelta(hours=25))  # yesterday's
    place(api, m["seller_user"], inst, side="sell", price="15.10", quantity=1, client_order_id="s2")
    place(api, m["buyer_user"], inst, side="buy", price="15.10", quantity=1, client_order_id="b2")
    t = api.get(f"/api/v1/instruments/{inst.pk}/ticker/").json()
    assert (t["last"], t["open_24h"], t["high_24h"], t["low_24h"], t["volume_24h"], t["value_24h"], t["trades_24h"]) == (
        "15.10", "15.10", "15.10", "15.10", 1, "15.10", 1)


def test_ticker_and_candles_summarise_the_tape(api, market_setup):
    m = market_setup
    inst = m["instrument"]
    place(api, m["seller_user"], inst, side="sell", price="15.00", quantity=3, client_order_id="s1")
    place(api, m["seller_user"], inst, side="sell", price="15.20", quantity=3, client_order_id="s2")
    place(api, m["buyer_user"], inst, side="buy", price="15.20", quantity=4, client_order_id="b1")  # 3 @ 15.00, 1 @ 15.20
    place(api, m["buyer_user"], inst, side="buy", price="14.90", quantity=2, client_order_id="b2")
    ticker = api.get(f"/api/v1/instruments/{inst.pk}/ticker/").json()
    assert {k: ticker[k] for k in ("last", "best_bid", "best_ask", "open_24h", "high_24h", "low_24h", "volume_24h", "value_24h", "trades_24h")} == {
        "last": "15.20", "best_bid": "14.90", "best_ask": "15.20", "open_24h": "15.00", "high_24h": "15.20",
        "low_24h": "15.00", "volume_24h": 4, "value_24h": "60.20", "trades_24h": 2,
    }
    candles = api.get(f"/api/v1/instruments/{inst.pk}/candles/", {"interval": "1h"}).json()["candles"]
    assert len(candles) == 1
    assert {k: candles[0][k] for k in ("open", "high", "low", "close", "volume", "trades")} == {
        "open": "15.00", "high": "15.20", "low": "15.00", "close": "15.20", "volume": 4, "trades": 2,
    }
    assert api.get(f"/api/v1/instruments/{inst.pk}/candles/", {"interval": "7m"}).status_code == 400
    for depth in ("0", "501", "²", "1" * 30, "x"):  # "²" passed str.isdigit and int() refused it: a 500
        assert api.get(f"/api/v1/instruments/{inst.pk}/book/", {"depth": depth}).status_code == 400, depth
    assert api.get("/api/v1/instruments/999999/ticker/").status_code == 404


@pytest.mark.parametrize("side", ["buy", "sell"])
def test_the_placement_answer_is_the_order_as_stored(api, market_setup, side):
    """POST answers from the matcher's reply without reading the order back: it must equal a GET of it."""
    m = market_setup
    inst = m["instrument"]
    place(api, m["seller_user"], inst, side="sell", price="15.00", quantity=2, client_order_id="maker")
    user = m["buyer_user"] if side == "buy" else m["seller_user"]
    price = "15.00" if side == "buy" else "16.00"
    posted = place(api, user, inst, side=side, price=price, quantity=3, client_order_id="x2")
    assert posted.status_code == 201, posted.json()
    got = api.get(f"/api/v1/orders/{posted.json()['id']}/")
    assert posted.json() == got.json()
    if side == "buy":
        assert posted.json()["status"] == "open" and posted.json()["filled_quantity"] == 2 and len(posted.json()["fills"]) == 1


def test_one_batch_spends_funds_and_capacity_in_arrival_order(market_setup):
    """The matcher admits a batch's orders in the order they arrived: the one that no longer fits is refused
    (nothing stored for it), the ones before and after it that fit are placed."""
    from exchange import services, transport

    m = market_setup
    inst = m["instrument"]

    def command(user, org, side, qty, cid):
        req = services.OrderRequest(instrument=inst, side=side, quantity=qty, client_order_id=cid, price=inst.reference_price - inst.tick_size * (1 if side == "buy" else -1))
        return services.order_command(user=user, organisation=org, request=req)

    replies = transport.send([
        command(m["buyer_user"], m["buyer"], "buy", 400, "b-400"),  # 400 x 14.99 + fee: 6,000 of the 10,000 CNY
        command(m["buyer_user"], m["buyer"], "buy", 300, "b-300"),  # would need 4,500 more: refused
        command(m["buyer_user"], m["buyer"], "buy", 200, "b-200"),  # 3,000 more: fits
        command(m["seller_user"], m["supplier"], "sell", 200, "s-200"),
        command(m["seller_user"], m["supplier"], "sell", 100, "s-100"),  # 237 lots listed: refused
        command(m["seller_user"], m["supplier"], "sell", 37, "s-37"),
    ])
    assert [r.get("state", {}).get("status") or r["error"]["field"] for r in replies] == ["open", "amount", "open", "open", "quantity", "open"]
    assert "Insufficient funds" in replies[1]["error"]["message"] and "at most 37 lots" in replies[4]["error"]["message"]
    assert sorted(Order.objects.values_list("client_order_id", flat=True)) == ["b-200", "b-400", "s-200", "s-37"]
    assert CapacityHold.objects.filter(order__client_order_id__in=["s-200", "s-37"]).count() == 2
    assert ledger_verify().ok


def test_a_retry_inside_one_batch_answers_with_the_first_order(market_setup):
    from exchange import services, transport

    m = market_setup
    inst = m["instrument"]

    def command(qty):
        req = services.OrderRequest(instrument=inst, side="buy", quantity=qty, client_order_id="twice", price=inst.reference_price)
        return services.order_command(user=m["buyer_user"], organisation=m["buyer"], request=req)

    first, retry, other = transport.send([command(2), command(2), command(3)])
    assert (first["created"], retry["created"]) == (True, False)
    assert retry["state"]["id"] == first["state"]["id"]
    assert other["error"]["status"] == 409 and other["error"]["field"] == "client_order_id"
    assert Order.objects.filter(client_order_id="twice").count() == 1
    assert balances_get(organisation=m["buyer"])["held"] == 3_004  # one hold: 30.00 + max fee 0.03 + 0.01


def test_in_one_batch_a_client_order_id_is_matched_per_organisation(market_setup):
    """Idempotency keys are (organisation, client_order_id) pairs: in a batch that mixes a retry with another
    organisation's order under the same id, only the retry finds the stored order."""
    from exchange import services, transport

    m = market_setup
    inst = m["instrument"]

    def command(user, org, side, cid, price):
        req = services.OrderRequest(instrument=inst, side=side, quantity=2, client_order_id=cid, price=Decimal(price))
        return services.order_command(user=user, organisation=org, request=req)

    (stored,) = transport.send([command(m["buyer_user"], m["buyer"], "buy", "k1", "14.90")])
    retry, seller_k1, buyer_k2 = transport.send([
        command(m["buyer_user"], m["buyer"], "buy", "k1", "14.90"),
        command(m["seller_user"], m["supplier"], "sell", "k1", "15.10"),
        command(m["buyer_user"], m["buyer"], "buy", "k2", "14.80"),
    ])
    assert (retry["created"], retry["state"]["id"]) == (False, stored["state"]["id"])
    assert seller_k1["created"] and seller_k1["state"]["organisation"] == m["supplier"].pk
    assert buyer_k2["created"] and buyer_k2["state"]["id"] not in (stored["state"]["id"], seller_k1["state"]["id"])
    assert sorted(Order.objects.values_list("organisation_id", "client_order_id")) == sorted(
        [(m["buyer"].pk, "k1"), (m["buyer"].pk, "k2"), (m["supplier"].pk, "k1")])


def test_orders_fills_and_the_tape_page_newest_first_by_cursor(api, market_setup):
    """The trading lists grow without end: pages follow `next` cursors, newest first, without a total. An order
    placed while a client pages is neither repeated nor makes it skip one, and no page counts the list."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    m = market_setup
    inst = m["instrument"]
    for i in range(4):
        assert place(api, m["seller_user"], inst, side="sell", price=f"15.0{i}", quantity=1, client_order_id=f"s{i}").status_code == 201
    ids = [place(api, m["buyer_user"], inst, price="15.10", quantity=1, client_order_id=f"b{i}").json()["id"] for i in range(4)]
    ids += [place(api, m["buyer_user"], inst, price="14.00", quantity=1, client_order_id=f"r{i}").json()["id"] for i in range(3)]

    def walk(path, user, between=None):
        api.force_authenticate(user)
        seen, url, pages = [], f"{path}?page_size=3", 0
        while url:
            with CaptureQueriesContext(connection) as reads:
                body = api.get(url).json()
            assert "count" not in body and not any("COUNT(" in q["sql"].upper() for q in reads.captured_queries), body
            seen += [row["id"] for row in body["results"]]
            url, pages = body["next"], pages + 1
            if pages == 1 and between:
                between()
        return seen

    late = []
    orders = walk("/api/v1/orders/", m["buyer_user"], between=lambda: late.append(
        place(api, m["buyer_user"], inst, price="14.00", quantity=1, client_order_id="late").json()["id"]))
    assert orders == sorted(ids, reverse=True) and late[0] not in orders  # newer than the first page: not in this walk
    fills = walk("/api/v1/fills/", m["buyer_user"])
    tape = walk("/api/v1/trades/", m["buyer_user"])
    assert len(fills) == len(tape) == 4 and fills == tape == sorted(tape, reverse=True)


def test_each_buy_has_its_own_hold_and_each_sell_its_listing(api, market_setup):
    """A buy holds funds (no listing), a sell lots on a listing (no hold); the database keeps one order per hold."""
    m = market_setup
    inst = m["instrument"]
    ids = [place(api, m["buyer_user"], inst, price="14.90", client_order_id=f"b{i}").json()["id"] for i in range(2)]
    ids += [place(api, m["seller_user"], inst, side="sell", price="15.10", client_order_id=f"s{i}").json()["id"] for i in range(2)]
    b1, b2, s1, s2 = (Order.objects.get(pk=pk) for pk in ids)
    assert None not in (b1.hold_id, b2.hold_id) and b1.hold_id != b2.hold_id and (b1.listing_id, b2.listing_id) == (None, None)
    assert (s1.hold_id, s2.hold_id) == (None, None) and s1.listing_id == s2.listing_id == m["listing"].pk
    with pytest.raises(IntegrityError), transaction.atomic():
        Order.objects.filter(pk=b2.pk).update(hold_id=b1.hold_id)
    assert list(Order.objects.filter(listing=m["listing"]).order_by("pk")) == [s1, s2]
    assert Order.objects.get(hold_id=b2.hold_id) == b2
