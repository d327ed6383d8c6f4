"""/ws/user/: authentication (token, session, origin), the organisation's order events with a per-connection
seq, order entry with ack and error frames through the same services as REST, cancel-on-disconnect."""

import asyncio

import pytest
from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from django.test import Client
from rest_framework.authtoken.models import Token

from exchange.models import Order, Trade
from ledger.selectors import balances_get
from marketplace.models import Membership, PlatformRole
from tests.exchange.live.helpers import TIMEOUT, open_socket, place, release_worker_connections
from tests.factories import OrganisationFactory, UserFactory, member

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _worker_connections():
    yield
    release_worker_connections()


def token(user) -> str:
    return Token.objects.create(user=user).key


@pytest.fixture
def asgi_application(settings):
    """The real config.asgi application (without its embedded scheduler thread)."""
    settings.EMBEDDED_SCHEDULER = False
    import config.asgi

    return config.asgi.application


async def user_socket(key=None, **kwargs):
    comm, connected, code = await open_socket("/ws/user/", token=key, **kwargs)
    assert connected, code
    welcome = await comm.receive_json_from(TIMEOUT)
    assert welcome["type"] == "welcome", welcome
    return comm, welcome


def test_without_a_user_the_stream_closes_with_4401(db):
    async def body():
        for kwargs in ({}, {"token": "not-a-token"}):
            comm, connected, _ = await open_socket("/ws/user/", **kwargs)
            assert connected
            assert await comm.receive_output(TIMEOUT) == {"type": "websocket.close", "code": 4401}

    async_to_sync(body)()


def test_each_organisation_sees_its_own_order_events_in_order_and_never_anothers(api, market_setup):
    m = market_setup
    inst = m["instrument"]
    rival = member(OrganisationFactory(kind="buyer", name="Rival"), role="trader")
    keys = {name: token(user) for name, user in (("buyer", m["buyer_user"]), ("seller", m["seller_user"]), ("rival", rival))}

    async def body():
        buyer, welcome = await user_socket(keys["buyer"])
        assert (welcome["user"], welcome["organisations"], welcome["seq"], welcome["cancel_on_disconnect"]) == (m["buyer_user"].pk, [m["buyer"].pk], 0, False)
        seller, _ = await user_socket(keys["seller"])
        outsider, _ = await user_socket(keys["rival"])

        sell = await database_sync_to_async(place)(api, m["seller_user"], inst, side="sell", price="15.00", quantity=5, client_order_id="s1")
        event = await seller.receive_json_from(TIMEOUT)
        assert (event["seq"], event["type"], event["id"], event["status"], event["open_quantity"], event["fills"]) == (1, "order", sell["id"], "open", 5, [])
        assert await buyer.receive_nothing(0.1)

        buy = await database_sync_to_async(place)(api, m["buyer_user"], inst, side="buy", price="15.10", quantity=3, client_order_id="b1")
        trade = await database_sync_to_async(Trade.objects.get)()
        order = await database_sync_to_async(Order.objects.get)(pk=buy["id"])
        assert await buyer.receive_json_from(TIMEOUT) == {
            "seq": 1, "type": "order", "id": buy["id"], "client_order_id": "b1", "instrument": inst.pk,
            "organisation": m["buyer"].pk, "side": "buy", "order_type": "limit", "price_fen_per_lot": 1510, "price": "15.10",
            "quantity": 3, "status": "filled", "filled_quantity": 3, "open_quantity": 0, "reason": "", "fee_fen": 5,
            "at": order.updated_at.isoformat(),
            "fills": [{"trade": trade.pk, "seq": 1, "price_fen_per_lot": 1500, "price": "15.00", "quantity": 3, "liquidity": "taker"}],
        }
        event = await seller.receive_json_from(TIMEOUT)
        assert (event["seq"], event["id"], event["status"], event["filled_quantity"], event["open_quantity"]) == (2, sell["id"], "open", 3, 2)
        assert [(f["trade"], f["liquidity"]) for f in event["fills"]] == [(trade.pk, "maker")]
        assert await outsider.receive_nothing(0.2)
        assert await buyer.receive_nothing(0.05) and await seller.receive_nothing(0.05)
        for comm in (buyer, seller, outsider):
            await comm.disconnect()

    async_to_sync(body)()


