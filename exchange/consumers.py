"""Websocket consumers: public market data and the authenticated user stream with order entry.

Wire formats: docs/websockets.md. Routes: exchange/routing.py.

User streams likewise: a process keeps ONE member in the feed of every organisation's order events
(UserHub) and hands each event to its sockets of that organisation.

Market data fan-out. A process keeps ONE channel-layer member per instrument (MarketHub) however many
sockets watch it; the hub hands each message's pre-serialised text to every local socket's outbox and a
writer task per socket drains it. So an update costs one channel-layer message per process and one
json.dumps in total (exchange.publish), and a slow socket only fills its own outbox (then it is closed with
4008) instead of stalling the others.

Snapshot then updates, race-free: a socket is registered with the hub (group joined) BEFORE the snapshot is
read, buffers what arrives meanwhile, then drops updates the snapshot already contains (seq <= snapshot
seq) and flushes the rest. Updates still in flight after that are dropped the same way. If the stream
itself skips a sequence number (a message lost by the layer), the socket resynchronises on its own: the
client sees a new snapshot. Concurrent snapshot requests for one instrument share one database read, as
long as that read starts after each of them registered.
"""

from __future__ import annotations

import abc
import asyncio
import json
import logging
import struct
from collections import deque
from urllib.parse import parse_qs

from channels.consumer import get_handler_name
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings
from django.http import Http404
from django.utils import timezone
from rest_framework import exceptions as drf_exceptions
from rest_framework.utils.encoders import JSONEncoder

from common.errors import ServiceError
from exchange import selectors
from exchange.models import BookState
from exchange.publish import BATCH, USER_FEED, market_group, register_server_loop
from exchange.ws_auth import credential_still_valid, recheck_seconds, socket_has_scope, user_sockets_group
from exchange.ws_orders import COMMANDS, PlacePipeline, error_frame, orders_cancel_placed
from marketplace.models import Instrument
from marketplace.selectors import organisation_ids_for_user

log = logging.getLogger(__name__)

CLOSE_UNAUTHENTICATED = 4401
CLOSE_NOT_FOUND = 4404
CLOSE_TOO_SLOW = 4008
HUB_STOP = "market.hub.stop"  # sent by the hub to itself when its last subscription ends
# Channel-layer group memberships expire (channels: a day) and vanish with a Redis restart: renew them often.
GROUP_REFRESH_SECONDS = 30


def heartbeat_seconds() -> float:
    return float(getattr(settings, "WS_HEARTBEAT_SECONDS", 15))


def max_outbox() -> int:
    """Messages a socket may have waiting before it counts as too slow and is closed (4008); read once per socket."""
    return int(getattr(settings, "WS_MAX_OUTBOX", 1000))


def _dumps(data: dict) -> str:
    return json.dumps(data, cls=JSONEncoder, separators=(",", ":"))


def _db(func):
    """Run blocking service code off the event loop. On PostgreSQL a pool thread per call, so concurrent
    orders reach the matcher together (group commit); SQLite has one writer anyway, and the single
    thread-sensitive thread avoids its lock errors."""
    sqlite = "sqlite" in settings.DATABASES["default"]["ENGINE"]
    return database_sync_to_async(func, thread_sensitive=sqlite)


# --- market data ------------------------------------------------------------------------------------------


def snapshot_get(instrument_id: int) -> dict | None:
    """The committed book as the wire snapshot, serialised once for every socket that asked for it."""
    instrument = Instrument.objects.filter(pk=instrument_id).first()
    if instrument is None:
        return None
    book = selectors.book_depth_get(instrument=instrument)
    # Read after the book, so it may be a little newer than `seq`; it is informational.
    state = BookState.objects.filter(instrument_id=instrument_id).values("last_price_fen_per_lot", "trade_seq").first() or {}
    price = instrument.fen_per_lot_to_price
    last = state.get("last_price_fen_per_lot")
    payload = {
        "type": "snapshot", "instrument": instrument_id, "code": instrument.code, "status": instrument.status,
        "seq": book["seq"], "checksum": book["checksum"],
        "bids": [[str(price(p)), q] for p, q in book["bids"]], "asks": [[str(price(p)), q] for p, q in book["asks"]],
        "bids_fen_per_lot": [[p, q] for p, q in book["bids"]], "asks_fen_per_lot": [[p, q] for p, q in book["asks"]],
        "last": str(price(last)) if last is not None else None, "last_fen_per_lot": last,
        "trade_seq": state.get("trade_seq", 0), "heartbeat_seconds": heartbeat_seconds(),
    }
    return {"seq": book["seq"], "text": _dumps(payload)}


