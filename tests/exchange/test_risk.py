"""Risk controls: per-account limits enforced by the matcher (open orders, open notional, one order's
notional, order rate) and operators' kill switches (refuse, cancel what rests, audit, release)."""

import pytest
from django.contrib.admin.models import LogEntry

from exchange import risk, transport, ws_orders
from exchange.models import KillSwitch, Order, OrderEvent, RiskLimit
from ledger.selectors import balances_get
from ledger.verify import ledger_verify
from marketplace.models import PlatformRole
from tests.factories import UserFactory, member

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _fresh_rates():
    """Order entry caches rate overrides per process for two seconds; ids are reused from test to test."""
    risk.caches_clear()
    yield
    risk.caches_clear()


def place(api, user, instrument_, **fields):
    api.force_authenticate(user)
    body = {"instrument": instrument_.pk, "side": "buy", "price": "14.00", "quantity": 1, "client_order_id": "c1"} | fields
    return api.post("/api/v1/orders/", body, format="json")


@pytest.fixture
def operator(db):
    return UserFactory(username="ops", platform_role=PlatformRole.OPERATOR)


def limits(org, **values) -> None:
    RiskLimit.objects.update_or_create(organisation=org, defaults=values)
    transport.broadcast({"op": "risk_sync"})


def pull(api, operator, **body):
    api.force_authenticate(operator)
    return api.post("/api/v1/risk/kill-switches/", {"reason": "runaway algo"} | body, format="json")


# --- limits -----------------------------------------------------------------------------------------------


def test_open_order_limit_refuses_the_order_past_it_and_stores_nothing(api, market_setup):
    m = market_setup
    limits(m["buyer"], max_open_orders=2)
    for i in range(2):
        assert place(api, m["buyer_user"], m["instrument"], client_order_id=f"o{i}").status_code == 201
    refused = place(api, m["buyer_user"], m["instrument"], client_order_id="o2")
    assert refused.status_code == 400
    assert refused.json() == {"quantity": ["Open order limit of 2 would be exceeded (2 open)."]}
    assert Order.objects.filter(organisation=m["buyer"]).count() == 2
    # Orders that never rest (IOC) do not count against it, and the supplier has its own count.
    assert place(api, m["buyer_user"], m["instrument"], client_order_id="ioc", time_in_force="IOC").status_code == 201
    assert place(api, m["seller_user"], m["instrument"], side="sell", price="16.00", client_order_id="s").status_code == 201
    # A cancel frees a place at once (the matcher's count follows what rests).
    first = Order.objects.get(client_order_id="o0")
    api.force_authenticate(m["buyer_user"])
    assert api.delete(f"/api/v1/orders/{first.pk}/").status_code == 200
    assert place(api, m["buyer_user"], m["instrument"], client_order_id="o3").status_code == 201


def test_open_notional_limit_names_what_is_open_and_what_this_order_adds(api, market_setup):
    m = market_setup
    limits(m["buyer"], max_open_notional_fen=10_000)  # 100.00 CNY
    assert place(api, m["buyer_user"], m["instrument"], price="15.00", quantity=5, client_order_id="a").status_code == 201  # 75.00
    refused = place(api, m["buyer_user"], m["instrument"], price="15.00", quantity=2, client_order_id="b")  # 30.00
    assert refused.status_code == 400
    assert refused.json() == {"quantity": ["Open notional limit of 100.00 CNY would be exceeded (open 75.00 + this 30.00)."]}
    assert place(api, m["buyer_user"], m["instrument"], price="13.50", quantity=1, client_order_id="c").status_code == 201  # 13.50 fits
    # A fill takes notional off the book: the seller takes 5 lots at 15.00, and 30.00 fits again.
    assert place(api, m["seller_user"], m["instrument"], side="sell", price="15.00", quantity=5, client_order_id="s").json()["status"] == "filled"
    assert place(api, m["buyer_user"], m["instrument"], price="15.00", quantity=2, client_order_id="b2").status_code == 201


