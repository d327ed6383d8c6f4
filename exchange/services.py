"""Order entry: validate against the instrument, store the order and its hold in one transaction, then hand
it to the matcher. Nothing here touches the book: the matcher is its only writer."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from decimal import ROUND_FLOOR, Decimal

from django.db import IntegrityError, transaction
from django.db.models import F, Sum
from django.utils import timezone

from common.errors import ServiceError
from exchange.books import band_fen_per_lot
from exchange.models import (
    FINAL_STATUSES,
    CapacityHold,
    Order,
    OrderStatus,
    OrderType,
    SelfTradePrevention,
    Side,
    TimeInForce,
)
from ledger import services as ledger
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


def max_fee_fen(*, notional_fen: int, instrument: Instrument) -> int:
    """The most fees an order of this notional can be charged: each role's running total is rounded half up
    once, so the sum of the two never exceeds the whole rounded up plus one fen."""
    bps = max(instrument.maker_fee_bps, instrument.taker_fee_bps)
    return -((-notional_fen * bps) // 10_000) + (1 if bps else 0)


def buyer_hold_fen(*, price_fen_per_lot: int, open_lots: int, instrument: Instrument) -> int:
    notional = price_fen_per_lot * open_lots
    return notional + max_fee_fen(notional_fen=notional, instrument=instrument)


def listing_capacity_lots(listing: Listing, instrument: Instrument) -> int:
    """Whole lots of the instrument's product that the listing can deliver in its window."""
    units = listing.units_per_hour * instrument.window_hours
    return int((units / instrument.lot_size).to_integral_value(rounding=ROUND_FLOOR))


def listing_free_lots(listing: Listing, instrument: Instrument) -> int:
    used = CapacityHold.objects.filter(listing=listing, instrument=instrument).aggregate(
        n=Sum(F("lots") - F("released_lots"))
    )["n"] or 0
    return listing_capacity_lots(listing, instrument) - used


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


def _same_request(order: Order, req: OrderRequest, price: int | None) -> bool:
    return (
        order.instrument_id == req.instrument.pk and order.side == req.side and order.type == req.type
        and order.quantity == req.quantity and order.price_fen_per_lot == price
        and order.time_in_force == req.time_in_force and order.expires_at == req.expires_at
        and order.post_only == req.post_only and order.min_quantity == req.min_quantity and order.stp == req.stp
    )


def order_place(*, user: User, organisation: Organisation, request: OrderRequest, now: dt.datetime | None = None) -> tuple[Order, bool]:
    """Store a pending order with its hold (buyer: funds for price x quantity plus the maximum fee; seller:
    lots on a listing that covers the window). Idempotent on (organisation, client_order_id): a retry of the
    same order returns it with created=False; a different order under the same id is a conflict."""
    now = now or timezone.now()
    _require_trader(user, organisation)
    try:
        with transaction.atomic():
            return _order_place(user, organisation, request, now)
    except IntegrityError:
        # A concurrent retry stored the same client order id first: answer as a replay.
        with transaction.atomic():
            return _order_place(user, organisation, request, now)


def _order_place(user: User, organisation: Organisation, req: OrderRequest, now: dt.datetime) -> tuple[Order, bool]:
    existing = Order.objects.filter(organisation=organisation, client_order_id=req.client_order_id).first()
    if existing is not None:
        price = req.instrument.price_to_fen_per_lot(req.price) if req.price is not None else None
        if _same_request(existing, req, price):
            return existing, False
        raise OrderConflict(f"client_order_id {req.client_order_id!r} is already used by order {existing.pk} with different terms.")
    price = _validate(req, organisation, now)
    inst = req.instrument
    hold = listing = None
    if req.side == Side.SELL:
        listing = _reserve_capacity(organisation, inst, req.quantity, req.listing)  # locks the listing
    else:
        # The hold comes first so the order row is written once, with it. Its reference is the order's own
        # unique key (organisation, client order id).
        hold_price = price if price is not None else band_fen_per_lot(inst)[1]
        amount = buyer_hold_fen(price_fen_per_lot=hold_price, open_lots=req.quantity, instrument=inst)
        hold = ledger.hold_place(
            organisation=organisation, amount_fen=amount, reference=f"order:{organisation.pk}:{req.client_order_id}",
            memo=f"order {req.client_order_id} on {inst.code}", new_reference=True,
        )
    order = Order.objects.create(
        instrument=inst, organisation=organisation, user=user, client_order_id=req.client_order_id, side=req.side,
        type=req.type, time_in_force=req.time_in_force, price_fen_per_lot=price, quantity=req.quantity,
        open_quantity=req.quantity, min_quantity=req.min_quantity, post_only=req.post_only, stp=req.stp,
        expires_at=req.expires_at, hold=hold, listing=listing,
    )
    if listing is not None:
        CapacityHold.objects.create(listing=listing, order=order, instrument=inst, lots=req.quantity)
    return order, True