class _Topic:
    __slots__ = ("instrument_id", "consumers", "last_seq", "joined_at", "next_snapshot")

    def __init__(self, instrument_id: int) -> None:
        self.instrument_id = instrument_id
        self.consumers: set[MarketConsumer] = set()
        self.last_seq = 0
        self.joined_at: float | None = None
        self.next_snapshot: asyncio.Future | None = None


class _Hub(abc.ABC):
    """What MarketHub and UserHub share: one channel of this process's, read by one task that hands each
    message (or each of a batch's, in order) to `dispatch`, joins its groups again after the layer failed
    (`_rejoin`), and stops on HUB_STOP once the hub has nothing left to relay (`active`). One hub of each
    kind per event loop: `_hub_for`."""

    name = "hub"

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        from channels.layers import get_channel_layer

        self.loop = loop
        self.layer = get_channel_layer()
        self.channel: str | None = None
        self.lock = asyncio.Lock()
        self.tasks: list[asyncio.Task] = []
        register_server_loop(loop)

    @abc.abstractmethod
    def active(self) -> bool:
        """Whether any local socket still needs this hub's messages."""

    @abc.abstractmethod
    def dispatch(self, message: dict) -> None:
        """Hand one relayed message to the local sockets it is for."""

    @abc.abstractmethod
    async def _rejoin(self) -> None:
        """After a failed read: join this hub's groups again once the layer answers."""

    async def _read(self) -> None:
        while True:
            try:
                message = await self.layer.receive(self.channel)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("%s: receive failed; joining its groups again", self.name)
                await self._rejoin()
                continue
            if message.get("type") == HUB_STOP:
                if self.active():
                    continue  # subscribed again meanwhile
                for task in self.tasks:
                    if task is not asyncio.current_task():
                        task.cancel()
                self.tasks, self.channel = [], None
                return
            for one in message["messages"] if message.get("type") == BATCH else (message,):
                try:
                    self.dispatch(one)
                except Exception:
                    log.exception("%s: could not relay a %r message", self.name, one.get("kind") or one.get("type"))


class MarketHub(_Hub):
    """This process's subscriptions to market data: one channel, one group membership per instrument."""

    name = "market hub"

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop)
        self.topics: dict[int, _Topic] = {}

    async def subscribe(self, consumer: MarketConsumer) -> _Topic:
        iid = consumer.instrument_id
        async with self.lock:
            topic = self.topics.get(iid)
            if topic is None:
                topic = self.topics[iid] = _Topic(iid)
            if topic.joined_at is None and self.layer is not None:
                if self.channel is None:
                    self.channel = await self.layer.new_channel()
                    self.tasks = [self.loop.create_task(self._read()), self.loop.create_task(self._tick())]
                await self.layer.group_add(market_group(iid), self.channel)
                topic.joined_at = self.loop.time()
            topic.consumers.add(consumer)
        return topic

    async def unsubscribe(self, consumer: MarketConsumer) -> None:
        topic = self.topics.get(consumer.instrument_id)
        if topic is None or consumer not in topic.consumers:
            return
        topic.consumers.discard(consumer)
        if topic.consumers:
            return
        async with self.lock:
            if not topic.consumers and self.topics.get(topic.instrument_id) is topic:
                del self.topics[topic.instrument_id]
                if topic.joined_at is not None:
                    await self.layer.group_discard(market_group(topic.instrument_id), self.channel)
                if not self.topics and self.channel is not None:
                    # Nothing left to relay: the reader stops on this message rather than being cancelled in
                    # the middle of a Redis read (redis-py can lose that cancellation and keep reading).
                    await self.layer.send(self.channel, {"type": HUB_STOP})

    async def snapshot(self, topic: _Topic) -> dict | None:
        """The next snapshot read that starts after this call (so after the caller registered)."""
        future = topic.next_snapshot
        if future is None:
            future = topic.next_snapshot = self.loop.create_future()
            self.loop.create_task(self._read_snapshot(topic, future))
        return await asyncio.shield(future)

    async def _read_snapshot(self, topic: _Topic, future: asyncio.Future) -> None:
        topic.next_snapshot = None  # whoever asks from now on waits for a read that starts after them
        try:
            result = await _db(snapshot_get)(topic.instrument_id)
        except Exception as exc:
            future.set_exception(exc)
            future.add_done_callback(lambda f: f.exception())  # retrieved even if every asker went away
        else:
            future.set_result(result)

    def active(self) -> bool:
        return bool(self.topics)

    def dispatch(self, message: dict) -> None:
        topic = self.topics.get(message.get("instrument"))
        if topic is None:
            return
        if message.get("kind") == "book" and message["seq"] > topic.last_seq:
            topic.last_seq = message["seq"]
        message["frame"] = _frame(message["text"].encode())  # one websocket frame for all of this process's sockets
        for consumer in tuple(topic.consumers):
            consumer.offer(message)

    async def _rejoin(self) -> None:
        """The channel layer failed: if Redis restarted, our group memberships and the messages queued for us
        are gone. Join every group again once the layer answers, then send every socket a new snapshot."""
        while True:
            await asyncio.sleep(1)
            try:
                for topic in list(self.topics.values()):
                    if topic.joined_at is not None:
                        await self.layer.group_add(market_group(topic.instrument_id), self.channel)
                        topic.joined_at = self.loop.time()
                break
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("market hub: the channel layer is still unavailable (%s)", exc)
        for topic in list(self.topics.values()):
            for consumer in tuple(topic.consumers):
                consumer.resync()

    async def _tick(self) -> None:
        """Heartbeats to every live socket; renews group memberships before the layer expires them (and soon
        after a Redis restart that no read noticed: the next update then shows the socket a gap, and it
        resynchronises)."""
        while True:
            await asyncio.sleep(heartbeat_seconds())
            at = timezone.now().isoformat()
            for topic in list(self.topics.values()):
                head = f'{{"type":"heartbeat","instrument":{topic.instrument_id},"at":"{at}","seq":'
                for consumer in tuple(topic.consumers):
                    consumer.heartbeat(head, topic.last_seq)
                if topic.joined_at is not None and self.loop.time() - topic.joined_at > GROUP_REFRESH_SECONDS:
                    try:
                        await self.layer.group_add(market_group(topic.instrument_id), self.channel)
                        topic.joined_at = self.loop.time()
                    except Exception:
                        log.exception("market hub: could not renew group %s", topic.instrument_id)


