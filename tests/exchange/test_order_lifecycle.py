"""Gate closure, GTD expiry, market orders and rate limits."""

import datetime as dt
from decimal import Decimal

import pytest
from django.utils import timezone

from exchange import transport
from exchange.models import Order, OrderEvent
from ledger.selectors import balances_get
from ledger.verify import ledger_verify
from marketplace import services as market

pytestmark = pytest.mark.django_db


def place(api, user, instrument_, **fields):
    api.force_authenticate(user)
    body = {"instrument": instrument_.pk, "side": "buy", "price": "15.00", "quantity": 1, "client_order_id": "c1"} | fields
    return api.post("/api/v1/orders/", body, format="json")


def test_gate_closure_expires_resting_orders_and_releases_holds_and_capacity(api, market_setup):
    m = market_setup
    inst = m["instrument"]
    buy = place(api, m["buyer_user"], inst, price="14.00", quantity=5).json()
    sell = place(api, m["seller_user"], inst, side="sell", price="16.00", quantity=7, client_order_id="s").json()
    assert balances_get(organisation=m["buyer"])["held"] > 0
    # The gate closes: the schedule marks the instrument closed and the matcher expires what rests.
    inst.gate_closure = timezone.now() - dt.timedelta(seconds=1)
    inst.save(update_fields=["gate_closure"])
    market.instruments_roll()
    replies = transport.send([{"op": "close", "instrument": inst.pk}])
    assert replies[0]["expired"] == 2
    for order_id in (buy["id"], sell["id"]):
        order = Order.objects.get(pk=order_id)
        assert (order.status, order.reason, order.open_quantity) == ("expired", "gate_closure", 0)
        assert OrderEvent.objects.filter(order=order, kind="expired").exists()
    assert balances_get(organisation=m["buyer"]) == {"available": 1_000_000, "held": 0, "escrow": 0, "receivable": 0}
    cap = Order.objects.get(pk=sell["id"]).capacity_hold
    assert (cap.lots, cap.sold_lots, cap.released_lots) == (7, 0, 7)
    assert place(api, m["buyer_user"], inst, client_order_id="late").status_code == 400
    assert ledger_verify().ok


def test_gate_closure_after_a_matcher_restart_expires_orders_from_the_database(api, market_setup):
    m = market_setup
    inst = m["instrument"]
    order = place(api, m["buyer_user"], inst, price="14.00", quantity=2).json()
    transport.InlineClient.reset()  # a new matcher: the book is not in memory
    inst.gate_closure = timezone.now() - dt.timedelta(seconds=1)
    inst.save(update_fields=["gate_closure"])
    market.instruments_roll()  # the schedule marks it closed first
    transport.client().loop_for_tests().housekeeping(force=True)
    stored = Order.objects.get(pk=order["id"])
    assert (stored.status, stored.reason) == ("expired", "gate_closure")
    assert balances_get(organisation=m["buyer"])["held"] == 0


def test_an_order_reaching_the_matcher_after_gate_closure_is_refused_and_not_stored(api, market_setup, settings):
    m = market_setup
    inst = m["instrument"]
    from exchange import services

    req = services.OrderRequest(instrument=inst, side="buy", quantity=1, client_order_id="late", price=inst.reference_price)
    command = services.order_command(user=m["buyer_user"], organisation=m["buyer"], request=req)  # valid when sent
    inst.gate_closure = timezone.now() - dt.timedelta(seconds=1)  # closes before the matcher sees the order
    inst.save(update_fields=["gate_closure"])
    [reply] = transport.send([command])
    assert reply["error"]["status"] == 400 and reply["error"]["field"] == "instrument"
    assert "not open for trading" in reply["error"]["message"]
    assert not Order.objects.filter(client_order_id="late").exists()
    assert balances_get(organisation=m["buyer"])["held"] == 0