def test_single_order_notional_limit_catches_fat_fingers_including_market_orders(api, market_setup):
    m = market_setup
    limits(m["buyer"], max_order_notional_fen=5_000)  # 50.00 CNY
    refused = place(api, m["buyer_user"], m["instrument"], price="15.00", quantity=4, client_order_id="big")
    assert refused.status_code == 400
    assert refused.json() == {"quantity": ["Order notional limit of 50.00 CNY exceeded (this order 60.00 CNY)."]}
    # A market order is valued at the band's edge (16.50 with a 10% band): 3 lots are 49.50, 4 are 66.00.
    market = {"type": "market", "price": None, "time_in_force": "IOC"}
    assert place(api, m["buyer_user"], m["instrument"], quantity=3, client_order_id="m3", **market).status_code == 201
    assert place(api, m["buyer_user"], m["instrument"], quantity=4, client_order_id="m4", **market).status_code == 400
    # Amending past it is refused before the hold grows.
    order = place(api, m["buyer_user"], m["instrument"], price="15.00", quantity=3, client_order_id="ok").json()
    held = balances_get(organisation=m["buyer"])["held"]
    amend = api.patch(f"/api/v1/orders/{order['id']}/", {"quantity": 4}, format="json")
    assert amend.status_code == 400 and "Order notional limit of 50.00 CNY" in amend.json()["quantity"][0]
    assert balances_get(organisation=m["buyer"])["held"] == held


def test_matcher_rebuilds_open_counts_from_the_database_after_a_restart(api, market_setup):
    m = market_setup
    limits(m["buyer"], max_open_orders=2)
    for i in range(2):
        place(api, m["buyer_user"], m["instrument"], client_order_id=f"o{i}")
    transport.InlineClient.reset()  # a new matcher: its memory is empty
    assert place(api, m["buyer_user"], m["instrument"], client_order_id="o2").status_code == 400


def test_a_limit_breach_over_the_websocket_is_an_error_frame(market_setup):
    m = market_setup
    limits(m["buyer"], max_open_orders=1)
    ws_orders.order_place_command(m["buyer_user"], {"type": "place", "instrument": m["instrument"].pk, "side": "buy", "price": "14.00", "quantity": 1, "client_order_id": "w1"})
    with pytest.raises(Exception) as caught:
        ws_orders.order_place_command(m["buyer_user"], {"type": "place", "instrument": m["instrument"].pk, "side": "buy", "price": "14.00", "quantity": 1, "client_order_id": "w2"})
    frame = ws_orders.error_frame("r2", caught.value)
    assert (frame["type"], frame["status"], frame["code"]) == ("error", 400, "invalid")
    assert frame["fields"] == {"quantity": ["Open order limit of 1 would be exceeded (1 open)."]}


def test_order_rate_is_per_account_and_configurable(api, market_setup, settings, rate_window):
    from django.core.cache import cache

    cache.clear()
    m = market_setup
    second_trader = member(m["buyer"], role="trader", username="my-trader-2")
    RiskLimit.objects.create(organisation=m["buyer"], order_rate="3/min")
    codes = [place(api, user, m["instrument"], client_order_id=f"r{i}").status_code
             for i, user in enumerate([m["buyer_user"], second_trader, m["buyer_user"], second_trader])]
    assert codes == [201, 201, 201, 429]  # the account's budget, shared by its traders
    assert int(place(api, m["buyer_user"], m["instrument"], client_order_id="r9")["Retry-After"]) == 50
    # Another account keeps the default rate.
    assert place(api, m["seller_user"], m["instrument"], side="sell", price="16.00", client_order_id="s1").status_code == 201