async def feed_members() -> set[str]:
    """The channel-layer members of the group that carries every organisation's order events."""
    from channels.layers import get_channel_layer
    from channels_redis.core import RedisChannelLayer

    from exchange.publish import USER_FEED

    layer = get_channel_layer()
    if isinstance(layer, RedisChannelLayer):
        key = layer._group_key(USER_FEED)
        return {m.decode() for m in await layer.connection(layer.consistent_hash(USER_FEED)).zrange(key, 0, -1)}
    return set(layer.groups.get(USER_FEED, {}))


def test_a_process_relays_every_socket_s_events_through_one_feed_member(api, market_setup):
    """However many user sockets a process holds, it is one member of the event feed (one channel-layer
    message per matcher batch for the process, not one per socket); each socket still gets only its own
    organisations' events, a trader of two organisations gets both, and the process leaves the feed when
    its last socket closes."""
    m = market_setup
    inst = m["instrument"]
    both = member(m["buyer"], role="trader")
    Membership.objects.create(user=both, organisation=m["supplier"], role="trader")
    keys = {"buyer": token(m["buyer_user"]), "seller": token(m["seller_user"]), "both": token(both)}

    async def body():
        # Members left by earlier tests' hubs (on Redis: a socket the server closed and the test never
        # disconnected keeps its hub joined until the membership expires) are not this test's.
        before = await feed_members()
        buyer, _ = await user_socket(keys["buyer"])
        seller, _ = await user_socket(keys["seller"])
        second_seller, _ = await user_socket(keys["seller"])
        both_socket, welcome = await user_socket(keys["both"])
        assert welcome["organisations"] == sorted([m["buyer"].pk, m["supplier"].pk])
        assert len(await feed_members() - before) == 1

        sell = await database_sync_to_async(place)(api, m["seller_user"], inst, side="sell", price="15.00", quantity=5, client_order_id="s1")
        for comm in (seller, second_seller, both_socket):
            event = await comm.receive_json_from(TIMEOUT)
            assert (event["seq"], event["id"], event["organisation"]) == (1, sell["id"], m["supplier"].pk)
        assert await buyer.receive_nothing(0.1)
        buy = await database_sync_to_async(place)(api, m["buyer_user"], inst, side="buy", price="15.00", quantity=2, client_order_id="b1")
        # The batch's events in the order the matcher published them (its orders by id).
        got = [await both_socket.receive_json_from(TIMEOUT) for _ in range(2)]
        assert [(e["seq"], e["id"], e["status"]) for e in got] == [(2, sell["id"], "open"), (3, buy["id"], "filled")]
        assert (await buyer.receive_json_from(TIMEOUT))["id"] == buy["id"]

        for comm in (buyer, seller, second_seller):
            await comm.disconnect()
        assert len(await feed_members() - before) == 1  # one socket left
        await both_socket.disconnect()
        assert await feed_members() - before == set()

    async_to_sync(body)()