def test_gtd_orders_expire_when_their_time_comes(api, market_setup):
    m = market_setup
    inst = m["instrument"]
    expires = timezone.now() + dt.timedelta(seconds=2)
    order = place(api, m["buyer_user"], inst, price="14.00", time_in_force="GTD", expires_at=expires.isoformat()).json()
    assert order["status"] == "open"
    transport.send([{"op": "expire"}])
    assert Order.objects.get(pk=order["id"]).status == "open"
    from unittest import mock

    with mock.patch("exchange.matcher.timezone.now", return_value=expires + dt.timedelta(seconds=1)):
        transport.send([{"op": "expire"}])
    stored = Order.objects.get(pk=order["id"])
    assert (stored.status, stored.reason) == ("expired", "expired")
    assert balances_get(organisation=m["buyer"])["held"] == 0


def test_market_buy_takes_the_book_within_the_band_and_never_rests(api, market_setup):
    m = market_setup
    inst = m["instrument"]
    place(api, m["seller_user"], inst, side="sell", price="15.00", quantity=2, client_order_id="s1")
    place(api, m["seller_user"], inst, side="sell", price="15.50", quantity=2, client_order_id="s2")
    response = place(api, m["buyer_user"], inst, type="market", price=None, quantity=10, time_in_force="IOC", client_order_id="mkt")
    body = response.json()
    assert response.status_code == 201, body
    # Market protection is 5% past the best ask (15.75): both levels fill, the rest is cancelled.
    assert [(f["price"], f["quantity"]) for f in body["fills"]] == [("15.00", 2), ("15.50", 2)]
    assert (body["status"], body["filled_quantity"], body["reason"]) == ("cancelled", 4, "ioc")
    balances = balances_get(organisation=m["buyer"])
    assert balances["held"] == 0 and balances["escrow"] == 6_100
    assert ledger_verify().ok


def test_order_rate_limit_answers_429_with_retry_after(api, market_setup, settings, rate_window):
    m = market_setup
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "DEFAULT_THROTTLE_RATES": {"orders": "2/min"}}
    from django.core.cache import cache

    cache.clear()
    codes = [place(api, m["buyer_user"], m["instrument"], price="14.00", client_order_id=f"r{i}").status_code for i in range(3)]
    assert codes == [201, 201, 429]
    response = place(api, m["buyer_user"], m["instrument"], price="14.00", client_order_id="r9")
    assert int(response["Retry-After"]) == 50  # the seconds left in the window
    assert Order.objects.count() == 2


def test_an_operator_halt_reaches_the_book(api, market_setup, django_capture_on_commit_callbacks):
    from exchange import engine as eng
    from marketplace.models import PlatformRole
    from tests.factories import UserFactory

    m = market_setup
    inst = m["instrument"]
    order = place(api, m["buyer_user"], inst, price="14.00", quantity=3).json()
    api.force_authenticate(UserFactory(platform_role=PlatformRole.OPERATOR))
    with django_capture_on_commit_callbacks(execute=True):
        assert api.post(f"/api/v1/instruments/{inst.pk}/halt/").json()["status"] == "halted"
    book = transport.client().loop_for_tests().matcher.engine.books[inst.pk]
    assert book.status == eng.Status.HALTED
    # Cancels still work while halted.
    api.force_authenticate(m["buyer_user"])
    assert api.delete(f"/api/v1/orders/{order['id']}/").json()["status"] == "cancelled"
    api.force_authenticate(UserFactory(platform_role=PlatformRole.OPERATOR, username="op2"))
    with django_capture_on_commit_callbacks(execute=True):
        api.post(f"/api/v1/instruments/{inst.pk}/resume/")
    assert book.status == eng.Status.CONTINUOUS