def test_operators_set_limits_through_the_api_and_it_is_audited(api, market_setup, operator):
    m = market_setup
    url = f"/api/v1/risk/limits/{m['buyer'].pk}/"
    api.force_authenticate(m["buyer_user"])
    assert api.patch(url, {"max_open_orders": 1}, format="json").status_code == 403
    api.force_authenticate(operator)
    assert api.patch(url, {"order_rate": "lots"}, format="json").json() == {"order_rate": ['A count and a period, e.g. "50/s", "600/min", "10000/hour".']}
    assert api.patch(url, {"max_open_notional": "-1"}, format="json").status_code == 400
    body = api.patch(url, {"max_open_notional": "500000.00", "max_open_orders": 1}, format="json").json()
    assert body["overrides"]["max_open_notional"] == "500000.00" and body["effective"]["max_open_orders"] == 1
    assert body["effective"]["max_order_notional"] == "5000000.00"  # the venue default
    assert LogEntry.objects.filter(object_id=str(m["buyer"].pk), change_message__contains="max_open_orders").exists()
    # The matcher applies it at once.
    assert place(api, m["buyer_user"], m["instrument"], client_order_id="a").status_code == 201
    assert place(api, m["buyer_user"], m["instrument"], client_order_id="b").status_code == 400
    api.force_authenticate(operator)
    listed = api.get("/api/v1/risk/limits/").json()
    assert [o["organisation"] for o in listed["organisations"]] == [m["buyer"].pk]
    assert api.delete(url).json()["overrides"]["max_open_orders"] is None
    assert place(api, m["buyer_user"], m["instrument"], client_order_id="c").status_code == 201


# --- kill switches ------------------------------------------------------------------------------------------


def test_account_kill_switch_cancels_resting_orders_refuses_new_ones_and_releases(api, market_setup, operator, monkeypatch):
    from exchange import matcher

    m = market_setup
    inst = m["instrument"]
    buys = [place(api, m["buyer_user"], inst, client_order_id=f"b{i}", quantity=2).json()["id"] for i in range(2)]
    ask = place(api, m["seller_user"], inst, side="sell", price="16.00", client_order_id="s").json()["id"]
    assert balances_get(organisation=m["buyer"])["held"] > 0

    published = []
    real_publish = matcher.publish
    monkeypatch.setattr(matcher, "publish", lambda items: (published.extend(items), real_publish(items)))
    pulled = pull(api, operator, scope="account", organisation=m["buyer"].pk)
    assert pulled.status_code == 201, pulled.json()
    # The buyer's stream hears of each cancel; the market stream gets the book's new levels.
    orders = [p.payload for p in published if p.group == f"org.{m['buyer'].pk}"]
    assert sorted((o["id"], o["status"], o["reason"]) for o in orders) == [(pk, "cancelled", "kill_switch") for pk in buys]
    assert any(p.group == f"market.{inst.pk}" and p.payload["type"] == "book" and p.payload["updates"] for p in published)
    monkeypatch.setattr(matcher, "publish", real_publish)
    body = pulled.json()
    assert (body["active"], body["orders_cancelled"], body["matchers_confirmed"]) == (True, 2, True)
    for pk in buys:
        order = Order.objects.get(pk=pk)
        assert (order.status, order.reason, order.open_quantity) == ("cancelled", "kill_switch", 0)
        event = OrderEvent.objects.get(order=order, kind="cancelled")
        assert (event.reason, event.actor_id) == ("kill_switch", operator.pk)
    assert balances_get(organisation=m["buyer"])["held"] == 0  # holds released through the cancel path
    assert Order.objects.get(pk=ask).status == "open"  # another account: untouched
    book = api.get(f"/api/v1/instruments/{inst.pk}/book/").json()
    assert book["bids"] == [] and book["asks"] == [["16.00", 1]]

    refused = place(api, m["buyer_user"], inst, client_order_id="after")
    assert refused.status_code == 403
    assert refused.json() == {"non_field_errors": ["Trading for this account is stopped by an operator's kill switch (runaway algo). Cancels are still accepted."]}
    assert not Order.objects.filter(client_order_id="after").exists()
    assert place(api, m["seller_user"], inst, side="sell", price="16.50", client_order_id="s2").status_code == 201

    # Pulling it again answers with the active one; the list shows it; release re-allows trading.
    api.force_authenticate(operator)
    again = pull(api, operator, scope="account", organisation=m["buyer"].pk)
    assert again.status_code == 200 and again.json()["id"] == body["id"]
    assert [s["id"] for s in api.get("/api/v1/risk/kill-switches/").json()] == [body["id"]]
    released = api.delete(f"/api/v1/risk/kill-switches/{body['id']}/", {"reason": "fixed"}, format="json")
    assert released.status_code == 200 and released.json()["active"] is False
    assert api.get("/api/v1/risk/kill-switches/").json() == []
    assert place(api, m["buyer_user"], inst, client_order_id="again").status_code == 201
    assert all(Order.objects.get(pk=pk).status == "cancelled" for pk in buys)  # not restored
    assert ledger_verify().ok

    # Both the pull and the release are in the audit chain.
    from oversight.audit import audit_ingest
    from oversight.models import AuditRecord

    audit_ingest()
    payloads = list(AuditRecord.objects.filter(kind="admin_action").values_list("payload", flat=True))
    assert any('\\"kill_switch\\": \\"pulled\\"' in p and "runaway algo" in p for p in payloads), payloads
    assert any('\\"kill_switch\\": \\"released\\"' in p for p in payloads), payloads