def test_order_entry_over_the_socket_answers_with_ack_and_error_frames(api, market_setup):
    m = market_setup
    inst = m["instrument"]
    rival = member(OrganisationFactory(kind="buyer", name="Rival"), role="trader")
    keys = token(m["buyer_user"]), token(rival)

    async def body():
        comm, _ = await user_socket(keys[0])
        await comm.send_json_to({"type": "place", "request_id": "r1", "instrument": inst.pk, "side": "buy", "price": "14.00", "quantity": 2, "client_order_id": "ws-1"})
        ack = await comm.receive_json_from(TIMEOUT)
        order_id = ack["order"]["id"]
        api.force_authenticate(m["buyer_user"])
        rest = (await database_sync_to_async(api.get)(f"/api/v1/orders/{order_id}/")).json()
        assert ack == {"type": "ack", "request_id": "r1", "order": rest, "created": True, "confirmed": True}
        assert (rest["status"], rest["price"], rest["open_quantity"]) == ("open", "14.00", 2)
        event = await comm.receive_json_from(TIMEOUT)
        assert (event["seq"], event["id"], event["status"]) == (1, order_id, "open")
        assert (await database_sync_to_async(balances_get)(organisation=m["buyer"]))["held"] == 2_804

        # The same client_order_id again is a replay, not a second order.
        await comm.send_json_to({"type": "place", "request_id": "r1b", "instrument": inst.pk, "side": "buy", "price": "14.00", "quantity": 2, "client_order_id": "ws-1"})
        replay = await comm.receive_json_from(TIMEOUT)
        assert (replay["type"], replay["order"]["id"], replay["created"]) == ("ack", order_id, False)

        # Field errors, as the REST 400s.
        await comm.send_json_to({"type": "place", "request_id": "r2", "instrument": inst.pk, "side": "buy", "price": "15.005", "quantity": 1, "client_order_id": "ws-2"})
        assert await comm.receive_json_from(TIMEOUT) == {
            "type": "error", "request_id": "r2", "status": 400, "code": "invalid",
            "message": "price: The price must be a positive multiple of the tick, 0.01 CNY.",
            "fields": {"price": ["The price must be a positive multiple of the tick, 0.01 CNY."]},
        }
        await comm.send_json_to({"type": "place", "request_id": "r3", "instrument": inst.pk, "side": "buy", "price": "14.00", "quantity": 0, "client_order_id": "ws-3", "colour": "red"})
        error = await comm.receive_json_from(TIMEOUT)
        assert (error["status"], error["code"], error["fields"]) == (400, "invalid", {
            "colour": ["Unknown field."],
        })
        await comm.send_json_to({"type": "place", "request_id": "r3b", "instrument": inst.pk, "side": "buy", "price": "14.00", "quantity": 0, "client_order_id": "ws-3"})
        error = await comm.receive_json_from(TIMEOUT)
        assert error["fields"] == {"quantity": ["Ensure this value is greater than or equal to 1."]}
        await comm.send_json_to({"type": "place", "request_id": "r3c", "instrument": inst.pk, "side": "buy", "price": "14.01", "quantity": 2, "client_order_id": "ws-1"})
        error = await comm.receive_json_from(TIMEOUT)
        assert (error["status"], error["code"], list(error["fields"])) == (409, "conflict", ["client_order_id"])

        # Amend (order type travels as `order_type`, since `type` names the command).
        await comm.send_json_to({"type": "amend", "request_id": "r4", "order": order_id, "price": "14.50"})
        ack = await comm.receive_json_from(TIMEOUT)
        assert (ack["type"], ack["request_id"], ack["order"]["price"], ack["confirmed"]) == ("ack", "r4", "14.50", True)
        assert (await comm.receive_json_from(TIMEOUT))["seq"] == 2

        # Another organisation's order is not found; nothing changes.
        other, _ = await user_socket(keys[1])
        for command in ({"type": "cancel", "order": order_id}, {"type": "amend", "order": order_id, "quantity": 5}):
            await other.send_json_to({**command, "request_id": "x"})
            assert await other.receive_json_from(TIMEOUT) == {
                "type": "error", "request_id": "x", "status": 404, "code": "not_found", "message": "No such order among yours.", "fields": {},
            }
        assert (await database_sync_to_async(Order.objects.get)(pk=order_id)).status == "open"
        await other.disconnect()

        # Cancel by client order id, then cancel_all with nothing left.
        await comm.send_json_to({"type": "cancel", "request_id": "r5", "client_order_id": "ws-1"})
        ack = await comm.receive_json_from(TIMEOUT)
        assert (ack["order"]["id"], ack["order"]["status"], ack["order"]["reason"]) == (order_id, "cancelled", "user")
        assert (await comm.receive_json_from(TIMEOUT))["status"] == "cancelled"
        await comm.send_json_to({"type": "cancel_all", "request_id": "r6"})
        assert await comm.receive_json_from(TIMEOUT) == {"type": "ack", "request_id": "r6", "requested": 0, "confirmed": True}
        assert await database_sync_to_async(balances_get)(organisation=m["buyer"]) == {"available": 1_000_000, "held": 0, "escrow": 0, "receivable": 0}

        await comm.send_to(text_data="not json")
        assert (await comm.receive_json_from(TIMEOUT))["code"] == "bad_request"
        await comm.send_json_to({"type": "launch", "request_id": 9})
        assert (await comm.receive_json_from(TIMEOUT))["code"] == "unknown_type"
        await comm.send_json_to({"type": "ping", "request_id": 10})
        assert await comm.receive_json_from(TIMEOUT) == {"type": "pong", "request_id": 10, "seq": 3}
        await comm.disconnect()

    async_to_sync(body)()


def test_regulators_cannot_trade_over_the_socket(market_setup):
    regulator = UserFactory(platform_role=PlatformRole.REGULATOR)
    key = token(regulator)
    inst = market_setup["instrument"]

    async def body():
        comm, _ = await user_socket(key)
        await comm.send_json_to({"type": "place", "request_id": 1, "instrument": inst.pk, "side": "buy", "price": "15.00", "quantity": 1, "client_order_id": "reg"})
        error = await comm.receive_json_from(TIMEOUT)
        assert (error["status"], error["code"], error["message"]) == (403, "permission_denied", "Regulators have read-only access.")
        await comm.disconnect()

    async_to_sync(body)()
    assert not Order.objects.exists()


