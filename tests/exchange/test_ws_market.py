"""/ws/market/<id>/: snapshot, then incremental updates with continuous seq and checksums, trades, tickers,
heartbeats, resync; and the relay logic that makes snapshot-then-updates race-free."""

import asyncio
import json
from zlib import crc32

import pytest
from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from channels.layers import InMemoryChannelLayer, get_channel_layer

from exchange import consumers
from exchange.models import Trade
from exchange.publish import market_group
from tests.exchange.live.helpers import TIMEOUT, LocalBook, open_socket, place, release_worker_connections, ws_app

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _worker_connections():
    yield
    release_worker_connections()


def rest_book(api, instrument) -> dict:
    return api.get(f"/api/v1/instruments/{instrument.pk}/book/", {"depth": 500}).json()


def test_snapshot_then_updates_trades_and_tickers_keep_seq_and_checksum(api, market_setup):
    m = market_setup
    inst = m["instrument"]
    # Given a sell of 5 at 15.00 and a buy of 2 at 14.00 resting (book seq 1 and 2).
    place(api, m["seller_user"], inst, side="sell", price="15.00", quantity=5, client_order_id="s1")
    bid = place(api, m["buyer_user"], inst, side="buy", price="14.00", quantity=2, client_order_id="b1")

    async def body():
        comm, connected, _ = await open_socket(f"/ws/market/{inst.pk}/")
        assert connected
        snapshot = await comm.receive_json_from(TIMEOUT)
        assert snapshot == {
            "type": "snapshot", "instrument": inst.pk, "code": inst.code, "status": "open", "seq": 2,
            "checksum": crc32(b"1400:2:1500:5"), "bids": [["14.00", 2]], "asks": [["15.00", 5]],
            "bids_fen_per_lot": [[1400, 2]], "asks_fen_per_lot": [[1500, 5]], "last": None, "last_fen_per_lot": None,
            "trade_seq": 0, "heartbeat_seconds": 15.0,
        }
        book = LocalBook(snapshot)
        assert book.checksum() == snapshot["checksum"]

        # When a buy of 3 at 15.10 crosses (through the REST API) ...
        await database_sync_to_async(place)(api, m["buyer_user"], inst, side="buy", price="15.10", quantity=3, client_order_id="b2")
        update = await comm.receive_json_from(TIMEOUT)
        assert update == {
            "type": "book", "instrument": inst.pk, "first": 3, "seq": 3, "checksum": crc32(b"1400:2:1500:2"),
            "updates": [{"side": "sell", "price": "15.00", "price_fen_per_lot": 1500, "quantity": 2, "seq": 3}],
        }
        book.apply(update)
        assert book.checksum() == update["checksum"]
        trade = await database_sync_to_async(Trade.objects.get)()
        at = trade.created_at.isoformat()
        assert await comm.receive_json_from(TIMEOUT) == {
            "type": "trade", "instrument": inst.pk, "trade_seq": 1, "book_seq": 3, "price": "15.00",
            "price_fen_per_lot": 1500, "quantity": 3, "taker_side": "buy", "at": at,
        }
        assert await comm.receive_json_from(TIMEOUT) == {
            "type": "ticker", "instrument": inst.pk, "last": "15.00", "last_fen_per_lot": 1500, "trade_seq": 1, "book_seq": 3, "at": at,
        }

        # ... and the resting bid is cancelled.
        await database_sync_to_async(api.delete)(f"/api/v1/orders/{bid['id']}/")
        update = await comm.receive_json_from(TIMEOUT)
        assert update == {
            "type": "book", "instrument": inst.pk, "first": 4, "seq": 4, "checksum": crc32(b"1500:2"),
            "updates": [{"side": "buy", "price": "14.00", "price_fen_per_lot": 1400, "quantity": 0, "seq": 4}],
        }
        book.apply(update)
        assert book.checksum() == update["checksum"]
        assert await comm.receive_nothing(0.1)

        # Then the client's book is the committed book.
        rest = await database_sync_to_async(rest_book)(api, inst)
        assert (rest["seq"], rest["checksum"]) == (book.seq, book.checksum())
        assert (rest["bids_fen_per_lot"], rest["asks_fen_per_lot"]) == ([], [[1500, 2]])
        await comm.disconnect()

    async_to_sync(body)()