_hubs: dict[type, _Hub] = {}


def _hub_for(kind: type[_Hub]) -> _Hub:
    """The running event loop's hub of that kind (a new one when the loop changed: tests run several)."""
    loop = asyncio.get_running_loop()
    hub = _hubs.get(kind)
    if hub is None or hub.loop is not loop:
        hub = _hubs[kind] = kind(loop)
    return hub


def market_hub() -> MarketHub:
    return _hub_for(MarketHub)


def _trim(message: dict, seq: int) -> str:
    """A book message that straddles the snapshot: keep the updates after `seq` (rare: catch-up only)."""
    payload = json.loads(message["text"])
    payload["updates"] = [u for u in payload["updates"] if u["seq"] > seq]
    payload["first"] = seq + 1
    return _dumps(payload)


def _frame(data: bytes) -> bytes:
    """One whole unmasked websocket text frame (server to client, RFC 6455 section 5.2) around UTF-8 `data`."""
    n = len(data)
    if n < 126:
        return bytes((0x81, n)) + data
    if n < 65536:
        return struct.pack("!BBH", 0x81, 126, n) + data
    return struct.pack("!BBQ", 0x81, 127, n) + data


try:  # the pinned uvicorn's sans-I/O websocket protocol (uvicorn --ws websockets-sansio)
    from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol as _SansIO
except ImportError:  # pragma: no cover
    _SansIO = None
_SANSIO_STATE = ("transport", "writable", "close_sent", "disconnected", "handshake_complete")


def _direct_protocol(send):
    """The uvicorn websockets-sansio connection behind an ASGI `send`, or None (any other server, tests).

    Its transport takes whole frames: the market stream writes each message's frame, encoded once per
    process, straight to it instead of through `send` (which re-frames the text for every socket). Control
    frames (ping, close) and everything else still go through uvicorn."""
    proto = getattr(send, "__self__", None)
    if _SansIO is not None and isinstance(proto, _SansIO) and all(hasattr(proto, a) for a in _SANSIO_STATE):
        return proto
    return None


class DirectWrites:
    """ASGI middleware, outermost (before the session middleware wraps `send`): uvicorn's websockets-sansio
    connection, when that is the server, goes into the scope as `ws_direct` for UserConsumer's frame buffer."""

    def __init__(self, inner) -> None:
        self.inner = inner

    async def __call__(self, scope, receive, send):
        proto = _direct_protocol(send)
        if proto is not None:
            scope = {**scope, "ws_direct": proto}
        return await self.inner(scope, receive, send)


