"""Order entry over /ws/user/: each command runs the same services as the REST API and answers as data
(an ack, or an error frame with the REST status and field errors). Called from UserConsumer in a worker
thread."""

from __future__ import annotations

import asyncio
import collections
import logging

import orjson
from channels.db import database_sync_to_async
from django.http import Http404
from rest_framework import exceptions as drf_exceptions
from rest_framework.utils.encoders import JSONEncoder

from common.api import id_of
from common.errors import ServiceError
from exchange import selectors, services, transport
from exchange.models import Order, OrderStatus
from marketplace.selectors import acting_organisation, organisation_ids_for_user

log = logging.getLogger(__name__)


class _ThrottleRequest:
    """What DRF's UserRateThrottle reads from a request: REST and websocket orders share one budget."""

    def __init__(self, user, organisation=None) -> None:
        self.user = user
        self.organisation = organisation  # as the frame names it (the account whose budget it spends)
        self.META: dict = {}


def _throttle_each(items: list[tuple]) -> list[list[float | None]]:
    """The order rate for several sockets' frames ((user, frames) pairs), counted in one round trip: per frame
    None, or the seconds to wait (429)."""
    from exchange.api.views import OrderRateThrottle

    return OrderRateThrottle().allow_each([(user, [_ThrottleRequest(user, m.get("organisation")) for m in messages]) for user, messages in items])


def _fields(message: dict, *drop: str) -> dict:
    return {k: v for k, v in message.items() if k not in ("type", "request_id", *drop)}


def _order_data(order_id: int) -> dict:
    from exchange.api.serializers import OrderSerializer

    return OrderSerializer(selectors.order_with_fills().get(pk=order_id)).data


def _not_regulator(user) -> None:
    if user.is_regulator:
        raise ServiceError("Regulators have read-only access.", status_code=403)


def _find_order(user, message: dict) -> Order:
    qs = selectors.order_list_for_user(user)
    if message.get("order") is not None:
        pk = id_of(message["order"])
        if pk is None:
            raise drf_exceptions.ValidationError({"order": ["An order id."]})
        order = qs.filter(pk=pk).first()
    elif message.get("client_order_id"):
        qs = qs.filter(client_order_id=str(message["client_order_id"]), organisation_id__in=organisation_ids_for_user(user))
        order = qs.order_by("-id").first()
    else:
        raise drf_exceptions.ValidationError({"order": ["Give `order` (an id) or `client_order_id`."]})
    if order is None:
        raise drf_exceptions.NotFound("No such order among yours.")
    return order


def place_prepare(user, message: dict) -> tuple[dict, object]:
    """{"type": "place", ...the REST POST /orders/ body, with the order type as `order_type`}: validated
    and turned into the matcher's command (and the instrument, to render the answer). Counted against the
    order rate first (place_prepare_many)."""
    [result] = place_prepare_many(user, [message])
    if isinstance(result, Exception):
        raise result
    return result


def _place_validate(user, message: dict) -> tuple[dict, object]:
    from exchange.api.serializers import order_in_validated

    data = _fields(message, "order_type")
    if "order_type" in message:
        data["type"] = message["order_type"]
    v = order_in_validated(data)
    organisation = selectors.trading_organisation_get(user, v.pop("organisation", None))
    return services.order_command(user=user, organisation=organisation, request=services.OrderRequest(**v)), v["instrument"]


def place_answer(command: dict, instrument, replies: list[dict] | None) -> dict:
    from exchange.api.serializers import order_payload

    placed = services.placement_from_replies(replies)
    if placed.state is None:
        return {"order": {"client_order_id": command["client_order_id"], "instrument": command["instrument"], "status": "pending"}, "created": None, "confirmed": False}
    return {"order": order_payload(placed.state, instrument), "created": placed.created, "confirmed": True}


def order_place_command(user, message: dict) -> dict:
    command, instrument = place_prepare(user, message)
    return place_answer(command, instrument, transport.send([command]))


def place_prepare_many(user, messages: list[dict]) -> list[tuple[dict, object] | Exception]:
    """place_prepare for several frames of one socket in one trip to a worker thread: per frame the command
    and instrument, or the exception that refuses it (answered as that frame's error)."""
    return place_prepare_each([(user, messages)])[0]


def place_prepare_each(items: list[tuple]) -> list[list[tuple[dict, object] | Exception]]:
    """place_prepare_many for several sockets ((user, frames) pairs) in one trip to a worker thread, their
    order rate counted in one round trip."""
    allowed = []
    for user, _ in items:
        try:
            _not_regulator(user)
        except ServiceError as exc:
            allowed.append(exc)
        else:
            allowed.append(None)
    counted = [(user, messages) for (user, messages), refused in zip(items, allowed, strict=True) if refused is None]
    waits = iter(_throttle_each(counted))
    return [[refused] * len(messages) if refused is not None else _place_each(user, messages, next(waits))
            for (user, messages), refused in zip(items, allowed, strict=True)]


