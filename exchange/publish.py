"""After a batch commits, the matcher tells the world: market data per instrument, order events per
organisation (the wire formats are in docs/websockets.md).

Each message is serialised to JSON once, here, and travels through the channel layer as text in an
envelope that carries what a relay needs without parsing it (kind, instrument, sequence numbers). A
websocket process keeps ONE group member per instrument (exchange.consumers.MarketHub) and writes the same
text to each of its sockets, so an update costs one channel-layer message per process, not one per socket.
Order events of every organisation go to one group, USER_FEED, with their organisation in the envelope: a
process keeps ONE member there (exchange.consumers.UserHub) and hands each event to its sockets of that
organisation, so a batch's events cost one channel-layer message per process, not one per socket.

Delivery: the in-memory layer lives in one event loop (the server's), so messages are handed to that loop;
any other layer (Redis) is used from one long-lived publisher loop, so its connections are reused instead
of opened per batch.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import orjson
from asgiref.sync import async_to_sync
from channels.layers import InMemoryChannelLayer, get_channel_layer
from channels_redis.core import RedisChannelLayer

log = logging.getLogger(__name__)
DELIVERY_TIMEOUT = 5.0  # seconds the matcher waits for the layer before it logs and moves on


BATCH = "batch"  # the channel-layer message type that carries several messages for one group, in order


def market_group(instrument_id: int) -> str:
    return f"market.{instrument_id}"


def organisation_group(organisation_id: int) -> str:
    """A Publication's audience for an organisation's order events (delivered through USER_FEED)."""
    return f"org.{organisation_id}"


# The channel-layer group of every organisation's order events: one member per websocket process with user
# streams open (consumers.UserHub), which relays each event to that process's sockets of its organisation.
USER_FEED = "user.feed"


@dataclass(frozen=True)
class Publication:
    group: str
    payload: dict[str, Any]
    instrument_id: int | None = None
    # Trades keep the objects until publish() formats them (after commit, with their ids).
    objects: tuple = ()

    @classmethod
    def market(cls, instrument_id: int, payload: dict[str, Any]) -> Publication:
        return cls(market_group(instrument_id), payload, instrument_id)

    @classmethod
    def trade(cls, instrument_id: int, trade, book_seq: int) -> Publication:
        """`book_seq`: the book's seq once the trade is reflected in it."""
        return cls(market_group(instrument_id), {"type": "trade", "book_seq": book_seq}, instrument_id, (trade,))

    @classmethod
    def order(cls, order, fills) -> Publication:
        maker = order.id
        return cls(organisation_group(order.organisation_id), {
            "type": "order", "id": order.id, "client_order_id": order.client_order_id, "instrument": order.instrument_id,
            "organisation": order.organisation_id, "side": order.side, "order_type": order.type,
            "price_fen_per_lot": order.price_fen_per_lot, "quantity": order.quantity, "status": order.status,
            "filled_quantity": order.filled_quantity, "open_quantity": order.open_quantity, "reason": order.reason,
            "fee_fen": order.fee_fen, "at": order.updated_at.isoformat() if order.updated_at else None,
            "fills": [
                {"trade": t.pk, "seq": t.seq, "price_fen_per_lot": t.price_fen_per_lot, "quantity": t.quantity,
                 "liquidity": "maker" if t.maker_order_id == maker else "taker"}
                for t in fills or []
            ],
        }, order.instrument_id)


# --- formatting ---------------------------------------------------------------------------------------

_units: dict[int, tuple[Decimal, Decimal]] = {}  # instrument id -> (lot size, tick size); both are fixed at listing


def _unit(instrument_id: int) -> tuple[Decimal, Decimal]:
    unit = _units.get(instrument_id)
    if unit is None:
        from marketplace.models import Instrument

        if len(_units) > 10_000:
            _units.clear()
        unit = _units[instrument_id] = Instrument.objects.values_list("lot_size", "tick_size").get(pk=instrument_id)
    return unit


def cny(instrument_id: int, fen_per_lot: int | None) -> str | None:
    """Fen per lot as the API's CNY-per-unit string (Instrument.fen_per_lot_to_price, without the query)."""
    if fen_per_lot is None:
        return None
    lot, tick = _unit(instrument_id)
    return str((Decimal(fen_per_lot) / 100 / lot).quantize(tick))