class _FrameBuffer:
    """A user socket's text frames under websockets-sansio: framed here and written to the transport together
    once per turn of the event loop, so an order's ack, the events held for it and the other acks of the same
    matcher batch leave in one write (one system call) instead of one ASGI send each. A client that reads
    slowly holds the writer back as ASGI's send would (the transport's high-water mark)."""

    def __init__(self, proto) -> None:
        self.proto = proto
        self.frames: list[bytes] = []
        self.loop = asyncio.get_running_loop()

    async def write(self, text: str) -> None:
        await self.writable()
        self.put(text)

    async def writable(self) -> None:
        """Until the transport takes more (at once unless the client reads slowly)."""
        if not self.proto.writable.is_set():
            self.flush()
            await self.proto.writable.wait()

    def ready(self) -> bool:
        """Whether put() may be called now without waiting first."""
        return self.proto.writable.is_set()

    def put(self, text: str) -> None:
        proto = self.proto
        if proto.close_sent or proto.disconnected:
            return  # the socket is closing: dropped (its disconnect is on its way; ASGI send would raise)
        if not self.frames:
            self.loop.call_soon(self.flush)
        self.frames.append(_frame(text.encode()))

    def flush(self) -> None:
        frames, self.frames = self.frames, []
        if frames and not (self.proto.close_sent or self.proto.disconnected):
            self.proto.transport.write(b"".join(frames))


def _event_text(seq: int, event: dict) -> str:
    """A user event's frame: the per-connection seq spliced in front of the published text."""
    return f'{{"seq":{seq},{event["text"][1:]}'


def _parsed(message: dict) -> dict:
    """A relayed book message's payload, parsed once per process (only sockets that conflate need it)."""
    payload = message.get("parsed")
    if payload is None:
        payload = message["parsed"] = json.loads(message["text"])
    return payload


class _Book:
    """An unsent book message in a socket's outbox. Later book messages merge into it (conflation): per
    price level the last quantity wins and keeps the seq of its last change; the frame covers `first`..`seq`
    and carries the checksum of the book at `seq`."""

    __slots__ = ("instrument", "first", "seq", "text", "message", "levels", "checksum")

    def __init__(self, instrument: int, first: int, seq: int, text: str, message: dict | None) -> None:
        self.instrument, self.first, self.seq, self.text = instrument, first, seq, text
        self.message = message  # the relayed message whose text this is (None: trimmed, text is our own)
        self.levels: dict | None = None
        self.checksum = None

    def merge(self, message: dict, payload: dict) -> None:
        if self.levels is None:
            first = _parsed(self.message) if self.message is not None else json.loads(self.text)
            self.levels = {(u["side"], u["price_fen_per_lot"]): u for u in first["updates"]}
        levels = self.levels
        for u in payload["updates"]:
            key = (u["side"], u["price_fen_per_lot"])
            levels.pop(key, None)  # re-inserted last: the dict stays in order of each level's last change
            levels[key] = u
        self.seq = message["seq"]
        self.checksum = payload["checksum"]

    def render(self) -> str:
        if self.levels is None:
            return self.text
        return json.dumps({"type": "book", "instrument": self.instrument, "first": self.first, "seq": self.seq,
                           "checksum": self.checksum, "conflated": True, "updates": list(self.levels.values())},
                          separators=(",", ":"))