def test_a_sweep_is_one_message_with_several_updates_and_the_final_checksum(api, market_setup):
    m = market_setup
    inst = m["instrument"]
    for i, price in enumerate(["15.00", "15.01", "15.02"]):
        place(api, m["seller_user"], inst, side="sell", price=price, quantity=1, client_order_id=f"s{i}")

    async def body():
        comm, _, _ = await open_socket(f"/ws/market/{inst.pk}/")
        book = LocalBook(await comm.receive_json_from(TIMEOUT))
        assert book.seq == 3
        await database_sync_to_async(place)(api, m["buyer_user"], inst, side="buy", price="15.02", quantity=4, client_order_id="sweep")
        update = await comm.receive_json_from(TIMEOUT)
        # Three levels taken, then the rest of the buy rests at 15.02: four updates, seq 4..7.
        assert [(u["side"], u["price_fen_per_lot"], u["quantity"], u["seq"]) for u in update["updates"]] == [
            ("sell", 1500, 0, 4), ("sell", 1501, 0, 5), ("sell", 1502, 0, 6), ("buy", 1502, 1, 7),
        ]
        book.apply(update)
        assert update["seq"] == 7 and book.checksum() == update["checksum"] == crc32(b"1502:1")
        assert [(await comm.receive_json_from(TIMEOUT))["type"] for _ in range(4)] == ["trade", "trade", "trade", "ticker"]
        await comm.disconnect()

    async_to_sync(body)()


def test_heartbeats_carry_the_latest_seq_and_resync_resends_the_snapshot(api, market_setup, settings):
    settings.WS_HEARTBEAT_SECONDS = 0.05
    m = market_setup
    inst = m["instrument"]
    place(api, m["seller_user"], inst, side="sell", price="15.50", quantity=2, client_order_id="s1")

    async def body():
        comm, _, _ = await open_socket(f"/ws/market/{inst.pk}/")
        snapshot = await comm.receive_json_from(TIMEOUT)
        heartbeat = await comm.receive_json_from(TIMEOUT)
        assert set(heartbeat) == {"type", "instrument", "at", "seq"}
        assert (heartbeat["type"], heartbeat["instrument"], heartbeat["seq"]) == ("heartbeat", inst.pk, 1)
        await comm.send_json_to({"type": "resync"})
        frames = [await comm.receive_json_from(TIMEOUT) for _ in range(3)]
        assert snapshot in frames  # heartbeats may come in between
        await comm.send_json_to({"type": "ping", "request_id": 7})
        frames = [await comm.receive_json_from(TIMEOUT) for _ in range(3)]
        assert {"type": "pong", "request_id": 7, "seq": 1} in frames
        await comm.disconnect()

    async_to_sync(body)()


def test_sockets_of_one_process_share_one_group_member_and_each_gets_every_update(api, market_setup):
    m = market_setup
    inst = m["instrument"]

    async def body():
        sockets = [(await open_socket(f"/ws/market/{inst.pk}/"))[0] for _ in range(3)]
        for comm in sockets:
            assert (await comm.receive_json_from(TIMEOUT))["seq"] == 0
        hub = consumers.market_hub()
        assert len(hub.topics[inst.pk].consumers) == 3
        layer = get_channel_layer()
        if isinstance(layer, InMemoryChannelLayer):
            assert set(layer.groups[market_group(inst.pk)]) == {hub.channel}
        await database_sync_to_async(place)(api, m["seller_user"], inst, side="sell", price="15.00", quantity=1, client_order_id="s1")
        texts = [await comm.receive_from(TIMEOUT) for comm in sockets]
        assert len(set(texts)) == 1 and '"seq":1' in texts[0]
        for comm in sockets:
            await comm.disconnect()
        assert inst.pk not in hub.topics
        if isinstance(layer, InMemoryChannelLayer):
            assert market_group(inst.pk) not in layer.groups

    async_to_sync(body)()


def test_unknown_instrument_gets_an_error_and_4404(db):
    async def body():
        comm, connected, _ = await open_socket("/ws/market/987654/")
        assert connected
        assert await comm.receive_json_from(TIMEOUT) == {"type": "error", "code": "not_found", "message": "No instrument 987654."}
        assert await comm.receive_output(TIMEOUT) == {"type": "websocket.close", "code": 4404}

    async_to_sync(body)()