def _text(payload: dict) -> str:
    """Compact JSON (orjson: a sixth of the matcher's CPU went to json.dumps here under load); the payloads
    hold only strings, numbers, booleans, None, lists and dicts (prices already strings)."""
    return orjson.dumps(payload).decode()


def envelopes(publications: list[Publication]) -> list[tuple[str, dict[str, Any]]]:
    """(group, channel-layer message) for each publication, plus one ticker per instrument that traded.

    A market message's envelope has `kind`, `instrument`, `seq` (book messages: the last update's seq, with
    `first` the first one's; trades and tickers: the book seq they are reflected in) and `text`."""
    out: list[tuple[str, dict[str, Any]]] = []
    book_seq: dict[int, int] = {}
    last_trade: dict[int, Any] = {}
    for p in publications:
        kind = p.payload["type"]
        iid = p.instrument_id
        if kind == "book":
            updates = [
                {"side": u["side"], "price": cny(iid, u["price"]), "price_fen_per_lot": u["price"], "quantity": u["quantity"], "seq": u["seq"]}
                for u in p.payload["updates"]
            ]
            if not updates:
                continue  # a batch that only traded inside one level still sends BOOK events; none here means no change
            first, seq = updates[0]["seq"], updates[-1]["seq"]
            book_seq[iid] = seq
            text = _text({"type": "book", "instrument": iid, "first": first, "seq": seq, "checksum": p.payload["checksum"], "updates": updates})
            out.append((p.group, {"type": "market.message", "kind": "book", "instrument": iid, "first": first, "seq": seq, "text": text}))
        elif kind == "trade":
            t = p.objects[0]
            seq = p.payload["book_seq"]
            last_trade[iid] = t
            text = _text({
                "type": "trade", "instrument": iid, "trade_seq": t.seq, "book_seq": seq, "price": cny(iid, t.price_fen_per_lot),
                "price_fen_per_lot": t.price_fen_per_lot, "quantity": t.quantity, "taker_side": t.taker_side, "at": t.created_at.isoformat(),
            })
            out.append((p.group, {"type": "market.message", "kind": "trade", "instrument": iid, "first": seq, "seq": seq, "text": text}))
        elif kind == "status":
            event = dict(p.payload["event"])
            if "status" in event:
                from exchange.engine import Status

                event["status"] = Status(event["status"]).name.lower()
            if "price" in event:
                event["price_fen_per_lot"] = event["price"]
                event["price"] = cny(iid, event["price"])
            text = _text({"type": "status", "instrument": iid, "event": event})
            out.append((p.group, {"type": "market.message", "kind": "status", "instrument": iid, "first": None, "seq": None, "text": text}))
        elif kind == "order":
            payload = dict(p.payload)
            payload["price"] = cny(iid, payload["price_fen_per_lot"])
            payload["fills"] = [{**f, "price": cny(iid, f["price_fen_per_lot"])} for f in payload["fills"]]
            # No top-level "seq": the user consumer splices its per-connection sequence number in front.
            # The order's key rides along so a socket can hold the event until it has acked that placement;
            # the organisation tells the process's hub which sockets it is for.
            out.append((USER_FEED, {"type": "user.event", "organisation": payload["organisation"], "text": _text(payload),
                                    "key": [payload["organisation"], payload["client_order_id"]]}))
        else:
            out.append((p.group, {"type": "market.message", "kind": kind, "instrument": iid, "first": None, "seq": None, "text": _text(p.payload)}))
    for iid, t in last_trade.items():
        seq = book_seq.get(iid)
        text = _text({
            "type": "ticker", "instrument": iid, "last": cny(iid, t.price_fen_per_lot), "last_fen_per_lot": t.price_fen_per_lot,
            "trade_seq": t.seq, "book_seq": seq, "at": t.created_at.isoformat(),
        })
        out.append((market_group(iid), {"type": "market.message", "kind": "ticker", "instrument": iid, "first": seq, "seq": seq, "text": text}))
    return out


# --- delivery -----------------------------------------------------------------------------------------