class MarketConsumer:
    """/ws/market/<instrument_id>/: public; snapshot, then book updates, trades, tickers, heartbeats.

    A plain ASGI application, not a channels consumer: the stream is public (config/asgi.py serves it
    without the session middleware, origin check kept) and has no channel of its own, and channels' send
    path (its session wrapper, the consumer's send) costs more than the rest of a delivery.

    Delivery: the hub calls `offer` for each message, synchronously. A socket with nothing queued gets the
    message at once: under uvicorn's websockets-sansio protocol the process-wide frame goes straight to the
    socket's transport (no task wake, no per-socket encoding); otherwise it is queued for a writer task
    that sends through ASGI. A socket whose transport pushes back (or that is behind) queues; an unsent
    book message absorbs later ones (conflation, docs/websockets.md); WS_MAX_OUTBOX queued messages -> 4008.
    """

    @classmethod
    def as_asgi(cls):
        async def app(scope, receive, send):
            await cls(scope, send).run(receive)

        return app

    def __init__(self, scope: dict | None = None, send=None) -> None:
        self.scope = scope or {}
        self.send = send
        self.proto = _direct_protocol(send) if send is not None else None
        self.instrument_id = 0
        self.topic: _Topic | None = None
        self.hub = None
        self.outbox: deque = deque()  # str texts, _Book (mergeable) or None (close after what is queued)
        self.pending_book: _Book | None = None  # the unsent book message in the outbox, if any
        self.writer: asyncio.Task | None = None  # running while the outbox is not empty
        self.limit = max_outbox()
        self.seq = 0  # the last book update this socket was sent or has queued (or its snapshot's)
        self.snap_seq = 0  # the snapshot's: trades and tickers at or before it are already reflected
        self.buffer: list[dict] | None = []  # not None while a snapshot is being read
        self.dropped = False
        self._close_code = CLOSE_TOO_SLOW

    async def run(self, receive) -> None:
        message = await receive()
        if message["type"] != "websocket.connect":
            return
        try:
            await self.connect()
            while True:
                message = await receive()
                if message["type"] == "websocket.receive":
                    self.receive(message.get("text"))
                elif message["type"] == "websocket.disconnect":
                    return
        finally:
            await self.disconnect()

    async def connect(self) -> None:
        self.instrument_id = int(self.scope["url_route"]["kwargs"]["instrument_id"])
        self.hub = market_hub()
        await self.send({"type": "websocket.accept"})
        self.topic = await self.hub.subscribe(self)
        await self._finish_resync()

    async def disconnect(self) -> None:
        self.dropped = True
        if self.writer is not None:
            self.writer.cancel()
        if self.hub is not None:
            await self.hub.unsubscribe(self)

    def receive(self, text_data=None) -> None:
        try:
            message = json.loads(text_data or "")
            kind = message.get("type")
        except (ValueError, AttributeError):
            self._deliver(_dumps({"type": "error", "code": "bad_request", "message": "Send JSON objects with a `type`."}))
            return
        if kind == "resync":
            self.resync()
        elif kind == "ping":
            self._deliver(_dumps({"type": "pong", "request_id": message.get("request_id"), "seq": self.seq}))
        else:
            self._deliver(_dumps({"type": "error", "request_id": message.get("request_id"), "code": "unknown_type",
                                  "message": "This stream takes `resync` and `ping`."}))

    def resync(self) -> None:
        """Send a new snapshot; what arrives meanwhile is buffered and applied after it."""
        if self.buffer is None and not self.dropped:  # otherwise a snapshot is already on its way
            self.buffer = []
            asyncio.get_running_loop().create_task(self._finish_resync())

    # --- from the hub (synchronous: no await between a message's arrival and its place in the stream) ---

    def offer(self, message: dict) -> None:
        if self.dropped:
            return
        if self.buffer is not None:
            self.buffer.append(message)
            if len(self.buffer) > self.limit:
                self._too_slow()
            return
        self._accept(message)

    def heartbeat(self, head: str, last_seq: int) -> None:
        if self.buffer is None and not self.dropped:
            self._deliver(f"{head}{max(self.seq, last_seq)}}}")

    def _accept(self, message: dict) -> None:
        seq = message["seq"]
        if message["kind"] == "book":
            if seq <= self.seq:
                return  # already in the snapshot
            first = message["first"]
            trimmed = None
            if first != self.seq + 1:
                if first > self.seq + 1:
                    log.warning("market %s: gap %s..%s on a socket; resynchronising", self.instrument_id, self.seq + 1, first - 1)
                    self.buffer = [message]
                    asyncio.get_running_loop().create_task(self._finish_resync())
                    return
                trimmed = _trim(message, self.seq)
                first = self.seq + 1
            self.seq = seq
            pending = self.pending_book
            if pending is not None:
                pending.merge(message, json.loads(trimmed) if trimmed is not None else _parsed(message))
                return
            if trimmed is None and self._write_now(message.get("frame")):
                return
            if trimmed is None:
                self.pending_book = _Book(self.instrument_id, first, seq, message["text"], message)
            else:
                self.pending_book = _Book(self.instrument_id, first, seq, trimmed, None)
            self._push(self.pending_book)
            return
        if seq is not None and seq <= self.snap_seq:
            return  # a trade or ticker the snapshot already reflects
        if not self._write_now(message.get("frame")):
            self._push(message["text"])

    def _write_now(self, frame: bytes | None) -> bool:
        """Write a frame to the transport now if nothing is queued ahead and it takes more; False otherwise."""
        proto = self.proto
        if proto is None or frame is None or self.writer is not None or not proto.writable.is_set():
            return False
        if not (proto.close_sent or proto.disconnected):
            proto.transport.write(frame)
        return True  # a socket that is closing drops it; its disconnect is on its way

    def _deliver(self, text: str) -> None:
        if self.writer is not None or not self._write_now(_frame(text.encode()) if self.proto is not None else None):
            self._push(text)

    async def _finish_resync(self) -> None:
        snapshot = await self.hub.snapshot(self.topic)
        if self.dropped:
            return
        self.pending_book = None  # nothing queued before the snapshot may absorb what comes after it
        if snapshot is None:
            self._deliver(_dumps({"type": "error", "code": "not_found", "message": f"No instrument {self.instrument_id}."}))
            self.dropped = True
            self._close_code = CLOSE_NOT_FOUND
            self._push(None)  # the writer closes after what is queued
            return
        buffered, self.buffer = self.buffer or [], None
        self.seq = self.snap_seq = snapshot["seq"]
        self._deliver(snapshot["text"])
        for message in buffered:
            self._accept(message)

    def _push(self, item) -> None:
        outbox = self.outbox
        outbox.append(item)
        if item is not None and len(outbox) > self.limit:
            self._too_slow()
            return
        if self.writer is None and self.send is not None:
            self.writer = asyncio.get_running_loop().create_task(self._write())

    def _too_slow(self) -> None:
        log.warning("market %s: a socket fell %d messages behind; closing it", self.instrument_id, self.limit)
        self.dropped = True
        self.buffer = None
        self.pending_book = None
        self.outbox.clear()
        self._push(None)

    async def _write(self) -> None:
        """Drain the outbox: through the transport in one write per turn (sansio), else through ASGI send."""
        outbox = self.outbox
        proto = self.proto
        try:
            while outbox:
                if proto is not None:
                    await proto.writable.wait()
                    frames = []
                    close = False
                    while outbox:
                        item = outbox.popleft()
                        if item is None:
                            close = True
                            break
                        if item is self.pending_book:
                            self.pending_book = None
                        frames.append(_frame((item if isinstance(item, str) else item.render()).encode()))
                    if frames and not (proto.close_sent or proto.disconnected):
                        proto.transport.write(b"".join(frames))
                    if close:
                        await self._close()
                        return
                    continue
                item = outbox.popleft()
                if item is None:
                    await self._close()
                    return
                if item is self.pending_book:
                    self.pending_book = None
                await self.send({"type": "websocket.send", "text": item if isinstance(item, str) else item.render()})
        except Exception:
            self.dropped = True  # the connection went away under us; its disconnect tidies up
        finally:
            self.writer = None

    async def _close(self) -> None:
        self.outbox.clear()
        try:
            await self.send({"type": "websocket.close", "code": self._close_code})
        finally:
            await self.hub.unsubscribe(self)