def test_cancel_on_disconnect_cancels_only_the_orders_placed_over_that_socket(api, market_setup):
    m = market_setup
    inst = m["instrument"]
    key = token(m["buyer_user"])
    kept = place(api, m["buyer_user"], inst, price="13.90", quantity=1, client_order_id="rest-1")

    async def body():
        comm, _, _ = await open_socket("/ws/user/?cancel_on_disconnect=1", token=key)
        assert (await comm.receive_json_from(TIMEOUT))["cancel_on_disconnect"] is True
        ids = []
        for i, price in enumerate(["14.00", "14.10"]):
            await comm.send_json_to({"type": "place", "request_id": i, "instrument": inst.pk, "side": "buy", "price": price, "quantity": 1, "client_order_id": f"ws-{i}"})
            ack = await comm.receive_json_from(TIMEOUT)
            ids.append(ack["order"]["id"])
            await comm.receive_json_from(TIMEOUT)  # its event
        await comm.disconnect(timeout=TIMEOUT)
        return ids

    ids = async_to_sync(body)()
    assert dict(Order.objects.filter(organisation=m["buyer"]).values_list("pk", "status")) == {kept["id"]: "open", ids[0]: "cancelled", ids[1]: "cancelled"}
    assert balances_get(organisation=m["buyer"])["held"] == 1_393  # 13.90 plus the maximum fee: ceil(1.39 fen) + 1 = 0.03


def test_without_the_flag_orders_outlive_the_socket(api, market_setup):
    m = market_setup
    key = token(m["buyer_user"])

    async def body():
        comm, _ = await user_socket(key)
        await comm.send_json_to({"type": "place", "request_id": 1, "instrument": m["instrument"].pk, "side": "buy", "price": "14.00", "quantity": 1, "client_order_id": "ws-1"})
        assert (await comm.receive_json_from(TIMEOUT))["type"] == "ack"
        await comm.disconnect(timeout=TIMEOUT)

    async_to_sync(body)()
    assert Order.objects.get().status == "open"


def test_session_and_query_token_authenticate_too(market_setup):
    m = market_setup
    client = Client()
    client.force_login(m["seller_user"])
    cookie = f"sessionid={client.cookies['sessionid'].value}".encode()
    key = token(m["buyer_user"])

    async def body():
        comm, welcome = await user_socket(headers=[(b"cookie", cookie)])
        assert welcome["organisations"] == [m["supplier"].pk]
        await comm.disconnect()
        comm, connected, _ = await open_socket(f"/ws/user/?token={key}")
        assert connected
        assert (await comm.receive_json_from(TIMEOUT))["user"] == m["buyer_user"].pk
        await comm.disconnect()

    async_to_sync(body)()


def test_a_foreign_origin_is_refused_by_the_configured_stack_and_ours(market_setup, asgi_application):
    key = token(market_setup["buyer_user"])
    inst = market_setup["instrument"]

    async def body():
        for app in (asgi_application, None):
            for path in ("/ws/user/", f"/ws/market/{inst.pk}/"):
                _, connected, _ = await open_socket(path, app=app, token=key, origin=b"https://evil.example.com")
                assert not connected
            comm, connected, _ = await open_socket("/ws/user/", app=app, token=key, origin=b"http://127.0.0.1:8000")
            assert connected
            await comm.disconnect()

    async_to_sync(body)()


def test_clients_without_an_origin_are_refused_even_with_a_token(market_setup, asgi_application):
    """Issue #11: a missing Origin is refused on every route (it used to be admitted as a program's)."""
    key = token(market_setup["buyer_user"])

    async def body():
        for app in (asgi_application, None):
            for path in ("/ws/user/", f"/ws/market/{market_setup['instrument'].pk}/"):
                _, connected, _ = await open_socket(path, app=app, token=key, origin=None)
                assert not connected, path

    async_to_sync(body)()