def test_a_batch_sends_one_book_message_per_instrument_with_every_update_and_the_final_checksum(market_setup, monkeypatch):
    """Several commands on one instrument in one matcher batch: subscribers get one book message covering all
    their sequence numbers in order, whose checksum is the book's as the batch leaves it (checked after
    applying every update), and each trade names the book seq that reflects it."""
    import json

    from exchange import matcher as matcher_module
    from exchange import selectors, services
    from exchange.matcher import Matcher
    from exchange.publish import envelopes
    from exchange.transport import MatcherLoop

    m = market_setup
    inst = m["instrument"]

    def command(cid, side, price, quantity):
        user, org = (m["buyer_user"], m["buyer"]) if side == "buy" else (m["seller_user"], m["supplier"])
        return services.order_command(user=user, organisation=org, request=services.OrderRequest(
            instrument=inst, side=side, quantity=quantity, client_order_id=cid, price=Decimal(price)))

    published = []
    real = matcher_module.publish
    monkeypatch.setattr(matcher_module, "publish", lambda items: (published.extend(items), real(items)))
    loop = MatcherLoop(Matcher())
    replies = loop.run([command("s1", "sell", "15.10", 3), command("s2", "sell", "15.20", 2), command("b2", "buy", "15.10", 2),
                        command("b1", "buy", "14.90", 4)])
    assert [r["state"]["status"] for r in replies] == ["open", "open", "filled", "open"]
    messages = [json.loads(message["text"]) for group, message in envelopes(published) if group == f"market.{inst.pk}"]
    books = [msg for msg in messages if msg["type"] == "book"]
    assert len(books) == 1, books
    [book] = books
    assert [u["seq"] for u in book["updates"]] == list(range(book["first"], book["seq"] + 1)) and book["first"] == 1
    levels = {}
    for u in book["updates"]:  # applied as a client does
        levels[(u["side"], u["price_fen_per_lot"])] = u["quantity"]
    bids = sorted(((p, q) for (s, p), q in levels.items() if s == "buy" and q), reverse=True)
    asks = sorted((p, q) for (s, p), q in levels.items() if s == "sell" and q)
    assert (bids, asks) == ([(1490, 4)], [(1510, 1), (1520, 2)])
    assert book["checksum"] == selectors.checksum(bids, asks)
    [trade] = [msg for msg in messages if msg["type"] == "trade"]
    # The trade is reflected in the ask left at 15.10 (1 lot), not in the bid rested after it.
    assert trade["book_seq"] == [u["seq"] for u in book["updates"] if u["price_fen_per_lot"] == 1510][-1] < book["seq"]
    assert trade["quantity"] == 2
    assert messages.index(book) < messages.index(trade)


@pytest.mark.redis
@pytest.mark.django_db(transaction=True)  # the transport sends only outside a transaction
def test_the_rate_counted_with_the_push_over_redis_is_the_one_websockets_count(api, market_setup, settings, rate_window, monkeypatch):
    """On Redis the REST order is counted in the round trip that queues it (transport.Gate), not by a count of
    its own; the budget is the account's, shared with websocket order entry (OrderRateThrottle.allow_each), and
    a refused order is never queued for the matcher."""
    import redis
    from django.core.cache import cache

    from exchange.api import views
    from exchange.api.views import OrderRateThrottle

    counted_apart = []
    count = views._count
    monkeypatch.setattr(views, "_count", lambda *a: counted_apart.append(a) or count(*a))
    m = market_setup
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "DEFAULT_THROTTLE_RATES": {"orders": "3/min"}}
    settings.MATCHER_TRANSPORT, settings.MATCHER_SHARDS, settings.MATCHER_REPLY_TIMEOUT = "redis", 1, 0.2
    transport._client = None
    cache.clear()
    r = redis.Redis.from_url(settings.REDIS_URL)
    r.delete(transport.queue_key(0))
    codes = [place(api, m["buyer_user"], m["instrument"], price="14.00", client_order_id=f"r{i}").status_code for i in range(2)]
    assert codes == [202, 202]  # queued; no matcher runs here to answer
    assert counted_apart == []  # each counted by the script that queued it
    request = type("R", (), {"user": m["buyer_user"], "data": {}})()
    assert OrderRateThrottle().allow_many(m["buyer_user"], [request]) == [None]  # the third of the minute, by websocket
    response = place(api, m["buyer_user"], m["instrument"], price="14.00", client_order_id="r3")
    assert (response.status_code, int(response["Retry-After"])) == (429, 50)
    assert r.llen(transport.queue_key(0)) == 2  # the two accepted, not the refused one
    invalid = place(api, m["buyer_user"], m["instrument"], price="14.003", client_order_id="r4")
    assert invalid.status_code == 429  # past the rate, a refusal is 429 too, as before validation
    assert len(counted_apart) == 2  # the websocket's count, and the invalid order's: it never reached the queue
    r.delete(transport.queue_key(0))