@pytest.mark.postgres
def test_a_snapshot_read_on_a_worker_thread_gives_its_pooled_connection_back(market_setup, monkeypatch):
    """The snapshot is read on one of the event loop's worker threads; its connection goes back to the pool
    when the read ends (it used to stay checked out under channels' test communicator: one lost a read)."""
    import threading

    from django.db import connection

    pool = connection.pool
    out: dict[int, str] = {}
    real_get, real_put = pool.getconn, pool.putconn

    def getconn(*args, **kwargs):
        conn = real_get(*args, **kwargs)
        out[id(conn)] = threading.current_thread().name
        return conn

    def putconn(conn):
        out.pop(id(conn), None)
        return real_put(conn)

    monkeypatch.setattr(pool, "getconn", getconn)
    monkeypatch.setattr(pool, "putconn", putconn)
    inst = market_setup["instrument"]

    async def body():
        comm, connected, _ = await open_socket(f"/ws/market/{inst.pk}/")
        assert connected
        assert (await comm.receive_json_from(TIMEOUT))["type"] == "snapshot"
        await comm.disconnect()

    async_to_sync(body)()
    release_worker_connections()
    main = id(connection.connection) if connection.connection is not None else None
    assert {k: name for k, name in out.items() if k != main} == {}


def test_a_slow_socket_gets_queued_book_updates_merged_and_its_rebuilt_book_matches(api, market_setup):
    """A socket whose sends do not complete (a slow client) gets, once it drains, one conflated book frame
    covering every update it missed; applying it to the snapshot gives the server's checksum and book."""
    m = market_setup
    inst = m["instrument"]
    place(api, m["seller_user"], inst, side="sell", price="15.00", quantity=5, client_order_id="s1")
    bid = place(api, m["buyer_user"], inst, side="buy", price="14.00", quantity=2, client_order_id="b1")
    gate = asyncio.Event()

    def slow(app):
        async def wrapped(scope, receive, send):
            async def gated_send(message):
                if message["type"] == "websocket.send":
                    await gate.wait()
                await send(message)

            return await app(scope, receive, gated_send)

        return wrapped

    async def body():
        comm, connected, _ = await open_socket(f"/ws/market/{inst.pk}/", app=slow(ws_app()))
        assert connected
        topic = consumers.market_hub().topics[inst.pk]
        while not topic.consumers or next(iter(topic.consumers)).buffer is not None:
            await asyncio.sleep(0.01)  # subscribed (a Redis round trip) and the snapshot read (stuck in the outbox)
        # While the socket is stuck (its snapshot not even sent): four level changes, seq 3..6, and a trade.
        await database_sync_to_async(place)(api, m["seller_user"], inst, side="sell", price="15.05", quantity=1, client_order_id="s2")
        await database_sync_to_async(place)(api, m["buyer_user"], inst, side="buy", price="15.10", quantity=3, client_order_id="b2")
        await database_sync_to_async(api.delete)(f"/api/v1/orders/{bid['id']}/")
        await database_sync_to_async(place)(api, m["seller_user"], inst, side="sell", price="15.00", quantity=1, client_order_id="s3")
        await asyncio.sleep(0.2)  # the hub has relayed all of it
        gate.set()
        snapshot = await comm.receive_json_from(TIMEOUT)
        assert (snapshot["type"], snapshot["seq"]) == ("snapshot", 2)
        merged = await comm.receive_json_from(TIMEOUT)
        # Trades are never merged: they follow, as they were (the trade is reflected at seq 4).
        tail = [await comm.receive_json_from(TIMEOUT) for _ in range(2)]
        assert [(f["type"], f["book_seq"]) for f in tail] == [("trade", 4), ("ticker", 4)]
        assert await comm.receive_nothing(0.1)
        await comm.disconnect()
        return snapshot, merged

    snapshot, merged = async_to_sync(body)()
    assert (merged["type"], merged["first"], merged["seq"], merged["conflated"]) == ("book", 3, 6, True)
    # One update per level, the level's last change, in the order of the last changes.
    assert [(u["side"], u["price_fen_per_lot"], u["quantity"], u["seq"]) for u in merged["updates"]] == [
        ("sell", 1505, 1, 3), ("buy", 1400, 0, 5), ("sell", 1500, 3, 6),
    ]
    book = LocalBook(snapshot)
    book.apply(merged)
    rest = rest_book(api, inst)
    assert book.checksum() == merged["checksum"] == rest["checksum"] == crc32(b"1500:3:1505:1")
    assert (book.seq, book.bids(), book.asks()) == (rest["seq"], [], [(1500, 3), (1505, 1)])