# --- user stream and order entry ------------------------------------------------------------------------


class UserHub(_Hub):
    """This process's user streams: ONE member in the group that carries every organisation's order events
    (exchange.publish.USER_FEED: a matcher batch sends its events there as one message), and the process's
    sockets by organisation. Each event goes to this process's sockets of its organisation, in the order the
    feed carries them. (Each socket used to join its organisations' groups, so a batch cost one channel-layer
    message per socket with events to send, and with channels_redis four Redis round trips to receive each.)"""

    name = "user hub"

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop)
        self.joined_at: float | None = None
        self.consumers: set[UserConsumer] = set()
        self.sockets: dict[int, set[UserConsumer]] = {}  # organisation -> its sockets in this process

    async def subscribe(self, consumer: UserConsumer, organisations: list[int]) -> None:
        async with self.lock:
            if self.layer is not None and self.joined_at is None:
                if self.channel is None:
                    self.channel = await self.layer.new_channel()
                    self.tasks = [self.loop.create_task(self._read()), self.loop.create_task(self._tick())]
                await self.layer.group_add(USER_FEED, self.channel)
                self.joined_at = self.loop.time()
            self.consumers.add(consumer)
            for org in organisations:
                self.sockets.setdefault(org, set()).add(consumer)

    async def unsubscribe(self, consumer: UserConsumer, organisations: list[int]) -> None:
        if consumer not in self.consumers:
            return
        self.consumers.discard(consumer)
        for org in organisations:
            sockets = self.sockets.get(org)
            if sockets is not None:
                sockets.discard(consumer)
                if not sockets:
                    del self.sockets[org]
        if self.consumers:
            return
        async with self.lock:
            if not self.consumers and self.joined_at is not None:
                self.joined_at = None
                await self.layer.group_discard(USER_FEED, self.channel)
                # The reader stops on this message (see MarketHub.unsubscribe), unless a socket came meanwhile.
                await self.layer.send(self.channel, {"type": HUB_STOP})

    def active(self) -> bool:
        return bool(self.consumers)

    def dispatch(self, event: dict) -> None:
        if event.get("type") != "user.event":
            return
        for consumer in tuple(self.sockets.get(event.get("organisation"), ())):
            consumer.offer_event(event)

    async def _rejoin(self) -> None:
        """The channel layer failed (a Redis restart loses group memberships): join the feed again once it
        answers. Events published meanwhile are lost, as they were for each socket before; clients read what
        changed over REST after a reconnect (docs/websockets.md)."""
        while True:
            await asyncio.sleep(1)
            try:
                if self.joined_at is not None:
                    await self.layer.group_add(USER_FEED, self.channel)
                    self.joined_at = self.loop.time()
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("user hub: the channel layer is still unavailable (%s)", exc)

    async def _tick(self) -> None:
        """Renews the feed membership before the layer expires it (and soon after a Redis restart no read noticed)."""
        while True:
            await asyncio.sleep(GROUP_REFRESH_SECONDS)
            if self.joined_at is not None:
                try:
                    await self.layer.group_add(USER_FEED, self.channel)
                    self.joined_at = self.loop.time()
                except Exception:
                    log.exception("user hub: could not renew the feed membership")


