"""Order entry: validate against the instrument's rules, then hand the order to the matcher, which stores it
with its hold in its batch's transaction and matches it (exchange.admission, exchange.matcher). Cancels and
amends are recorded here, then applied by the matcher. Nothing here touches the book."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from decimal import Decimal

from django.db import transaction
from django.utils import timezone

from common.errors import ServiceError
from exchange import risk
from exchange.books import band_fen_per_lot
from exchange.models import (
    FINAL_STATUSES,
    Order,
    OrderStatus,
    OrderType,
    RiskLimit,
    SelfTradePrevention,
    Side,
    TimeInForce,
)
from marketplace.models import Instrument, InstrumentStatus, Listing, MemberRole, Organisation, User

TRADING_ROLES = (MemberRole.ADMIN, MemberRole.TRADER)


class OrderError(ServiceError):
    """An order refused before it reaches the book (HTTP 400 with the field at fault)."""


class OrderConflict(ServiceError):
    status_code = 409
    field = "client_order_id"


@dataclass(frozen=True)
class OrderRequest:
    instrument: Instrument
    side: str
    quantity: int
    client_order_id: str
    type: str = OrderType.LIMIT
    price: Decimal | None = None  # CNY per unit
    time_in_force: str = TimeInForce.GTC
    expires_at: dt.datetime | None = None
    post_only: bool = False
    min_quantity: int = 0
    stp: str = SelfTradePrevention.CANCEL_NEWEST
    listing: Listing | None = None


def _require_trader(user: User, organisation: Organisation) -> None:
    if user.is_regulator or not user.memberships.filter(organisation=organisation, role__in=TRADING_ROLES).exists():
        raise ServiceError("You may not trade for this organisation.", field="organisation", status_code=403)


def _validate(req: OrderRequest, organisation: Organisation, now: dt.datetime) -> int | None:
    """Check the order against the instrument's rules; returns the limit price in fen per lot."""
    inst = req.instrument
    if inst.status == InstrumentStatus.HALTED:
        raise OrderError(f"Trading in {inst.code} is halted.", field="instrument")
    if inst.status != InstrumentStatus.OPEN or inst.gate_closure <= now:
        raise OrderError(f"{inst.code} is not open for trading (status {inst.status}, gate closure {inst.gate_closure:%Y-%m-%d %H:%M %Z}).", field="instrument")
    if req.side == Side.BUY and not organisation.is_buyer:
        raise OrderError("Only buyer organisations may buy.", field="side")
    if req.side == Side.SELL and not organisation.is_supplier:
        raise OrderError("Only supplier organisations may sell.", field="side")
    if not inst.min_order_lots <= req.quantity <= inst.max_order_lots:
        raise OrderError(f"Quantity must be between {inst.min_order_lots} and {inst.max_order_lots} lots.", field="quantity")
    if not 0 <= req.min_quantity <= req.quantity:
        raise OrderError("min_quantity must be between 0 and the quantity.", field="min_quantity")
    if req.type == OrderType.MARKET:
        if req.price is not None:
            raise OrderError("A market order takes no price.", field="price")
        if req.time_in_force not in (TimeInForce.IOC, TimeInForce.FOK):
            raise OrderError("A market order is IOC or FOK: it never rests.", field="time_in_force")
    if req.post_only and (req.type == OrderType.MARKET or req.time_in_force in (TimeInForce.IOC, TimeInForce.FOK)):
        raise OrderError("Post-only orders rest: they cannot be market, IOC or FOK.", field="post_only")
    if req.post_only and req.min_quantity:
        raise OrderError("Post-only orders cannot have a minimum quantity.", field="min_quantity")
    if req.time_in_force == TimeInForce.GTD:
        if req.expires_at is None:
            raise OrderError("A GTD order needs expires_at.", field="expires_at")
        if req.expires_at <= now:
            raise OrderError("expires_at is in the past.", field="expires_at")
    elif req.expires_at is not None:
        raise OrderError("expires_at is only for GTD orders.", field="expires_at")
    if req.type == OrderType.MARKET:
        return None
    if req.price is None:
        raise OrderError("A limit order needs a price.", field="price")
    if req.price <= 0 or req.price % inst.tick_size != 0:
        raise OrderError(f"The price must be a positive multiple of the tick, {inst.tick_size} CNY.", field="price")
    price = inst.price_to_fen_per_lot(req.price)
    low, high = band_fen_per_lot(inst)
    if price is None or not low <= price <= high:
        lo_cny = Decimal(low) / 100 / inst.lot_size
        hi_cny = Decimal(high) / 100 / inst.lot_size
        raise OrderError(
            f"The price is outside today's band {lo_cny.quantize(inst.tick_size)}-{hi_cny.quantize(inst.tick_size)} CNY "
            f"({inst.price_band_bps / 100:g}% around the reference {inst.reference_price}).",
            field="price",
        )
    return price


def order_command(*, user: User, organisation: Organisation, request: OrderRequest, now: dt.datetime | None = None) -> dict:
    """Validate an order where no database is needed (fields, tick, lot, band, side against the organisation's
    kind) and build the matcher's `place` command. Membership, funds, capacity, the instrument's status and
    idempotency are checked by the matcher, which stores the order (exchange.admission)."""
    if user.is_regulator:
        raise ServiceError("Regulators have read-only access.", status_code=403)
    price = _validate(request, organisation, now or timezone.now())
    return {
        "op": "place", "instrument": request.instrument.pk, "organisation": organisation.pk, "user": user.pk,
        "client_order_id": request.client_order_id, "side": str(request.side), "type": str(request.type),
        "time_in_force": str(request.time_in_force), "price_fen_per_lot": price, "quantity": request.quantity,
        "min_quantity": request.min_quantity, "post_only": request.post_only, "stp": str(request.stp),
        "expires_at": request.expires_at.isoformat() if request.expires_at else None,
        "listing": request.listing.pk if isinstance(request.listing, Listing) else request.listing,
    }