# --- the relay logic, without sockets ---------------------------------------------------------------------


class FakeHub:
    def __init__(self, seq: int) -> None:
        self.seq = seq

    async def snapshot(self, topic):
        return {"seq": self.seq, "text": f"snapshot {self.seq}"}


def book(first: int, last: int) -> dict:
    """A relayed book message: updates first..last, each at its own level (price 1000 + seq)."""
    updates = [{"side": "buy", "price": f"{(1000 + s) / 100:.2f}", "price_fen_per_lot": 1000 + s, "quantity": 1, "seq": s}
               for s in range(first, last + 1)]
    text = json.dumps({"type": "book", "instrument": 1, "first": first, "seq": last, "checksum": last, "updates": updates},
                      separators=(",", ":"))
    return {"kind": "book", "first": first, "seq": last, "text": text, "instrument": 1}


def trade(seq: int) -> dict:
    return {"kind": "trade", "first": seq, "seq": seq, "text": f"trade {seq}", "instrument": 1}


def relay(snapshot_seq: int) -> consumers.MarketConsumer:
    """A socket's relay logic without a socket: nothing is sent, the outbox keeps what would be."""
    c = consumers.MarketConsumer()
    c.instrument_id = 1
    c.hub = FakeHub(snapshot_seq)
    return c


def sent(c: consumers.MarketConsumer) -> list[str]:
    """What the outbox holds, as frames (book messages as `book first-last`, `+` when conflated)."""
    out = []
    for item in c.outbox:
        text = item if isinstance(item, str) or item is None else item.render()
        if text and text.startswith('{"type":"book"'):
            payload = json.loads(text)
            text = f"book {payload['first']}-{payload['seq']}" + ("+" if payload.get("conflated") else "")
        out.append(text)
    return out


def test_updates_buffered_during_the_snapshot_are_dropped_up_to_its_seq_then_flushed_in_order():
    async def body():
        c = relay(snapshot_seq=5)
        for message in (book(4, 4), trade(4), book(5, 5), trade(5), book(6, 7), trade(7)):
            c.offer(message)
        await c._finish_resync()
        # Still in flight after the snapshot: already-applied updates are dropped too.
        c.offer(book(7, 7))
        c.offer(trade(8))
        return sent(c)

    assert async_to_sync(body)() == ["snapshot 5", "book 6-7", "trade 7", "trade 8"]


def test_a_message_straddling_the_snapshot_keeps_only_the_later_updates():
    async def body():
        c = relay(snapshot_seq=5)
        c.offer(book(4, 6))
        await c._finish_resync()
        return [json.loads(item.render()) for item in list(c.outbox)[1:]]

    [update] = async_to_sync(body)()
    assert (update["first"], update["seq"], [u["seq"] for u in update["updates"]]) == (6, 6, [6])


def test_a_gap_in_the_stream_makes_the_socket_resynchronise():
    async def body():
        c = relay(snapshot_seq=2)
        await c._finish_resync()
        c.offer(book(3, 3))
        c.hub.seq = 9
        c.offer(book(5, 5))  # 4 was lost
        assert c.buffer is not None  # buffering while the new snapshot is read
        c.offer(book(9, 9))
        c.offer(book(10, 10))
        await asyncio.sleep(0.01)
        return sent(c)

    # Nothing queued before the new snapshot absorbs what comes after it.
    assert async_to_sync(body)() == ["snapshot 2", "book 3-3", "snapshot 9", "book 10-10"]


def test_queued_book_messages_merge_into_one_frame_per_level_and_trades_are_kept():
    async def body():
        c = relay(snapshot_seq=0)
        await c._finish_resync()
        c.offer(book(1, 2))
        c.offer(trade(2))
        c.offer(book(3, 3))
        later = book(4, 4)
        later["text"] = later["text"].replace('"price_fen_per_lot":1004', '"price_fen_per_lot":1001').replace('"checksum":4', '"checksum":44')
        c.offer(later)  # the level of seq 1 again
        return sent(c), json.loads(c.outbox[1].render())

    frames, merged = async_to_sync(body)()
    assert frames == ["snapshot 0", "book 1-4+", "trade 2"]
    assert merged["checksum"] == 44
    # Per level, the last change, in the order of the last changes.
    assert [(u["price_fen_per_lot"], u["seq"]) for u in merged["updates"]] == [(1002, 2), (1003, 3), (1001, 4)]