def test_a_retried_pull_with_its_idempotency_key_answers_with_that_switch_even_after_release(api, market_setup, operator):
    m = market_setup
    first = pull(api, operator, scope="account", organisation=m["buyer"].pk, idempotency_key="pull-1")
    assert first.status_code == 201 and first.json()["idempotency_key"] == "pull-1"
    released = api.delete(f"/api/v1/risk/kill-switches/{first.json()['id']}/", {"reason": "fixed"}, format="json")
    assert released.status_code == 200
    # The retry of the first POST (its answer was lost) does not stop the account again.
    retry = pull(api, operator, scope="account", organisation=m["buyer"].pk, idempotency_key="pull-1")
    assert retry.status_code == 200 and (retry.json()["id"], retry.json()["active"]) == (first.json()["id"], False)
    assert KillSwitch.objects.count() == 1
    assert place(api, m["buyer_user"], m["instrument"], client_order_id="still-trading").status_code == 201
    # The same key for another target is a client error; a new key pulls a new switch.
    other = pull(api, operator, scope="instrument", instrument=m["instrument"].pk, idempotency_key="pull-1")
    assert other.status_code == 409 and "idempotency_key" in other.json()
    again = pull(api, operator, scope="account", organisation=m["buyer"].pk, idempotency_key="pull-2")
    assert again.status_code == 201 and again.json()["id"] != first.json()["id"]
    assert KillSwitch.objects.filter(released_at__isnull=True).count() == 1


def test_instrument_and_venue_switches_cancel_every_account_and_block_amends_not_cancels(api, market_setup, operator):
    m = market_setup
    inst = m["instrument"]
    bid = place(api, m["buyer_user"], inst, client_order_id="b").json()["id"]
    ask = place(api, m["seller_user"], inst, side="sell", price="16.00", client_order_id="s").json()["id"]
    # A switch the matcher has not heard of yet (its command was lost): the web refuses amends at once,
    # cancels still pass, and housekeeping (once a second) applies it.
    switch = KillSwitch.objects.create(scope="instrument", instrument=inst, reason="bad reference price", pulled_by=operator)
    api.force_authenticate(m["buyer_user"])
    amend = api.patch(f"/api/v1/orders/{bid}/", {"price": "14.50"}, format="json")
    assert amend.status_code == 403 and f"Trading in {inst.code} is stopped" in amend.json()["non_field_errors"][0]
    assert api.delete(f"/api/v1/orders/{bid}/").json()["status"] == "cancelled"
    transport.client().loop_for_tests().housekeeping(force=True)
    assert Order.objects.get(pk=ask).reason == "kill_switch"
    assert place(api, m["seller_user"], inst, side="sell", price="16.00", client_order_id="s2").status_code == 403
    api.force_authenticate(operator)
    api.delete(f"/api/v1/risk/kill-switches/{switch.pk}/", format="json")

    place(api, m["buyer_user"], inst, client_order_id="b2")
    place(api, m["seller_user"], inst, side="sell", price="16.00", client_order_id="s3")
    body = pull(api, operator, scope="venue").json()
    assert body["orders_cancelled"] == 2
    assert set(Order.objects.filter(status="open").values_list("pk", flat=True)) == set()
    assert place(api, m["buyer_user"], inst, client_order_id="b3").json()["non_field_errors"][0].startswith("Trading on the venue is stopped")