@dataclass(frozen=True)
class Placement:
    """What order entry answers: the order after matching (`state`, from the matcher's reply) and whether
    this call created it; state None when the matcher did not answer in time (the command is queued and
    will be processed: ask again by client_order_id)."""

    state: dict | None
    created: bool


def order_place(*, user: User, organisation: Organisation, request: OrderRequest, now: dt.datetime | None = None, timeout: float | None = None) -> Placement:
    """Place an order: validated here, stored with its hold (buyer: funds for price x quantity plus the
    maximum fee; seller: lots on a listing covering the window) by the matcher in its batch's transaction,
    then matched. Idempotent on (organisation, client_order_id): a retry with the same terms returns the
    stored order with created=False; different terms under the same id are a conflict (409)."""
    return order_submit(order_command(user=user, organisation=organisation, request=request, now=now), timeout=timeout)


def order_submit(command: dict, *, timeout: float | None = None, gate=None) -> Placement:
    """Send a `place` command (order_command's) to the matcher and read its answer: order_place's second half,
    for a caller that counts what is refused before it apart (REST: the order rate, with `gate`, a
    transport.Gate, counted in the round trip that queues the order)."""
    from exchange import transport

    return placement_from_replies(transport.send([command], timeout=timeout, gate=gate))


def placement_from_replies(replies: list[dict] | None) -> Placement:
    """The matcher's answer to one place command, or the refusal it carries as an exception."""
    if replies is None:
        return Placement(state=None, created=False)
    reply = replies[0]
    error = reply.get("error")
    if error is not None:
        if not isinstance(error, dict):
            raise ServiceError("The matcher failed on this order; it was not stored. Try again.", status_code=503)
        raise (OrderConflict if error["status"] == 409 else OrderError)(error["message"], field=error["field"], status_code=error["status"])
    return Placement(state=reply["state"], created=reply["created"])


def order_cancel_request(*, user: User, order: Order, now: dt.datetime | None = None) -> Order:
    """Record the cancel durably; the matcher applies it (also after a restart)."""
    _require_trader(user, order.organisation)
    with transaction.atomic():
        order = Order.objects.select_for_update().get(pk=order.pk)
        if order.status in FINAL_STATUSES:
            raise OrderError(f"Order {order.pk} is already {order.status}.", field="status")
        if order.cancel_requested_at is None:
            order.cancel_requested_at = now or timezone.now()
            order.save(update_fields=["cancel_requested_at", "updated_at"])
    return order


def order_amend_prepare(*, user: User, order: Order, price: Decimal | None = None, quantity: int | None = None, now: dt.datetime | None = None) -> tuple[Order, int | None, int | None]:
    """Validate an amend. Returns (order, new price in fen per lot or None, new open quantity or None) for
    the matcher, which makes whatever reservation the amend needs (more funds held, more capacity) in the
    batch that applies it, and refuses it if they are short (`amend_refused`). `quantity` is the new total
    quantity, filled part included."""
    now = now or timezone.now()
    _require_trader(user, order.organisation)
    order = Order.objects.select_related("instrument").get(pk=order.pk)
    inst = order.instrument
    if order.status != OrderStatus.OPEN or order.cancel_requested_at:
        raise OrderError(f"Only open orders can be amended; order {order.pk} is {order.status}.", field="status")
    if order.type != OrderType.LIMIT:
        raise OrderError("Only limit orders rest and can be amended.", field="type")
    if price is None and quantity is None:
        raise OrderError("Give a new price, a new quantity, or both.", field="non_field_errors")
    switch = risk.kill_switch_for(order.organisation_id, order.instrument_id)
    if switch is not None:  # the matcher refuses it too; this says why
        raise ServiceError(risk.kill_message(switch.scope, switch.reason, inst.code), status_code=403)
    new_price = None
    if price is not None:
        req = OrderRequest(instrument=inst, side=order.side, quantity=order.quantity, client_order_id="-", price=price)
        new_price = _validate(req, order.organisation, now)
    new_open = None
    if quantity is not None:
        if quantity <= order.filled_quantity:
            raise OrderError(f"The new quantity must exceed the {order.filled_quantity} lots already filled.", field="quantity")
        if quantity > inst.max_order_lots:
            raise OrderError(f"Quantity must be at most {inst.max_order_lots} lots.", field="quantity")
        new_open = quantity - order.filled_quantity
    open_lots = new_open if new_open is not None else order.open_quantity
    most = risk.limits_of(RiskLimit.objects.filter(organisation_id=order.organisation_id).first(), risk.default_limits()).max_order_notional_fen
    notional = (new_price or order.price_fen_per_lot) * (order.filled_quantity + open_lots)
    if most is not None and notional > most:
        raise OrderError(f"Order notional limit of {risk.cny(most)} CNY exceeded (this order {risk.cny(notional)} CNY).", field="quantity")
    return order, new_price, new_open


def amend_refused(reply: dict) -> OrderError:
    """The matcher's refusal of an amend (its reply's `rejected`), as the field-level error the API answers."""
    if reply.get("message"):
        return OrderError(reply["message"], field=reply.get("field") or "non_field_errors")
    return OrderError(f"The book refused the amend: {reply['rejected']}.", field="non_field_errors")


def orders_open_for(*, organisation: Organisation, instrument: Instrument | None = None):
    qs = Order.objects.filter(organisation=organisation, status__in=[OrderStatus.OPEN, OrderStatus.PENDING])
    return qs.filter(instrument=instrument) if instrument else qs