def _place_each(user, messages: list[dict], waits: list[float | None]) -> list[tuple[dict, object] | Exception]:
    out: list[tuple[dict, object] | Exception] = []
    for message, wait in zip(messages, waits, strict=True):
        if wait is not None:
            out.append(drf_exceptions.Throttled(wait))
            continue
        try:
            out.append(_place_validate(user, message))
        except Exception as exc:
            if not isinstance(exc, ServiceError | Http404 | drf_exceptions.APIException):
                log.exception("websocket place failed before the matcher")
            out.append(exc)
    return out


_ENCODER = JSONEncoder()
_FRAME_OPTIONS = orjson.OPT_PASSTHROUGH_DATETIME  # datetimes as DRF renders them (UTC as "Z"), through its encoder


def frame_text(frame: dict) -> str:
    """A frame as compact JSON: orjson, with DRF's encoder for what it does not know (Decimal, lazy strings,
    datetimes), so the text is what json.dumps with DRF's encoder would give, at a fraction of the CPU."""
    return orjson.dumps(frame, default=_ENCODER.default, option=_FRAME_OPTIONS).decode()


MAX_PLACES_IN_FLIGHT = 64


class _Gate:
    """The process's placements on their way to the matcher. Frames any socket queued meanwhile go to a
    worker thread together (their order rate counted in one Redis round trip, then validated) and to the
    matcher in one message per shard; each socket then waits for its own answers. One trip per socket cost a
    thread hand-off, a rate-count round trip and a matcher message for every one or two frames."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.waiting: list[PlacePipeline] = []  # sockets with frames queued, in the order they queued them
        self.worker: asyncio.Task | None = None

    def add(self, pipeline: PlacePipeline) -> None:
        if not pipeline.waiting:
            pipeline.waiting = True
            self.waiting.append(pipeline)
        if self.worker is None:
            self.worker = self.loop.create_task(self._run())

    async def _run(self) -> None:
        try:
            while self.waiting:
                pipelines, self.waiting = self.waiting, []
                work = []
                for pipeline in pipelines:
                    messages, pipeline.queue = pipeline.queue, []
                    pipeline.waiting = False
                    pipeline.staged += 1
                    work.append((pipeline, messages))
                try:
                    await self._hand_on(work)
                finally:
                    for pipeline, _ in work:
                        pipeline.staged -= 1
                        pipeline.moved.set()
        finally:
            self.worker = None

    async def _hand_on(self, work: list[tuple[PlacePipeline, list[dict]]]) -> None:
        try:
            prepared = await database_sync_to_async(place_prepare_each)([(p.user, messages) for p, messages in work])
        except Exception as exc:  # the thread hand-off itself failed
            prepared = [[exc] * len(messages) for _, messages in work]
        staged = [(p, *p.stage(messages, results)) for (p, messages), results in zip(work, prepared, strict=True)]
        commands = [command for _, _, batch in staged for _, command, _ in batch]
        pending = None
        if commands:
            try:
                # Queued before the next round is taken, so each socket's frames reach the matcher in order.
                replies = await transport.submit_async(commands)
            except Exception as exc:
                log.exception("websocket place: handing %d orders to the matcher failed", len(commands))
                pending = self.loop.create_future()
                pending.set_exception(exc)
                pending.exception()  # retrieved: each socket's answer task reports it as its frames' errors
            else:
                # A task of its own that every socket's answer task waits on (shielded: a socket that closes
                # does not cancel the others' wait).
                pending = asyncio.ensure_future(replies)
        i = 0
        for pipeline, errors, batch in staged:
            pipeline.answer_later(errors, batch, pending, i)
            i += len(batch)


_gates: dict[asyncio.AbstractEventLoop, _Gate] = {}


def _gate() -> _Gate:
    loop = asyncio.get_running_loop()
    gate = _gates.get(loop)
    if gate is None:
        for old in [lp for lp in _gates if lp.is_closed()]:
            del _gates[old]
        gate = _gates[loop] = _Gate(loop)
    return gate


async def _replies(pending: asyncio.Future, start: int, n: int):
    """This socket's part of the matcher's answer to the gate's message (None: no answer in time)."""
    replies = await asyncio.shield(pending)
    return None if replies is None else replies[start : start + n]


