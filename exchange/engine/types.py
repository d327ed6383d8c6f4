"""Value types of the matching engine: enums, the order, the book configuration, events, commands.

Everything here is plain data. Enums are ``IntEnum`` so that they compare equal to the plain ints a
database row or a JSON message carries, and so that the engine can use them as cheap constants on the
hot path.

Events are plain tuples whose first element is an :class:`EventKind`; the layout of each kind is in
:data:`EVENT_FIELDS` (and in the package docstring). Plain tuples cost about a fifth of a slotted
dataclass to build, and the engine builds two or more per command, so this is where the budget went.
:func:`event_dict` turns one into a readable dict.
"""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple


class Side(enum.IntEnum):
    BUY = 1
    SELL = 2


class OrderType(enum.IntEnum):
    LIMIT = 1
    #: Executes against the book up to a protection price (see :class:`BookConfig`); never rests.
    MARKET = 2


class TimeInForce(enum.IntEnum):
    GTC = 1  #: good till cancelled
    GTD = 2  #: good till ``expires_at`` (expires when a command arrives with ``now >= expires_at``)
    IOC = 3  #: immediate or cancel: whatever does not fill at once is cancelled
    FOK = 4  #: fill or kill: fills wholly at once or is cancelled without touching the book


class STP(enum.IntEnum):
    """Self-trade prevention, taken from the incoming (newest) order. There is no "off": two orders of
    one account never trade with each other."""

    CANCEL_NEWEST = 1  #: cancel the incoming order's remainder; the resting order stays
    CANCEL_OLDEST = 2  #: cancel the resting order and keep matching the incoming one
    CANCEL_BOTH = 3  #: cancel both
    #: reduce both by the smaller open quantity; the one that reaches zero is cancelled, the other
    #: is reduced (``REDUCED`` event) and carries on.
    DECREMENT_AND_CANCEL = 4


class Status(enum.IntEnum):
    CONTINUOUS = 1  #: continuous trading
    AUCTION = 2  #: call auction: orders are collected (the book may cross) until ``uncross``
    HALTED = 3  #: no new orders or amends; cancels and expiry still work


class RejectReason(enum.IntEnum):
    """Why a new order, a cancel or an amend was refused. Nothing in the book changed."""

    INVALID_SIDE = 1
    INVALID_TYPE = 2
    INVALID_TIF = 3  #: e.g. a market order that is not IOC/FOK
    INVALID_PRICE = 4  #: price <= 0 for a limit order
    INVALID_TICK = 5  #: price not a multiple of tick_size
    INVALID_QUANTITY = 6  #: quantity <= 0
    INVALID_LOT = 7  #: quantity not a multiple of lot_size
    BELOW_MIN_QUANTITY = 8  #: quantity < config.min_order_qty
    ABOVE_MAX_QUANTITY = 9  #: quantity > config.max_order_qty
    PRICE_OUTSIDE_BAND = 10  #: price outside the band around the reference price
    INVALID_EXPIRY = 11  #: GTD with expires_at <= now, or expires_at set on a non-GTD order
    INVALID_MIN_QUANTITY = 12  #: min_quantity < 0 or > quantity, or with post-only
    INVALID_STP = 13
    INVALID_POST_ONLY = 14  #: post-only on a market, IOC or FOK order
    DUPLICATE_ORDER_ID = 15  #: an order with this id is resting in the book
    WOULD_TAKE = 16  #: post-only order (or amend of one) would execute on entry
    HALTED = 17  #: the book is halted
    NOT_IN_AUCTION = 18  #: market, IOC, FOK, post-only or min-quantity order during a call auction
    NO_MARKET_PROTECTION = 19  #: market order on a book with neither band nor market protection
    UNKNOWN_ORDER = 20  #: cancel or amend of an order that is not resting
    NO_CHANGE = 21  #: amend that changes nothing
    UNKNOWN_INSTRUMENT = 22  #: engine has no book for the instrument


class CancelReason(enum.IntEnum):
    """Why (part of) an accepted order left the book or never rested."""

    USER = 1  #: cancel command
    CANCEL_ALL = 2  #: cancel_all command for the account
    IOC = 3  #: unfilled remainder of an IOC or market order
    FOK = 4  #: a FOK order that could not fill wholly at once
    MIN_QUANTITY = 5  #: less than min_quantity could execute on entry
    STP = 6  #: self-trade prevention


class EventKind(enum.IntEnum):
    ACCEPTED = 1
    REJECTED = 2
    TRADE = 3
    CANCELLED = 4
    REDUCED = 5
    AMENDED = 6
    EXPIRED = 7
    BOOK = 8
    CANCEL_REJECTED = 9
    AMEND_REJECTED = 10
    STATUS = 11
    UNCROSSED = 12


