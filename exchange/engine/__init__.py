"""Suanli matching engine: a deterministic, pure-Python continuous double auction (stdlib only).

One :class:`Book` per instrument is a state machine: a command goes in with the time, a list of
events comes out. The engine never reads a clock, touches a database or the network, and the same
commands always give the same events, so a book can be rebuilt by replay or from a snapshot.
:class:`Engine` holds the books and routes commands by instrument id.

Units
-----
Prices are positive ints in minor units (fen) per lot; quantities are whole lots (ints). ``now``
and ``expires_at`` are ints in one clock unit chosen by the caller; the project uses nanoseconds
since the Unix epoch (``time.time_ns()``). The engine only compares them, so any unit works if it
is used consistently. Time should not go backwards; the engine does not check.

Configuration (:class:`BookConfig`, given to the Book at construction)
-----------------------------------------------------------------------
``reference_price``, ``tick_size``, ``lot_size``, ``min_order_qty``, ``max_order_qty``,
``band_bps`` (price band around the reference price; ``None`` = no band) and
``market_protection_bps`` (how far past the best opposite price a market order may execute;
``None`` = only the band bounds it; with neither, market orders are rejected). The band is
``[ceil(ref*(1-bps/1e4)), floor(ref*(1+bps/1e4))]`` rounded inwards to the tick
(:func:`band_limits`); :meth:`Book.set_reference_price` moves it.

Orders (:class:`Order`, an immutable NamedTuple)
------------------------------------------------
``Order(order_id, account_id, side, price, quantity, type=LIMIT, tif=GTC, expires_at=0,
post_only=False, min_quantity=0, stp=STP.CANCEL_NEWEST)``

* ``type``: ``LIMIT`` or ``MARKET``. A market order must be IOC or FOK; it executes up to the
  protection price (best opposite price moved by ``market_protection_bps``, capped by the band)
  and never rests, so it cannot sweep the book unbounded.
* ``tif``: ``GTC``; ``GTD`` (needs ``expires_at > now``; expires as soon as any command arrives
  with ``now >= expires_at``, or on :meth:`Book.expire`); ``IOC`` (the unfilled rest is cancelled);
  ``FOK`` (fills wholly at once, or is cancelled without touching the book).
* ``post_only``: rejected with ``WOULD_TAKE`` (never repriced) if it would execute on entry; not
  allowed with IOC/FOK/market.
* ``min_quantity``: at least this much must execute on entry, otherwise the whole order is
  cancelled (``MIN_QUANTITY``) without trading; a remainder after that behaves per ``tif``.
* ``stp`` (self-trade prevention; two orders of one account never trade): the *incoming*
  order's mode applies: ``CANCEL_NEWEST`` (the incoming order's rest is cancelled),
  ``CANCEL_OLDEST`` (the resting order is cancelled, matching continues), ``CANCEL_BOTH``,
  ``DECREMENT_AND_CANCEL`` (both are reduced by the smaller quantity; the one reaching zero is
  cancelled, the other gets a ``REDUCED`` event and carries on).

Matching is price-time priority with partial fills; every continuous trade is at the resting
(maker) order's price. Order ids must be unique among resting orders of a book (the matcher
guarantees global uniqueness; the book rejects a duplicate of a resting id).

Commands (Book methods; Engine has the same with ``instrument_id`` first, and :meth:`Engine.apply`
takes the command NamedTuples ``Submit``, ``Cancel``, ``CancelAll``, ``Amend``, ``Expire``, ``Halt``,
``Resume``, ``StartAuction``, ``Uncross``, ``SetReferencePrice``)
-----------------------------------------------------------------------------------------------
* ``submit(order, now)``
* ``cancel(order_id, now)``; ``cancel_all(account_id, now)`` (bids best first, then asks)
* ``amend(order_id, now, price=None, quantity=None)``: ``quantity`` is the new *open* quantity.
  Reducing it at the same price keeps time priority; a new price or a larger quantity loses it
  (the order goes to the back of its new level and, in continuous trading, may execute as an
  incoming order). Checked: tick, band, lot, max quantity; an amend that changes nothing is
  rejected (``NO_CHANGE``).
* ``expire(now)``; ``halt(now)``; ``resume(now, auction=False)``; ``start_auction(now)``;
  ``uncross(now)``; ``set_reference_price(price, now)``
* queries: ``depth(levels)``, ``checksum()``, ``best_bid()``, ``best_ask()``, ``order(id)``,
  ``indicative()`` (auction price, volume, imbalance), ``status``, ``seq``, ``len(book)``;
  ``check_invariants()`` raises AssertionError if the state is inconsistent (tests call it after
  every command).

Status: ``CONTINUOUS``; ``HALTED`` (new orders and amends rejected with ``HALTED``; cancels and
expiry work); ``AUCTION`` (call auction: limit GTC/GTD orders are collected without matching and
the book may cross; market, IOC, FOK, post-only and min-quantity orders are rejected with
``NOT_IN_AUCTION``). ``uncross`` (or ``resume`` into continuous trading) executes everything at one
price that maximises executed volume, then minimises the imbalance, then is nearest the reference
price, then is the higher (see :mod:`exchange.engine.auction`); auction trades are at that price,
the earlier-arrived order is reported as maker.

Events
------
Plain tuples ``(EventKind, *fields)`` (cheaper to build than objects; :func:`event_dict` names
the fields, :data:`EVENT_FIELDS` lists them). Ints and IntEnums compare equal.

=================  ==========================================================================
ACCEPTED           order_id
REJECTED           order_id, reason (RejectReason) -- a new order; nothing changed
TRADE              maker_id, taker_id, price, quantity, taker_side, maker_remaining,
                   taker_remaining, maker_account, taker_account
CANCELLED          order_id, quantity (removed), reason (CancelReason)
REDUCED            order_id, quantity (removed), remaining, reason (STP decrement)
AMENDED            order_id, price, quantity (new open quantity)
EXPIRED            order_id, quantity
BOOK               side, price, quantity (new aggregate at the level, 0 = gone), seq
CANCEL_REJECTED    order_id, reason
AMEND_REJECTED     order_id, reason
STATUS             status (Status)
UNCROSSED          price, quantity (after each auction pass that traded)
=================  ==========================================================================

For a new order: ``ACCEPTED`` or ``REJECTED`` first; then trades and ``BOOK`` events for each level
it took from; then ``CANCELLED`` for a remainder that does not rest, or a ``BOOK`` event for the
level where it rests. Expiries due at ``now`` come before the command's own events.

``seq`` counts ``BOOK`` events per book: each carries the previous one's ``seq + 1``, so a client
that applies them in order to a snapshot (which carries ``seq``) sees any gap.

Reason codes
------------
:class:`RejectReason`: INVALID_SIDE, INVALID_TYPE, INVALID_TIF, INVALID_PRICE, INVALID_TICK,
INVALID_QUANTITY, INVALID_LOT, BELOW_MIN_QUANTITY, ABOVE_MAX_QUANTITY, PRICE_OUTSIDE_BAND,
INVALID_EXPIRY, INVALID_MIN_QUANTITY, INVALID_STP, INVALID_POST_ONLY, DUPLICATE_ORDER_ID,
WOULD_TAKE, HALTED, NOT_IN_AUCTION, NO_MARKET_PROTECTION, UNKNOWN_ORDER, NO_CHANGE,
UNKNOWN_INSTRUMENT. :class:`CancelReason`: USER, CANCEL_ALL, IOC, FOK, MIN_QUANTITY, STP.

Checksum
--------
:meth:`Book.checksum` is ``zlib.crc32`` (unsigned 32-bit) of the ASCII string made of, for
``i`` in 0..9, the i-th best bid as ``"price:quantity"`` (if it exists) then the i-th best ask
likewise, joined by ``":"``. Bids 101x5, 100x3 and an ask 103x2 give
``crc32(b"101:5:103:2:100:3")``; an empty book gives 0. Clients recompute it from their copy.

Snapshot and restore
--------------------
:meth:`Book.snapshot` returns JSON-compatible data: config, status, reference price, ``seq``,
the arrival counter, the checksum and the resting orders as ``[order_id, account_id, side, price,
remaining, expires_at, stp, arrival, post_only]`` (bids best first, then asks best first, each
level in time priority). :meth:`Book.restore` rebuilds an identical book (it gives the same events
for the same later commands) and verifies the checksum; a matcher can also build that list from
its database to load resting orders without generating trades. :meth:`Engine.snapshot` /
:meth:`Engine.restore` do the same for all books.

Speed
-----
See ``bench/engine_bench.py`` and ``bench/RESULTS.md``. The hot path (non-crossing GTC/IOC limit
order, cancel) is inlined in :meth:`Book.submit` and :meth:`Book.cancel`; anything unusual goes
through a general path that validates everything again and names the reason.
"""

from .book import CHECKSUM_DEPTH, Book, band_limits
from .engine import Engine
from .types import (
    EVENT_FIELDS,
    STP,
    Amend,
    BookConfig,
    Cancel,
    CancelAll,
    CancelReason,
    Command,
    Event,
    EventKind,
    Expire,
    Halt,
    Order,
    OrderType,
    RejectReason,
    Resume,
    SetReferencePrice,
    Side,
    StartAuction,
    Status,
    Submit,
    TimeInForce,
    Uncross,
    event_dict,
)

__all__ = [
    "CHECKSUM_DEPTH", "EVENT_FIELDS", "STP", "Amend", "Book", "BookConfig", "Cancel", "CancelAll",
    "CancelReason", "Command", "Engine", "Event", "EventKind", "Expire", "Halt", "Order", "OrderType",
    "RejectReason", "Resume", "SetReferencePrice", "Side", "StartAuction", "Status", "Submit",
    "TimeInForce", "Uncross", "band_limits", "event_dict",
]