class PlacePipeline:
    """A socket's placements in flight. Frames are queued as they are read and handed, with other sockets'
    (_Gate), to a worker thread for validation and to the matcher, in the order the socket sent them. The
    socket does not wait for the matcher before reading its next frame, so placements share the matcher's
    batches (acks come back as the batches commit, each with its request_id). Any other command first waits
    for the placements before it, so a cancel can never overtake the order it cancels. At most
    MAX_PLACES_IN_FLIGHT per socket: beyond that reading waits."""

    def __init__(self, send, placed: set[int], send_event=None) -> None:
        self.send = send  # async (text) -> None
        self.send_event = send_event  # async (group message) -> None: sends a held event (the stream's seq)
        self.placed = placed  # order ids placed on this socket (cancel-on-disconnect)
        self.tasks: set[asyncio.Task] = set()
        self.closed = False
        self.user = None
        self.queue: list[dict] = []  # frames read, not yet taken by the gate
        self.waiting = False  # registered with the gate
        self.staged = 0  # batches of frames the gate took and has not handed on yet
        self.moved = asyncio.Event()  # set when the gate hands on a batch of this socket's frames
        self.outstanding = 0  # frames read and not yet answered
        self.room = asyncio.Event()
        # Placements sent to the matcher and not answered yet, by (organisation, client_order_id): how many
        # (a client may repeat a key in flight) and the events of that order held until the ack has gone out
        # (docs/websockets.md: the ack comes first).
        self.in_flight: collections.Counter[tuple[int, str]] = collections.Counter()
        self.unanswered: dict[tuple[int, str], list[dict]] = {}

    def hold(self, event: dict) -> bool:
        """Keep a user event back if it is about a placement of this socket whose ack has not gone out yet."""
        key = event.get("key")
        held = self.unanswered.get(tuple(key)) if key else None
        if held is None:
            return False
        held.append(event)
        return True

    async def place(self, user, message: dict) -> None:
        self.user = user
        self.queue.append(message)
        self.outstanding += 1
        _gate().add(self)
        while self.outstanding >= MAX_PLACES_IN_FLIGHT:
            self.room.clear()
            await self.room.wait()

    def _answered(self, n: int = 1) -> None:
        self.outstanding -= n
        if self.outstanding < MAX_PLACES_IN_FLIGHT:
            self.room.set()

    def stage(self, messages: list[dict], prepared: list) -> tuple[list, list]:
        """The gate's results for this socket's frames: (request id, refusal) pairs, and the placements going to
        the matcher, registered as in flight before it can answer (their events are held until the ack)."""
        errors, batch = [], []
        for message, result in zip(messages, prepared, strict=True):
            if isinstance(result, Exception):
                errors.append((message.get("request_id"), result))
                continue
            command, instrument = result
            key = (command["organisation"], command["client_order_id"])
            self.in_flight[key] += 1
            self.unanswered.setdefault(key, [])  # a repeat of a key in flight shares its held events
            batch.append((message.get("request_id"), command, instrument))
        return errors, batch

    def answer_later(self, errors: list, batch: list, pending, start: int) -> None:
        task = asyncio.get_running_loop().create_task(self._answer(errors, batch, pending, start))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _answer(self, errors: list, batch: list[tuple], pending, start: int) -> None:
        for request_id, exc in errors:
            await self._send(error_frame(request_id, exc))
            self._answered()
        if not batch:
            return
        try:
            replies = await _replies(pending, start, len(batch))
        except Exception as exc:
            if not pending.done() or pending.exception() is not exc:
                log.exception("websocket place: waiting for the matcher failed")
            replies = exc
        for i, (request_id, command, instrument) in enumerate(batch):
            try:
                try:
                    if isinstance(replies, Exception):
                        raise replies
                    result = place_answer(command, instrument, None if replies is None else [replies[i]])
                except Exception as exc:
                    if not isinstance(exc, ServiceError | Http404 | drf_exceptions.APIException):
                        log.exception("websocket place failed")
                    await self._send(error_frame(request_id, exc))
                    continue
                if result["order"].get("id") is not None:
                    self.placed.add(result["order"]["id"])
                await self._send({"type": "ack", "request_id": request_id, **result})
            finally:
                self._answered()
                await self._release((command["organisation"], command["client_order_id"]))

    async def _release(self, key: tuple[int, str]) -> None:
        """After the answer: the events held for that placement, in the order they came."""
        self.in_flight[key] -= 1
        if self.in_flight[key] > 0:
            return  # another placement with the same key is still waiting for its answer
        del self.in_flight[key]
        held = self.unanswered.get(key)
        if held is None:
            return
        # The list stays registered while it is sent: an event that comes in meanwhile joins its end, so the
        # order's events go out in the order they came.
        while held:
            event = held.pop(0)
            if self.send_event is not None and not self.closed:
                await self.send_event(event)
        if self.unanswered.get(key) is held:
            del self.unanswered[key]

    async def drain(self) -> None:
        """Until every frame read so far is answered (handed to the matcher and its ack or error sent)."""
        while True:
            if self.queue or self.waiting or self.staged:
                self.moved.clear()
                await self.moved.wait()
            elif self.tasks:
                await asyncio.gather(*self.tasks, return_exceptions=True)
            else:
                return

    async def _send(self, frame: dict) -> None:
        if self.closed:
            return
        try:
            await self.send(frame_text(frame))
        except Exception:  # the socket closed meanwhile: the order stands, the client asks by client_order_id
            self.closed = True