def publish(publications: list[Publication]) -> None:
    """Best effort: the database is the record; a subscriber that misses a message sees the gap in the
    sequence numbers and gets a new snapshot."""
    if not publications:
        return
    layer = get_channel_layer()
    if layer is None:
        return
    try:
        messages = envelopes(publications)
        if messages:
            _deliver(layer, messages)
    except Exception:
        log.exception("publishing %d messages failed", len(publications))


async def _send_all(layer, messages: list[tuple[str, dict]]) -> None:
    """One channel-layer message per group: several for one group go as one {"type": "batch", "messages":
    [...]} in order (a matcher batch has a trade message per trade; each group_send is three Redis round
    trips); the groups side by side. Receivers of these groups handle "batch" (consumers.MarketHub,
    consumers.UserConsumer)."""
    by_group: dict[str, list[dict]] = {}
    for group, message in messages:
        by_group.setdefault(group, []).append(message)
    if len(by_group) > 1:
        listened = await _listened(layer, list(by_group))
        by_group = {g: q for g, q in by_group.items() if g in listened}
        if not by_group:
            return

    async def send(group: str, queue: list[dict]) -> None:
        await layer.group_send(group, queue[0] if len(queue) == 1 else {"type": BATCH, "messages": queue})

    if len(by_group) == 1:
        await send(*next(iter(by_group.items())))
        return
    results = await asyncio.gather(*(send(g, q) for g, q in by_group.items()), return_exceptions=True)
    failed = [r for r in results if isinstance(r, BaseException)]
    if failed:
        raise failed[0]


async def _listened(layer, groups: list[str]) -> set[str]:
    """Of `groups`, those that have a member, asked of Redis in one round trip per Redis host (ZCOUNT of each
    group's live members). A batch publishes to its instruments' groups and the user feed, often with no
    websocket process listening: each group_send to an empty group still cost two round trips (channels_redis
    prunes the group, then reads its members). A socket that joins between this question and the send misses the
    message, as it would one sent just before it joined; a user stream is not replayed either way (a client
    connects first, then reads over REST what changed, docs/websockets.md), and a market socket joins its
    feed before it reads its snapshot. Other layers: all of them."""
    if not isinstance(layer, RedisChannelLayer):
        return set(groups)
    live_after = int(time.time()) - layer.group_expiry  # channels_redis drops members at or below this score
    by_host: dict[int, list[str]] = {}
    for group in groups:
        by_host.setdefault(layer.consistent_hash(group), []).append(group)

    async def ask(index: int, names: list[str]) -> list[str]:
        pipe = layer.connection(index).pipeline(transaction=False)
        for name in names:
            pipe.zcount(layer._group_key(name), f"({live_after}", "+inf")
        counts = await pipe.execute()
        return [name for name, count in zip(names, counts, strict=True) if count]

    found = await asyncio.gather(*(ask(i, names) for i, names in by_host.items()))
    return {name for names in found for name in names}


_server_loop: asyncio.AbstractEventLoop | None = None
_publisher_loop: asyncio.AbstractEventLoop | None = None
_publisher_lock = threading.Lock()


def register_server_loop(loop: asyncio.AbstractEventLoop) -> None:
    """Called by the websocket consumers: the loop whose in-memory layer queues they wait on."""
    global _server_loop
    _server_loop = loop


def _deliver(layer, messages: list[tuple[str, dict]]) -> None:
    if isinstance(layer, InMemoryChannelLayer):
        loop = _server_loop
        if loop is None or loop.is_closed() or not loop.is_running():
            # No websocket served in this process yet: whoever listens (a test) is on the caller's loop.
            async_to_sync(_send_all)(layer, messages)
            return
    else:
        loop = _publisher()
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is loop:  # called from the loop itself (never from the matcher): do not wait on ourselves
        loop.create_task(_send_all(layer, messages))
        return
    # Waiting keeps batches in order and pushes back on the matcher if the layer falls behind.
    asyncio.run_coroutine_threadsafe(_send_all(layer, messages), loop).result(timeout=DELIVERY_TIMEOUT)


def _publisher() -> asyncio.AbstractEventLoop:
    global _publisher_loop
    with _publisher_lock:
        if _publisher_loop is None or _publisher_loop.is_closed():
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, name="suanli-publisher", daemon=True).start()
            _publisher_loop = loop
        return _publisher_loop