@pytest.mark.parametrize("transport_kind", ["inline", "thread"])
def test_pipelined_placements_each_get_their_ack_and_a_cancel_never_overtakes_them(api, market_setup, settings, transport_kind):
    """A socket may send placements without waiting: each is answered by request_id once its batch commits;
    a cancel sent right behind them finds the order it names (it waits for the placements before it)."""
    from exchange import transport

    settings.MATCHER_TRANSPORT = transport_kind
    transport._client = None
    m = market_setup
    inst = m["instrument"]
    key = token(m["buyer_user"])

    async def body():
        comm, _ = await user_socket(key)
        for i in range(6):
            await comm.send_json_to({"type": "place", "request_id": f"p{i}", "instrument": inst.pk, "side": "buy",
                                     "price": f"14.{i:02d}", "quantity": 1, "client_order_id": f"pipe-{i}"})
            if i == 2:  # refused among the others: its own error, theirs go on
                await comm.send_json_to({"type": "place", "request_id": "bad", "instrument": inst.pk, "side": "buy",
                                         "price": "14.005", "quantity": 1, "client_order_id": "pipe-bad"})
        await comm.send_json_to({"type": "cancel", "request_id": "c", "client_order_id": "pipe-5"})
        acks, events, order = {}, [], []
        while "c" not in acks or len(events) < 7:  # six placements and the cancel: one event each
            frame = await comm.receive_json_from(TIMEOUT)
            order.append(frame)
            if frame.get("type") in ("ack", "error"):
                acks[frame["request_id"]] = frame
            else:
                events.append(frame)
        await comm.disconnect()
        return acks, events, order

    try:
        acks, events, frames = async_to_sync(body)()
    finally:
        if transport_kind == "thread":
            transport.client().stop()
    assert [acks[f"p{i}"]["order"]["status"] for i in range(6)] == ["open"] * 6
    assert all(acks[f"p{i}"]["confirmed"] and acks[f"p{i}"]["created"] for i in range(6))
    assert acks["c"]["type"] == "ack" and acks["c"]["order"]["client_order_id"] == "pipe-5"
    assert (acks["bad"]["type"], acks["bad"]["status"], list(acks["bad"]["fields"])) == ("error", 400, ["price"])
    # Each order's ack comes before its events (the socket holds them back), and seq counts what was sent.
    ack_at = {f["order"]["id"]: i for i, f in enumerate(frames) if f.get("request_id", "").startswith("p")}
    assert all(ack_at[f["id"]] < frames.index(f) for f in events), [(f.get("type"), f.get("request_id") or f.get("id")) for f in frames]
    assert [f["seq"] for f in events] == list(range(1, 8))
    assert sorted(Order.objects.filter(client_order_id__startswith="pipe-").values_list("client_order_id", "status")) == [
        *((f"pipe-{i}", "open") for i in range(5)), ("pipe-5", "cancelled")]
    transport._client = None


def test_pipelined_placements_beyond_the_order_rate_get_429_error_frames(api, market_setup, settings, rate_window):
    """Frames read together are counted together (one increment per account) but answered one by one, in
    order: the account's budget goes to the first, the rest get 429 with the seconds to wait."""
    from django.core.cache import cache

    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "DEFAULT_THROTTLE_RATES": {"orders": "3/min"}}
    cache.clear()
    m = market_setup
    key = token(m["buyer_user"])

    async def body():
        comm, _ = await user_socket(key)
        for i in range(5):
            await comm.send_json_to({"type": "place", "request_id": f"p{i}", "instrument": m["instrument"].pk, "side": "buy",
                                     "price": "14.00", "quantity": 1, "client_order_id": f"rate-{i}"})
        answers = {}
        while len(answers) < 5:
            frame = await comm.receive_json_from(TIMEOUT)
            if frame.get("type") in ("ack", "error"):
                answers[frame["request_id"]] = frame
        await comm.disconnect()
        return answers

    answers = async_to_sync(body)()
    assert [answers[f"p{i}"]["type"] for i in range(5)] == ["ack", "ack", "ack", "error", "error"]
    assert {(answers[f"p{i}"]["status"], answers[f"p{i}"]["code"]) for i in (3, 4)} == {(429, "throttled")}
    assert "Expected available in" in answers["p3"]["message"]
    assert sorted(Order.objects.values_list("client_order_id", flat=True)) == ["rate-0", "rate-1", "rate-2"]