def _eligible_listings(organisation: Organisation, inst: Instrument):
    return Listing.objects.filter(
        supplier=organisation, product_id=inst.product_id, is_active=True,
        available_from__lte=inst.delivery_start, available_until__gte=inst.delivery_end,
    ).select_related("device_model", "product").order_by("pk")


def _reserve_capacity(organisation: Organisation, inst: Instrument, lots: int, wanted: Listing | None) -> Listing:
    """Pick (and lock) a listing with `lots` free for the instrument's window."""
    candidates = _eligible_listings(organisation, inst)
    if wanted is not None:
        candidates = candidates.filter(pk=wanted.pk)
        if not candidates.exists():
            raise OrderError("That listing does not offer this product for the whole delivery window.", field="listing")
    free_total = 0
    for listing in candidates.select_for_update(of=("self",)):
        free = listing_free_lots(listing, inst)
        if free >= lots:
            return listing
        free_total += max(free, 0)
    if not candidates.exists():
        raise OrderError(f"You have no active listing of {inst.product.code} covering {inst.code}'s delivery window.", field="quantity")
    raise OrderError(f"Not enough listed capacity: at most {free_total} lots free on one listing for this window.", field="quantity")


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
    """Validate an amend and extend the hold it needs. Returns (order, new price in fen per lot or None,
    new open quantity or None) for the matcher. `quantity` is the new total quantity, filled part included."""
    now = now or timezone.now()
    _require_trader(user, order.organisation)
    with transaction.atomic():
        order = Order.objects.select_for_update(of=("self",)).select_related("instrument", "hold").get(pk=order.pk)
        inst = order.instrument
        if order.status != OrderStatus.OPEN or order.cancel_requested_at:
            raise OrderError(f"Only open orders can be amended; order {order.pk} is {order.status}.", field="status")
        if order.type != OrderType.LIMIT:
            raise OrderError("Only limit orders rest and can be amended.", field="type")
        if price is None and quantity is None:
            raise OrderError("Give a new price, a new quantity, or both.", field="non_field_errors")
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
        if order.side == Side.BUY:
            need = buyer_hold_fen(price_fen_per_lot=new_price or order.price_fen_per_lot, open_lots=open_lots, instrument=inst)
            short = need - order.hold.remaining_fen
            if short > 0:
                # Keyed by the hold's size before the increase, so a retried amend does not reserve twice.
                key = f"order:{order.pk}:increase:{order.hold.amount_fen}:{short}"
                ledger.hold_increase(hold=order.hold, amount_fen=short, idempotency_key=key)
        elif new_open is not None:
            cap = CapacityHold.objects.select_for_update().get(order=order)
            extra = new_open - cap.open_lots
            if extra > 0:
                listing = Listing.objects.select_for_update().get(pk=cap.listing_id)
                if listing_free_lots(listing, inst) < extra:
                    raise OrderError("Not enough listed capacity for the larger quantity.", field="quantity")
                CapacityHold.objects.filter(pk=cap.pk).update(lots=F("lots") + extra)
    return order, new_price, new_open


def orders_open_for(*, organisation: Organisation, instrument: Instrument | None = None):
    qs = Order.objects.filter(organisation=organisation, status__in=[OrderStatus.OPEN, OrderStatus.PENDING])
    return qs.filter(instrument=instrument) if instrument else qs