def test_a_socket_that_falls_too_far_behind_is_closed(settings):
    settings.WS_MAX_OUTBOX = 3

    async def body():
        c = relay(snapshot_seq=0)
        await c._finish_resync()
        for n in range(1, 5):
            c.offer(trade(n))  # trades are never merged
        return c.dropped, list(c.outbox), c._close_code

    assert async_to_sync(body)() == (True, [None], consumers.CLOSE_TOO_SLOW)


def test_the_market_stream_gets_no_session_but_foreign_and_missing_origins_are_still_refused(market_setup):
    inst = market_setup["instrument"]

    async def body():
        for origin in (b"https://evil.example.com", None):
            _, connected, _ = await open_socket(f"/ws/market/{inst.pk}/", origin=origin)
            assert not connected, origin
        for origin in (b"http://testserver", b"http://127.0.0.1:8000"):  # pages (or programs) with one of our Origins
            comm, connected, _ = await open_socket(f"/ws/market/{inst.pk}/", origin=origin)
            assert connected
            assert (await comm.receive_json_from(TIMEOUT))["type"] == "snapshot"
            [consumer] = consumers.market_hub().topics[inst.pk].consumers
            assert "session" not in consumer.scope and "user" not in consumer.scope
            await comm.disconnect()

    async_to_sync(body)()


# --- writing frames straight to uvicorn's transport ------------------------------------------------------


class FakeTransport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(data)


class FakeProtocol:
    """What MarketConsumer uses of uvicorn's websockets-sansio connection."""

    def __init__(self) -> None:
        self.transport = FakeTransport()
        self.writable = asyncio.Event()
        self.writable.set()
        self.close_sent = self.disconnected = False


def frames(data: bytes) -> list[str]:
    out = []
    while data:
        assert data[0] == 0x81  # FIN + text
        size, head = data[1], 2
        if size == 126:
            size, head = int.from_bytes(data[2:4], "big"), 4
        out.append(data[head:head + size].decode())
        data = data[head + size:]
    return out


async def no_close(message):
    raise AssertionError(f"unexpected {message}")


def relayed(message: dict) -> dict:
    """As the hub hands it to each socket: with the frame encoded once for all of them."""
    return {**message, "frame": consumers._frame(message["text"].encode())}


def test_frames_go_straight_to_the_transport_and_a_pushed_back_socket_drains_conflated_in_one_write():
    async def body():
        c = relay(snapshot_seq=0)
        c.proto = FakeProtocol()
        c.send = no_close  # frames go to the transport; ASGI send would only close
        writes = c.proto.transport.writes
        await c._finish_resync()
        first = relayed(book(1, 1))
        c.offer(first)
        assert writes[0] == consumers._frame(b"snapshot 0")
        assert writes[1] is first["frame"]  # the process-wide frame itself: no per-socket encoding
        assert c.writer is None and not c.outbox
        c.proto.writable.clear()  # the transport's buffer is over its high-water mark
        for message in (book(2, 2), trade(2), book(3, 4)):
            c.offer(relayed(message))
        assert len(writes) == 2 and len(c.outbox) == 2
        c.proto.writable.set()
        while c.writer is not None:
            await asyncio.sleep(0)
        return writes

    writes = async_to_sync(body)()
    assert len(writes) == 3  # the backlog in one write
    merged, traded = frames(writes[2])
    assert traded == "trade 2"
    merged = json.loads(merged)
    assert (merged["first"], merged["seq"], merged["conflated"], [u["seq"] for u in merged["updates"]]) == (2, 4, True, [2, 3, 4])


def test_the_pinned_uvicorns_sansio_connection_is_recognised():
    """The fast path depends on uvicorn's websockets-sansio protocol (pinned in requirements.txt): if an
    upgrade renames what it uses, this fails instead of every socket quietly taking the slow path."""
    import uvicorn
    from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
    from uvicorn.server import ServerState

    async def app(scope, receive, send):  # pragma: no cover
        pass

    async def body():
        config = uvicorn.Config(app, ws="websockets-sansio", lifespan="off")
        config.load()
        proto = WebSocketsSansIOProtocol(config=config, server_state=ServerState(), app_state={})
        proto.transport = FakeTransport()
        return consumers._direct_protocol(proto.send) is proto, consumers._direct_protocol(FakeProtocol().writable.wait)

    assert async_to_sync(body)() == (True, None)