def user_hub() -> UserHub:
    return _hub_for(UserHub)


class UserConsumer(AsyncWebsocketConsumer):
    """/ws/user/: the user's organisations' order and fill events, and order entry (same services as REST)."""

    user = None
    organisations: list[int] = []
    heartbeat_task: asyncio.Task | None = None
    recheck_task: asyncio.Task | None = None
    cancel_on_disconnect = False
    frames: _FrameBuffer | None = None  # under websockets-sansio (DirectWrites), else text goes through ASGI send
    hub: UserHub | None = None
    closed = False
    event_task: asyncio.Task | None = None  # sends the events queued while the socket could not take them at once
    paused = 0  # commands being answered (cancel, amend, cancel_all): events wait for their acks

    async def connect(self) -> None:
        register_server_loop(asyncio.get_running_loop())
        user = self.scope.get("user")
        await self.accept()
        if self.scope.get("ws_direct") is not None:
            self.frames = _FrameBuffer(self.scope["ws_direct"])
        if user is None or not user.is_authenticated or not socket_has_scope(self.scope, "read"):
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        self.user = user
        # Before anything else: a revocation from now on reaches this socket (exchange.ws_auth).
        await self.channel_layer.group_add(user_sockets_group(user.pk), self.channel_name)
        self.recheck_task = asyncio.create_task(self._recheck_periodically())
        self.seq = 0
        self.placed: set[int] = set()
        self.places = PlacePipeline(self._send_text, self.placed, self._send_event)
        query = parse_qs(self.scope.get("query_string", b"").decode("latin1"))
        self.cancel_on_disconnect = query.get("cancel_on_disconnect", ["0"])[0].lower() in ("1", "true", "yes")
        self.organisations = sorted(await database_sync_to_async(organisation_ids_for_user)(user))
        self.events: deque[dict] = deque()
        self.hub = user_hub()
        await self.hub.subscribe(self, self.organisations)
        # Whatever the query string says, the stream carries the organisations of the authenticated user only.
        # Joined first: anything after `at` arrives here; re-read what came before over REST.
        await self.send(text_data=_dumps({
            "type": "welcome", "user": user.pk, "organisations": self.organisations, "seq": 0,
            "at": timezone.now().isoformat(), "cancel_on_disconnect": self.cancel_on_disconnect,
            "heartbeat_seconds": heartbeat_seconds(),
        }))
        self.heartbeat_task = asyncio.create_task(self._heartbeat())

    async def disconnect(self, code) -> None:
        self.closed = True
        if self.user is None:
            return
        if self.heartbeat_task is not None:
            self.heartbeat_task.cancel()
        if self.recheck_task is not None:
            self.recheck_task.cancel()
        await self.channel_layer.group_discard(user_sockets_group(self.user.pk), self.channel_name)
        if self.hub is not None:
            await self.hub.unsubscribe(self, self.organisations)
        self.places.closed = True
        await self.places.drain()  # placements still in flight: their ids count for cancel-on-disconnect
        if self.cancel_on_disconnect and self.placed:
            try:
                n = await _db(orders_cancel_placed)(self.user, set(self.placed))
                log.info("cancel-on-disconnect: %d orders of user %s", n, self.user.pk)
            except Exception:
                log.exception("cancel-on-disconnect failed for user %s", self.user.pk)

    async def dispatch(self, message: dict) -> None:
        """AsyncConsumer.dispatch without its `aclose_old_connections()` before every message (channels 4.2+):
        that is a trip to the sync thread for every frame a client sends and every event the stream delivers
        (15% of uvicorn's busy samples under websocket order entry). This consumer touches the database only
        through database_sync_to_async, whose thread handler closes stale connections around each call."""
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(message)

    def offer_event(self, event: dict) -> None:
        """From the process's UserHub: an order's new state, for one of this socket's organisations."""
        if self.closed:
            return  # the hub's message was already on its way when the socket closed
        if not self.events and not self.paused and self.event_task is None and self.frames is not None and self.frames.ready():
            # The usual case: into this turn's frames at once, without a task switch per socket.
            if not self.places.hold(event):
                self.seq += 1
                self.frames.put(_event_text(self.seq, event))
            return
        self.events.append(event)
        self._resume_events()

    def _resume_events(self) -> None:
        if self.events and not self.paused and self.event_task is None and not self.closed:
            self.event_task = asyncio.get_running_loop().create_task(self._send_events())

    async def _send_events(self) -> None:
        try:
            while self.events and not self.closed and not self.paused:
                await self.user_event(self.events.popleft())
        except Exception:
            log.exception("user stream: sending events failed for user %s", self.user.pk)
            self.events.clear()
        finally:
            self.event_task = None

    async def user_event(self, event: dict) -> None:
        """An order's new state; the per-connection seq goes in front."""
        if self.closed:
            return
        if self.places.hold(event):
            return  # sent right after this socket's ack for that order
        await self._send_event(event)

    async def _send_event(self, event: dict) -> None:
        if self.frames is not None:
            # The seq is taken once the frame can go out, so frames leave in the order of their seqs.
            await self.frames.writable()
            self.seq += 1
            self.frames.put(_event_text(self.seq, event))
            return
        self.seq += 1
        await self.send(text_data=_event_text(self.seq, event))

    async def receive(self, text_data=None, bytes_data=None) -> None:
        if self.user is None:
            return  # refused with 4401; anything it sent before the close is ignored
        try:
            message = json.loads(text_data or "")
            kind = message.get("type")
        except (ValueError, AttributeError):
            await self.send(text_data=_dumps({"type": "error", "request_id": None, "status": 400, "code": "bad_request",
                                              "message": "Send JSON objects with a `type`.", "fields": {}}))
            return
        request_id = message.get("request_id")
        if kind == "ping":
            await self.send(text_data=_dumps({"type": "pong", "request_id": request_id, "seq": self.seq}))
            return
        command = COMMANDS.get(kind)
        if command is None:
            await self.send(text_data=_dumps({"type": "error", "request_id": request_id, "status": 400, "code": "unknown_type",
                                              "message": f"`type` is one of {', '.join(COMMANDS)} or ping.", "fields": {}}))
            return
        if not socket_has_scope(self.scope, "trade"):
            await self.send(text_data=_dumps({"type": "error", "request_id": request_id, "status": 403, "code": "permission_denied",
                                              "message": "This API key lacks the 'trade' scope.", "fields": {}}))
            return
        if kind == "place":
            await self.places.place(self.user, message)  # answered when the matcher's batch commits
            return
        # Events wait until this command is answered: its ack goes out before the events it caused.
        self.paused += 1
        try:
            await self.places.drain()  # a cancel or amend never overtakes the placements sent before it
            try:
                result = await _db(command)(self.user, message)
            except Exception as exc:
                if not isinstance(exc, ServiceError | Http404 | drf_exceptions.APIException):
                    log.exception("websocket %s command failed", kind)
                await self.send(text_data=_dumps(error_frame(request_id, exc)))
                return
            await self.send(text_data=_dumps({"type": "ack", "request_id": request_id, **result}))
        finally:
            self.paused -= 1
            self._resume_events()

    async def auth_recheck(self, event: dict) -> None:
        """Group message "auth.recheck": the user's credentials changed (apikeys.signals); check ours now."""
        await self._recheck()

    async def _recheck(self) -> bool:
        if getattr(self, "closed", False) or self.user is None:
            return False
        try:
            valid = await database_sync_to_async(credential_still_valid)(self.scope)
        except Exception:
            log.exception("websocket credential re-check failed for user %s; will retry", self.user.pk)
            return True
        if not valid:
            log.info("closing a websocket of user %s: its credential is no longer valid", self.user.pk)
            self.closed = True
            await self.close(code=CLOSE_UNAUTHENTICATED)
        return valid

    async def _recheck_periodically(self) -> None:
        """The backstop for changes the signals do not see (an UPDATE outside the ORM, another process). Each
        round also renews the socket's membership of its user's group, which carries those signals: the layer
        expires a membership after its group_expiry (a day under channels_redis) and a Redis restart loses it,
        and a socket that is no longer a member would learn of a revocation only from this loop."""
        while await asyncio.sleep(recheck_seconds(), result=True) and await self._recheck():
            try:
                await self.channel_layer.group_add(user_sockets_group(self.user.pk), self.channel_name)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the layer is down: this loop's own checks go on meanwhile
                log.warning("user %s's socket could not renew its revocation group (%s)", self.user.pk, exc)

    async def _send_text(self, text: str) -> None:
        await self.send(text_data=text)

    async def send(self, text_data=None, bytes_data=None, close=False) -> None:
        """Text frames through the frame buffer when there is one; anything else after what it holds."""
        if self.frames is not None:
            if text_data is not None and bytes_data is None and not close:
                await self.frames.write(text_data)
                return
            self.frames.flush()
        await super().send(text_data=text_data, bytes_data=bytes_data, close=close)

    async def close(self, code=None, reason=None) -> None:
        if self.frames is not None:
            self.frames.flush()  # what was sent before the close goes out before it
        await super().close(code=code, reason=reason)

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(heartbeat_seconds())
            await self.send(text_data=_dumps({"type": "heartbeat", "seq": self.seq, "at": timezone.now().isoformat()}))