def order_cancel_command(user, message: dict) -> dict:
    _not_regulator(user)
    unknown = sorted(set(_fields(message)) - {"order", "client_order_id"})
    if unknown:
        raise drf_exceptions.ValidationError({name: ["Unknown field."] for name in unknown})
    order = services.order_cancel_request(user=user, order=_find_order(user, message))
    replies = transport.send([{"op": "cancel", "order": order.pk, "instrument": order.instrument_id, "actor": user.pk}])
    return {"order": _order_data(order.pk), "confirmed": replies is not None}


def order_amend_command(user, message: dict) -> dict:
    from exchange.api.serializers import OrderAmendSerializer

    _not_regulator(user)
    order = _find_order(user, message)
    serializer = OrderAmendSerializer(data=_fields(message, "order", "client_order_id"))
    serializer.is_valid(raise_exception=True)
    order, price, open_qty = services.order_amend_prepare(user=user, order=order, **serializer.validated_data)
    replies = transport.send([{"op": "amend", "order": order.pk, "instrument": order.instrument_id, "price": price, "quantity": open_qty, "actor": user.pk}])
    if replies and replies[0].get("rejected"):
        raise services.amend_refused(replies[0])
    return {"order": _order_data(order.pk), "confirmed": replies is not None}


def order_cancel_all_command(user, message: dict) -> dict:
    from exchange.api.serializers import CancelAllSerializer

    _not_regulator(user)
    serializer = CancelAllSerializer(data=_fields(message))
    serializer.is_valid(raise_exception=True)
    organisation = acting_organisation(user, serializer.validated_data.get("organisation"), services.TRADING_ROLES)
    open_orders = list(services.orders_open_for(organisation=organisation, instrument=serializer.validated_data.get("instrument")))
    for order in open_orders:
        services.order_cancel_request(user=user, order=order)
    commands = [{"op": "cancel", "order": o.pk, "instrument": o.instrument_id, "actor": user.pk} for o in open_orders]
    replies = transport.send(commands) if commands else []
    return {"requested": len(open_orders), "confirmed": replies is not None}


def orders_cancel_placed(user, order_ids: set[int]) -> int:
    """Cancel-on-disconnect: the socket's orders that still rest or wait for the matcher."""
    cancelled = []
    for order in Order.objects.filter(pk__in=order_ids, status__in=[OrderStatus.OPEN, OrderStatus.PENDING]).select_related("organisation"):  # nosemgrep: object-by-id-without-owner -- ids of orders this socket placed; order_cancel_request checks the role
        try:
            services.order_cancel_request(user=user, order=order)
        except ServiceError:
            continue  # finished meanwhile, or the user lost the trading role
        cancelled.append(order.pk)
    if cancelled:
        transport.send([{"op": "cancel", "order": pk, "actor": user.pk} for pk in cancelled])
    return len(cancelled)


COMMANDS = {
    "place": order_place_command,
    "cancel": order_cancel_command,
    "amend": order_amend_command,
    "cancel_all": order_cancel_all_command,
}
SERVICE_CODES = {400: "invalid", 403: "permission_denied", 404: "not_found", 409: "conflict"}


def error_frame(request_id, exc: Exception) -> dict:
    """The REST API's error, as a websocket frame: status, a code, a message and the field errors."""
    if isinstance(exc, ServiceError):
        status, code, fields = exc.status_code, SERVICE_CODES.get(exc.status_code, "error"), exc.detail
    elif isinstance(exc, Http404):
        status, code, fields = 404, "not_found", {}
    elif isinstance(exc, drf_exceptions.APIException):
        status, code = exc.status_code, exc.default_code
        detail = exc.detail
        fields = detail if isinstance(detail, dict) else ({"non_field_errors": detail} if isinstance(detail, list) else {})
        if isinstance(exc, drf_exceptions.ValidationError):
            code = "invalid"
        if not fields:
            message = str(detail)
    else:
        status, code, fields = 500, "internal_error", {}
    if fields:
        field, errors = next(iter(fields.items()))
        first = errors[0] if isinstance(errors, list) and errors else errors
        message = f"{field}: {first}" if field != "non_field_errors" else str(first)
    elif status == 404:
        message = str(exc) if str(exc) else "Not found."
    elif status == 500:
        message = "The server failed; the command may or may not have applied. Check your orders."
    return {"type": "error", "request_id": request_id, "status": status, "code": code, "message": message, "fields": fields}