#: Field names of each event tuple after the leading kind.
EVENT_FIELDS: dict[EventKind, tuple[str, ...]] = {
    EventKind.ACCEPTED: ("order_id",),
    EventKind.REJECTED: ("order_id", "reason"),
    EventKind.TRADE: (
        "maker_id",
        "taker_id",
        "price",
        "quantity",
        "taker_side",
        "maker_remaining",
        "taker_remaining",
        "maker_account",
        "taker_account",
    ),
    EventKind.CANCELLED: ("order_id", "quantity", "reason"),
    EventKind.REDUCED: ("order_id", "quantity", "remaining", "reason"),
    EventKind.AMENDED: ("order_id", "price", "quantity"),
    EventKind.EXPIRED: ("order_id", "quantity"),
    EventKind.BOOK: ("side", "price", "quantity", "seq"),
    EventKind.CANCEL_REJECTED: ("order_id", "reason"),
    EventKind.AMEND_REJECTED: ("order_id", "reason"),
    EventKind.STATUS: ("status",),
    EventKind.UNCROSSED: ("price", "quantity"),
}

#: An event: ``(EventKind, *fields)``; see :data:`EVENT_FIELDS`.
Event = tuple[Any, ...]


def event_dict(event: Event) -> dict[str, Any]:
    """``(EventKind.BOOK, 1, 100, 5, 7)`` -> ``{"kind": "BOOK", "side": 1, "price": 100, ...}``."""
    kind = EventKind(event[0])
    out: dict[str, Any] = {"kind": kind.name}
    out.update(zip(EVENT_FIELDS[kind], (int(v) if isinstance(v, bool) else v for v in event[1:]), strict=False))
    return out


class Order(NamedTuple):
    """A new order. Immutable: the book copies what it needs and never changes it.

    ``price`` is in minor units (fen) per lot and is ignored for market orders; ``quantity`` and
    ``min_quantity`` are in lots. ``expires_at`` is in the same unit as ``now`` and only for GTD.
    """

    order_id: int
    account_id: int
    side: int  # Side
    price: int
    quantity: int
    type: int = OrderType.LIMIT
    tif: int = TimeInForce.GTC
    expires_at: int = 0
    post_only: bool = False
    min_quantity: int = 0
    stp: int = STP.CANCEL_NEWEST


@dataclass(frozen=True, slots=True)
class BookConfig:
    """Static rules of one instrument, in integer units.

    A price is valid if it is a positive multiple of ``tick_size`` inside the band
    ``[band_low, band_high]``: ``reference_price * (10000 -/+ band_bps) / 10000`` rounded inwards
    (``band_bps=None``: no band). A quantity is valid if it is a positive multiple of ``lot_size``
    within ``[min_order_qty, max_order_qty]``.

    A market order executes up to a protection price: the best opposite price moved by
    ``market_protection_bps`` against the taker (rounded towards the best price), and never beyond
    the band. With neither a band nor a protection, market orders are rejected.
    """

    reference_price: int
    tick_size: int = 1
    lot_size: int = 1
    min_order_qty: int = 1
    max_order_qty: int = 1_000_000_000
    band_bps: int | None = None
    market_protection_bps: int | None = None

    def __post_init__(self) -> None:
        if self.tick_size <= 0 or self.lot_size <= 0:
            raise ValueError("tick_size and lot_size must be positive")
        if self.reference_price <= 0:
            raise ValueError("reference_price must be positive")
        if not 0 < self.min_order_qty <= self.max_order_qty:
            raise ValueError("need 0 < min_order_qty <= max_order_qty")
        if self.band_bps is not None and not 0 <= self.band_bps < 10_000:
            raise ValueError("band_bps must be in [0, 10000)")
        if self.market_protection_bps is not None and self.market_protection_bps < 0:
            raise ValueError("market_protection_bps must be >= 0")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --- commands, for Engine.apply and replay logs -------------------------------------------------


class Submit(NamedTuple):
    instrument_id: int
    order: Order
    now: int


class Cancel(NamedTuple):
    instrument_id: int
    order_id: int
    now: int


class CancelAll(NamedTuple):
    instrument_id: int
    account_id: int
    now: int


class Amend(NamedTuple):
    instrument_id: int
    order_id: int
    now: int
    price: int | None = None
    quantity: int | None = None  #: new open (remaining) quantity


class Expire(NamedTuple):
    instrument_id: int
    now: int


class Halt(NamedTuple):
    instrument_id: int
    now: int


class Resume(NamedTuple):
    instrument_id: int
    now: int
    auction: bool = False


class StartAuction(NamedTuple):
    instrument_id: int
    now: int


class Uncross(NamedTuple):
    instrument_id: int
    now: int


class SetReferencePrice(NamedTuple):
    instrument_id: int
    price: int
    now: int


Command = Submit | Cancel | CancelAll | Amend | Expire | Halt | Resume | StartAuction | Uncross | SetReferencePrice