def test_a_restarted_matcher_sweeps_a_switch_pulled_while_it_was_down_even_if_orders_come_first(api, market_setup, operator):
    m = market_setup
    resting = place(api, m["buyer_user"], m["instrument"], client_order_id="r").json()["id"]
    KillSwitch.objects.create(scope="account", organisation=m["buyer"], reason="while down", pulled_by=operator)
    transport.InlineClient.reset()  # the matcher restarts; its first batch is an order, not housekeeping
    assert place(api, m["buyer_user"], m["instrument"], client_order_id="n").status_code == 403
    assert Order.objects.get(pk=resting).status == "open"
    transport.client().loop_for_tests().housekeeping(force=True)
    assert Order.objects.get(pk=resting).reason == "kill_switch"
    assert balances_get(organisation=m["buyer"])["held"] == 0


def test_only_operators_pull_switches_and_bad_requests_name_the_field(api, market_setup, operator):
    m = market_setup
    api.force_authenticate(m["buyer_user"])
    assert api.post("/api/v1/risk/kill-switches/", {"scope": "venue", "reason": "x"}, format="json").status_code == 403
    regulator = UserFactory(username="reg", platform_role=PlatformRole.REGULATOR)
    api.force_authenticate(regulator)
    assert api.get("/api/v1/risk/kill-switches/").status_code == 200
    assert api.post("/api/v1/risk/kill-switches/", {"scope": "venue", "reason": "x"}, format="json").status_code == 403
    assert pull(api, operator, scope="account").json() == {"organisation": ["Required for scope account."]}
    assert pull(api, operator, scope="venue", instrument=m["instrument"].pk).json() == {"instrument": ["Not allowed for scope venue."]}
    assert pull(api, operator, scope="venue", reason="").status_code == 400
    assert not KillSwitch.objects.exists()


def test_the_admin_pulls_and_releases_through_the_same_path(client, market_setup, operator):
    m = market_setup
    operator.is_staff = True
    operator.is_superuser = True
    operator.save()
    client.force_login(operator)
    from django.test import Client

    api_order = Client()
    api_order.force_login(m["buyer_user"])
    api_order.post("/api/v1/orders/", {"instrument": m["instrument"].pk, "side": "buy", "price": "14.00", "quantity": 1, "client_order_id": "a"},
                   content_type="application/json")
    response = client.post("/admin/exchange/killswitch/add/", {"scope": "account", "organisation": m["buyer"].pk, "reason": "desk call"})
    assert response.status_code == 302, response.content[:2000]
    switch = KillSwitch.objects.get()
    assert (switch.pulled_by, switch.reason) == (operator, "desk call")
    assert Order.objects.get(client_order_id="a").reason == "kill_switch"
    client.post("/admin/exchange/killswitch/", {"action": "release", "_selected_action": [switch.pk]})
    switch.refresh_from_db()
    assert switch.released_by == operator