def test_placements_of_several_sockets_share_each_account_s_rate(api, market_setup, settings, rate_window):
    """The process hands several sockets' frames on together (exchange.ws_orders._Gate); each account's budget
    still counts every frame of its sockets once, whoever's frames they travelled with."""
    from django.core.cache import cache

    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "DEFAULT_THROTTLE_RATES": {"orders": "3/min"}}
    cache.clear()
    m = market_setup
    keys = {"buyer": token(m["buyer_user"]), "seller": token(m["seller_user"])}
    plan = [("buyer", "buy", "14.00", 3), ("buyer", "buy", "14.00", 2), ("seller", "sell", "16.00", 4)]

    async def body():
        sockets = [(await user_socket(keys[who]))[0] for who, *_ in plan]
        for n, (comm, (_, side, price, frames)) in enumerate(zip(sockets, plan, strict=True)):
            for i in range(frames):
                await comm.send_json_to({"type": "place", "request_id": f"{n}-{i}", "instrument": m["instrument"].pk, "side": side,
                                         "price": price, "quantity": 1, "client_order_id": f"gate-{n}-{i}"})
        answers = []
        for comm, (who, _, _, frames) in zip(sockets, plan, strict=True):
            got = 0
            while got < frames:
                frame = await comm.receive_json_from(TIMEOUT)
                if frame.get("type") in ("ack", "error"):
                    answers.append((who, frame["type"], frame.get("status")))
                    got += 1
            await comm.disconnect()
        return answers

    answers = async_to_sync(body)()
    for who, frames in (("buyer", 5), ("seller", 4)):
        mine = [a for a in answers if a[0] == who]
        assert len(mine) == frames
        assert sum(1 for a in mine if a[1] == "ack") == 3, mine
        assert {a[2] for a in mine if a[1] == "error"} == {429}
    assert Order.objects.filter(organisation=m["buyer"]).count() == 3
    assert Order.objects.filter(organisation=m["supplier"]).count() == 3


@pytest.mark.redis
def test_several_sockets_frames_are_counted_in_one_round_trip(market_setup, settings, rate_window, monkeypatch):
    """Two accounts' frames prepared together: their counters move in one pipeline (no call per account), and
    each account's own budget decides."""
    from django.core.cache import cache

    from exchange import ws_orders
    from exchange.api import views

    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "DEFAULT_THROTTLE_RATES": {"orders": "2/min"}}
    cache.clear()
    m = market_setup

    def one_by_one(*args):
        raise AssertionError("counted one account at a time")

    monkeypatch.setattr(views, "_count", one_by_one)
    frame = {"instrument": m["instrument"].pk, "side": "buy", "price": "14.00", "quantity": 1}
    results = ws_orders.place_prepare_each([
        (m["buyer_user"], [{**frame, "client_order_id": f"b{i}"} for i in range(3)]),
        (m["seller_user"], [{**frame, "side": "sell", "price": "16.00", "client_order_id": f"s{i}"} for i in range(1)]),
    ])
    kinds = [[type(r).__name__ if isinstance(r, Exception) else "ok" for r in socket] for socket in results]
    assert kinds == [["ok", "ok", "Throttled"], ["ok"]]


def test_the_process_joins_the_event_feed_again_after_the_channel_layer_failed(api, market_setup, monkeypatch):
    """A Redis restart drops the feed's membership and breaks the hub's read: the hub joins again once the
    layer answers, and the sockets get the events of orders placed after that, without reconnecting."""
    from channels.layers import get_channel_layer

    from exchange.consumers import user_hub
    from exchange.publish import USER_FEED

    m = market_setup
    key = token(m["buyer_user"])
    layer = get_channel_layer()
    real_receive = layer.receive
    failures = []

    async def receive(channel):
        if not failures:
            failures.append(channel)
            raise ConnectionError("Redis went away")
        return await real_receive(channel)

    async def body():
        comm, _ = await user_socket(key)
        hub = user_hub()
        # The restart: the membership is gone and the hub's next read fails (the pending one is woken first).
        await layer.group_discard(USER_FEED, hub.channel)
        assert await feed_members() == set()
        monkeypatch.setattr(layer, "receive", receive)
        await layer.send(hub.channel, {"type": "wake.up"})
        for _ in range(60):
            if failures and await feed_members():
                break
            await asyncio.sleep(0.1)
        assert failures and await feed_members() == {hub.channel}
        order = await database_sync_to_async(place)(api, m["buyer_user"], m["instrument"], side="buy", price="14.00", quantity=1, client_order_id="after")
        event = await comm.receive_json_from(TIMEOUT)
        assert (event["seq"], event["id"], event["status"]) == (1, order["id"], "open")
        await comm.disconnect()

    async_to_sync(body)()