# --- production shape: runmatcher behind Redis ----------------------------------------------------------------


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.django_db(transaction=True)
def test_runmatcher_holds_the_limit_under_concurrent_orders_and_a_switch_cancels_within_a_second(api, market_setup, settings, operator):
    import os
    import threading
    import time

    import redis
    from django.db import connections

    from exchange import services
    from exchange.models import OrderStatus
    from tests.exchange.conftest import start_matcher

    redis.Redis.from_url(os.environ["REDIS_URL"]).flushdb()
    m = market_setup
    inst = m["instrument"]
    settings.MATCHER_TRANSPORT = "redis"
    settings.MATCHER_SHARDS = 1
    settings.MATCHER_REPLY_TIMEOUT = 10
    transport._client = None
    proc = start_matcher(0, 1)
    try:
        RiskLimit.objects.create(organisation=m["buyer"], max_open_orders=3)
        assert transport.broadcast({"op": "risk_sync"}) is not None
        barrier = threading.Barrier(8)
        outcomes, errors = [], []

        def attempt(i: int) -> None:
            req = services.OrderRequest(instrument=inst, side="buy", quantity=1, client_order_id=f"race{i}", price=inst.reference_price - inst.tick_size * i)
            barrier.wait()
            try:
                outcomes.append(services.order_place(user=m["buyer_user"], organisation=m["buyer"], request=req).state["status"])
            except services.OrderError as exc:
                outcomes.append(str(exc))
            except Exception as exc:  # pragma: no cover - reported below
                errors.append(repr(exc))
            finally:
                connections.close_all()

        threads = [threading.Thread(target=attempt, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert sorted(outcomes) == ["Open order limit of 3 would be exceeded (3 open)."] * 5 + ["open"] * 3
        resting = set(Order.objects.filter(organisation=m["buyer"], status=OrderStatus.OPEN).values_list("pk", flat=True))
        assert len(resting) == 3 and Order.objects.filter(organisation=m["buyer"]).count() == 3

        # Pulled through the API: the answer comes after every shard cancelled what rests in scope. Timed from
        # the switch's row to the cancellations' events (the test client's first request imports the URLs).
        body = pull(api, operator, scope="account", organisation=m["buyer"].pk).json()
        assert (body["matchers_confirmed"], body["orders_cancelled"]) == (True, 3)
        assert not Order.objects.filter(pk__in=resting, status=OrderStatus.OPEN).exists()
        pulled_at = KillSwitch.objects.get(pk=body["id"]).pulled_at
        took = max(OrderEvent.objects.filter(order_id__in=resting, kind="cancelled").values_list("created_at", flat=True)) - pulled_at
        assert took.total_seconds() < 1.0, f"the switch took {took}"
        assert balances_get(organisation=m["buyer"])["held"] == 0
        api.force_authenticate(operator)
        api.delete(f"/api/v1/risk/kill-switches/{body['id']}/", format="json")

        # A switch written without telling the matcher (a lost command): its once-a-second reload applies it.
        again = place(api, m["buyer_user"], inst, client_order_id="after-release")
        assert again.status_code == 201, again.json()
        KillSwitch.objects.create(scope="instrument", instrument=inst, reason="lost command", pulled_by=operator)
        started = time.monotonic()
        while Order.objects.filter(pk=again.json()["id"], status=OrderStatus.OPEN).exists():
            assert time.monotonic() - started < 2.0, "housekeeping did not apply the switch"
            time.sleep(0.05)
        assert Order.objects.get(pk=again.json()["id"]).reason == "kill_switch"
        assert ledger_verify().ok
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        transport._client = None


def test_with_two_shards_each_enforces_half_of_an_accounts_limits():
    from exchange.risk import Limits, RiskBook

    book = RiskBook(owns=lambda iid: True, shards=2)
    book.synced = book.ready = True
    book.overrides[7] = Limits(max_open_orders=3, max_open_notional_fen=100_000, max_order_notional_fen=None, order_rate=None)

    class Inst:
        code = "X"

    check = book.admission()
    order = {"organisation": 7, "instrument": 1, "price_fen_per_lot": 1_500, "quantity": 10, "type": "limit", "time_in_force": "GTC"}
    assert check(order, Inst, 0) is None  # 1 order, 150.00 CNY
    refused = check(order, Inst, 0)
    assert (refused.status, refused.field) == (400, "quantity")
    assert refused.message == "Open order limit of 3 would be exceeded (1 open) (split across 2 matcher shards: 1 here)."
    book.overrides[7] = Limits(max_open_orders=None, max_open_notional_fen=100_000, max_order_notional_fen=None, order_rate=None)
    refused = book.admission()({**order, "quantity": 40}, Inst, 0)  # 600.00 CNY > 500.00 here
    assert refused.message == ("Open notional limit of 1,000.00 CNY would be exceeded (open 0.00 + this 600.00)"
                               " (split across 2 matcher shards: 500.00 here).")
