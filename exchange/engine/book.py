"""One instrument's limit order book: validation, continuous matching, amend, STP, expiry, status.

Data layout (chosen by profiling, see bench/RESULTS.md):

* a resting order is a list ``[remaining, order_id, account_id, price, side, expires_at, stp,
  arrival, post_only]`` (indices ``_R_*``), so a fill is one item store and no object is built;
* a price level is a list ``[total_quantity, {order_id: record}]``: the dict keeps insertion order,
  so it is the FIFO queue, and a cancel anywhere in the queue is one C-level ``del`` (an earlier
  deque with lazy deletion needed periodic compaction, whose cost showed up at the 99th
  percentile of cancel latency);
* the prices of each side are kept in an ascending ``list`` of keys, bids as ``price`` and asks as
  ``-price``, so the best price of either side is ``keys[-1]`` and removing the best level is
  ``list.pop()``; other insertions and removals are ``bisect`` plus a short C ``memmove``;
* GTD orders are also in a heap of ``(expires_at, order_id)`` with lazy deletion.

Auction logic lives in :mod:`exchange.engine.auction`; this module calls into it.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from heapq import heapify, heappop, heappush
from typing import Any
from zlib import crc32

from . import auction as _auction
from .types import (
    STP,
    BookConfig,
    CancelReason,
    Event,
    EventKind,
    Order,
    OrderType,
    RejectReason,
    Side,
    Status,
    TimeInForce,
)

# Hot-path constants as plain module globals (LOAD_GLOBAL is cached; attribute lookups on the
# enum classes are not).
BUY = Side.BUY
SELL = Side.SELL
LIMIT = OrderType.LIMIT
MARKET = OrderType.MARKET
GTC = TimeInForce.GTC
GTD = TimeInForce.GTD
IOC = TimeInForce.IOC
FOK = TimeInForce.FOK
CONTINUOUS = Status.CONTINUOUS
AUCTION = Status.AUCTION
HALTED = Status.HALTED
CANCEL_NEWEST = STP.CANCEL_NEWEST
CANCEL_OLDEST = STP.CANCEL_OLDEST
CANCEL_BOTH = STP.CANCEL_BOTH
DECREMENT_AND_CANCEL = STP.DECREMENT_AND_CANCEL

E_ACCEPTED = EventKind.ACCEPTED
E_REJECTED = EventKind.REJECTED
E_TRADE = EventKind.TRADE
E_CANCELLED = EventKind.CANCELLED
E_REDUCED = EventKind.REDUCED
E_AMENDED = EventKind.AMENDED
E_EXPIRED = EventKind.EXPIRED
E_BOOK = EventKind.BOOK
E_CANCEL_REJECTED = EventKind.CANCEL_REJECTED
E_AMEND_REJECTED = EventKind.AMEND_REJECTED
E_STATUS = EventKind.STATUS

C_USER = CancelReason.USER
C_CANCEL_ALL = CancelReason.CANCEL_ALL
C_IOC = CancelReason.IOC
C_FOK = CancelReason.FOK
C_MIN_QUANTITY = CancelReason.MIN_QUANTITY
C_STP = CancelReason.STP

R = RejectReason

# Order record indices.
_R_QTY = 0
_R_ID = 1
_R_ACCOUNT = 2
_R_PRICE = 3
_R_SIDE = 4
_R_EXPIRES = 5
_R_STP = 6
_R_ARRIVAL = 7
_R_POST = 8

_NO_LIMIT = (1 << 63) - 1
_VALID_TIF = frozenset((GTC, GTD, IOC, FOK))
_VALID_STP = frozenset((CANCEL_NEWEST, CANCEL_OLDEST, CANCEL_BOTH, DECREMENT_AND_CANCEL))

#: Levels per side that :meth:`Book.checksum` covers.
CHECKSUM_DEPTH = 10

SNAPSHOT_VERSION = 1


def band_limits(config: BookConfig, reference_price: int) -> tuple[int, int]:
    """The inclusive band ``(low, high)`` of valid limit prices, rounded inwards to the tick."""
    tick = config.tick_size
    if config.band_bps is None:
        return tick, _NO_LIMIT
    bps = config.band_bps
    low = -((-reference_price * (10_000 - bps)) // 10_000)  # ceil
    high = reference_price * (10_000 + bps) // 10_000  # floor
    low = -((-low) // tick) * tick  # up to the tick
    high = high // tick * tick
    return max(low, tick), high


class Book:
    """The order book of one instrument. Every command returns the list of events it caused.

    ``now`` is an int in the caller's clock unit (the project uses nanoseconds since the Unix epoch,
    ``time.time_ns()``); the book only compares it with ``expires_at``. Before any command is
    applied, GTD orders with ``expires_at <= now`` are expired, and their events come first.
    """

    __slots__ = (
        "config",
        "_tick",
        "_lot",
        "_min_qty",
        "_max_qty",
        "_lo",
        "_hi",
        "_reference",
        "_status",
        "_seq",
        "_arrival",
        "_orders",
        "_bid_lvls",
        "_ask_lvls",
        "_bid_px",
        "_ask_px",
        "_gtd",
        "_market_ok",
    )

    def __init__(self, config: BookConfig, status: Status = Status.CONTINUOUS) -> None:
        self.config = config
        self._tick = config.tick_size
        self._lot = config.lot_size
        self._min_qty = config.min_order_qty
        self._max_qty = config.max_order_qty
        self._reference = config.reference_price
        self._lo, self._hi = band_limits(config, config.reference_price)
        self._status = Status(status)
        self._seq = 0  # number of BOOK events so far
        self._arrival = 0  # priority stamp of the newest record
        self._orders: dict[int, list[Any]] = {}
        self._bid_lvls: dict[int, list[Any]] = {}
        self._ask_lvls: dict[int, list[Any]] = {}
        self._bid_px: list[int] = []  # ascending prices; best bid is [-1]
        self._ask_px: list[int] = []  # ascending negated prices; best ask is -[-1]
        self._gtd: list[tuple[int, int]] = []
        self._market_ok = config.band_bps is not None or config.market_protection_bps is not None

    # ------------------------------------------------------------------ queries

    @property
    def status(self) -> Status:
        return self._status

    @property
    def seq(self) -> int:
        """Sequence number of the last BOOK event (0 before the first)."""
        return self._seq

    @property
    def reference_price(self) -> int:
        return self._reference

    @property
    def band(self) -> tuple[int, int]:
        return self._lo, self._hi

    def __len__(self) -> int:
        return len(self._orders)

    def __contains__(self, order_id: int) -> bool:
        return order_id in self._orders

    def best_bid(self) -> int | None:
        return self._bid_px[-1] if self._bid_px else None

    def best_ask(self) -> int | None:
        return -self._ask_px[-1] if self._ask_px else None

    def order(self, order_id: int) -> dict[str, Any] | None:
        """The resting order's open state, or None if it is not resting."""
        rec = self._orders.get(order_id)
        if rec is None:
            return None
        return {
            "order_id": rec[_R_ID],
            "account_id": rec[_R_ACCOUNT],
            "side": Side(rec[_R_SIDE]),
            "price": rec[_R_PRICE],
            "remaining": rec[_R_QTY],
            "expires_at": rec[_R_EXPIRES],
            "stp": STP(rec[_R_STP]),
            "post_only": rec[_R_POST],
            "arrival": rec[_R_ARRIVAL],
        }

    def depth(self, levels: int | None = None) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        """``(bids, asks)``, each a list of ``(price, total_quantity)`` from the best price out."""
        bid_keys = self._bid_px[::-1] if levels is None else self._bid_px[: -levels - 1 : -1]
        ask_keys = self._ask_px[::-1] if levels is None else self._ask_px[: -levels - 1 : -1]
        bl, al = self._bid_lvls, self._ask_lvls
        return [(p, bl[p][0]) for p in bid_keys], [(-k, al[-k][0]) for k in ask_keys]

    def checksum(self, depth: int = CHECKSUM_DEPTH) -> int:
        """CRC32 of the top ``depth`` (default 10) levels, as an unsigned 32-bit int.

        The input is ASCII: for ``i`` in ``0 .. depth-1``, the ``i``-th best bid as
        ``"{price}:{quantity}"`` if it exists, then the ``i``-th best ask likewise if it exists; the
        pieces are joined with ``":"``. Example: bids 101x5, 100x3 and ask 103x2 give
        ``crc32(b"101:5:103:2:100:3")``; an empty book gives ``crc32(b"") == 0``. This is the
        Kraken/OKX scheme with integer prices in minor units and quantities in lots.
        """
        bids, asks = self.depth(depth)
        parts: list[str] = []
        for i in range(max(len(bids), len(asks))):
            if i < len(bids):
                parts.append(f"{bids[i][0]}:{bids[i][1]}")
            if i < len(asks):
                parts.append(f"{asks[i][0]}:{asks[i][1]}")
        return crc32(":".join(parts).encode("ascii"))

    # ------------------------------------------------------------------ order entry

    def submit(self, order: Order, now: int) -> list[Event]:
        """Validate and process a new order.

        Events: ``REJECTED`` alone; or ``ACCEPTED`` then any of ``TRADE`` / ``BOOK`` (levels taken),
        ``CANCELLED`` (STP, IOC/market remainder, FOK, min quantity), ``REDUCED`` (STP
        decrement), and a ``BOOK`` for the level where the remainder rests.
        """
        oid, acct, side, price, qty, otype, tif, exp, post, minq, stp = order
        ev: list[Event] | None = None  # built only when needed: most orders return a literal
        gtd = self._gtd
        if gtd and gtd[0][0] <= now:
            ev = []
            self._expire(now, ev)
        # Fast path: a plain GTC or IOC limit order, or an IOC market order, in continuous trading
        # that passes every check. Anything else goes to _submit_general, which checks everything
        # again and names the reason; the two must agree on every order the guards let through.
        if (
            (tif != GTC and tif != IOC)
            or post
            or minq
            or exp
            or self._status != CONTINUOUS
            or qty < self._min_qty
            or qty > self._max_qty
            or qty % self._lot
            or stp < 1
            or stp > 4
            or oid in self._orders
        ):
            return self._submit_general(order, now, [] if ev is None else ev)
        if otype == LIMIT:
            if price <= 0 or price % self._tick or price < self._lo or price > self._hi:
                return self._submit_general(order, now, [] if ev is None else ev)
            limit = price
        elif otype != MARKET or tif != IOC or not self._market_ok:
            return self._submit_general(order, now, [] if ev is None else ev)
        else:
            limit = 0  # set below from the best opposite price
        if side == BUY:
            opx = self._ask_px
            if otype == MARKET and opx:
                limit = self._market_limit(BUY, -opx[-1])
            crossing = opx and -opx[-1] <= limit
            lvls = self._bid_lvls
            spx = self._bid_px
            key = price
        elif side == SELL:
            opx = self._bid_px
            if otype == MARKET and opx:
                limit = self._market_limit(SELL, opx[-1])
            crossing = opx and opx[-1] >= limit
            lvls = self._ask_lvls
            spx = self._ask_px
            key = -price
        else:
            return self._submit_general(order, now, [] if ev is None else ev)
        if crossing:
            if ev is None:
                ev = [(E_ACCEPTED, oid)]
            else:
                ev.append((E_ACCEPTED, oid))
            qty = self._take(oid, acct, side, limit, qty, stp, ev)
            if not qty:
                return ev
            if tif == IOC:
                ev.append((E_CANCELLED, oid, qty, C_IOC))
                return ev
        elif tif == IOC:
            if ev is None:
                return [(E_ACCEPTED, oid), (E_CANCELLED, oid, qty, C_IOC)]
            ev.append((E_ACCEPTED, oid))
            ev.append((E_CANCELLED, oid, qty, C_IOC))
            return ev
        self._arrival = arrival = self._arrival + 1
        rec = [qty, oid, acct, price, side, 0, stp, arrival, False]
        self._orders[oid] = rec
        lvl = lvls.get(price)
        if lvl is None:
            lvls[price] = [qty, {oid: rec}]
            insort(spx, key)
            total = qty
        else:
            total = lvl[0] + qty
            lvl[0] = total
            lvl[1][oid] = rec
        self._seq = seq = self._seq + 1
        if ev is None:
            return [(E_ACCEPTED, oid), (E_BOOK, side, price, total, seq)]
        if not crossing:
            ev.append((E_ACCEPTED, oid))
        ev.append((E_BOOK, side, price, total, seq))
        return ev

    def _validate_new(self, order: Order, now: int) -> int:
        oid, acct, side, price, qty, otype, tif, exp, post, minq, stp = order
        if side != BUY and side != SELL:
            return R.INVALID_SIDE
        if tif not in _VALID_TIF:
            return R.INVALID_TIF
        if otype == LIMIT:
            if price <= 0:
                return R.INVALID_PRICE
            if price % self._tick:
                return R.INVALID_TICK
            if price < self._lo or price > self._hi:
                return R.PRICE_OUTSIDE_BAND
        elif otype == MARKET:
            if tif != IOC and tif != FOK:
                return R.INVALID_TIF
            if post:
                return R.INVALID_POST_ONLY
            if self.config.band_bps is None and self.config.market_protection_bps is None:
                return R.NO_MARKET_PROTECTION
        else:
            return R.INVALID_TYPE
        if qty <= 0:
            return R.INVALID_QUANTITY
        if qty % self._lot:
            return R.INVALID_LOT
        if qty < self._min_qty:
            return R.BELOW_MIN_QUANTITY
        if qty > self._max_qty:
            return R.ABOVE_MAX_QUANTITY
        if tif == GTD:
            if exp <= now:
                return R.INVALID_EXPIRY
        elif exp:
            return R.INVALID_EXPIRY
        if post and (tif == IOC or tif == FOK):
            return R.INVALID_POST_ONLY
        if minq < 0 or minq > qty or (minq and post):
            return R.INVALID_MIN_QUANTITY
        if stp not in _VALID_STP:
            return R.INVALID_STP
        if oid in self._orders:
            return R.DUPLICATE_ORDER_ID
        return 0

    def _submit_general(self, order: Order, now: int, ev: list[Event]) -> list[Event]:
        oid, acct, side, price, qty, otype, tif, exp, post, minq, stp = order
        reason = self._validate_new(order, now)
        if not reason:
            status = self._status
            if status == HALTED:
                reason = R.HALTED
            elif status == AUCTION and (otype != LIMIT or tif == IOC or tif == FOK or post or minq):
                reason = R.NOT_IN_AUCTION
        if reason:
            ev.append((E_REJECTED, oid, RejectReason(reason)))
            return ev
        if self._status == AUCTION:
            ev.append((E_ACCEPTED, oid))
            self._rest(oid, acct, side, price, qty, exp, stp, bool(post), ev)
            return ev

        # Continuous trading. Work out the limit up to which the order may execute.
        if side == BUY:
            best = -self._ask_px[-1] if self._ask_px else None
        else:
            best = self._bid_px[-1] if self._bid_px else None
        if otype == MARKET:
            limit = self._market_limit(side, best) if best is not None else 0
        else:
            limit = price
        crosses = best is not None and (best <= limit if side == BUY else best >= limit)
        if post and crosses:
            ev.append((E_REJECTED, oid, R.WOULD_TAKE))
            return ev
        ev.append((E_ACCEPTED, oid))
        need = qty if tif == FOK else minq
        if need and (not crosses or self._fillable(side, limit, acct, qty, stp, need) < need):
            ev.append((E_CANCELLED, oid, qty, C_FOK if tif == FOK else C_MIN_QUANTITY))
            return ev
        if crosses:
            qty = self._take(oid, acct, side, limit, qty, stp, ev)
        if qty:
            if otype == MARKET or tif == IOC or tif == FOK:
                ev.append((E_CANCELLED, oid, qty, C_IOC))
            else:
                self._rest(oid, acct, side, price, qty, exp, stp, bool(post), ev)
        return ev

    def _market_limit(self, side: int, best: int) -> int:
        """The worst price a market order may reach: the protection price, capped by the band."""
        prot = self.config.market_protection_bps
        if side == BUY:
            limit = best + best * prot // 10_000 if prot is not None else _NO_LIMIT
            return min(limit, self._hi)
        limit = best - best * prot // 10_000 if prot is not None else 0
        return max(limit, self._lo)

    def _fillable(self, side: int, limit: int, acct: int, qty: int, stp: int, need: int) -> int:
        """Dry run of _take: how much would fill at once (stops early once ``need`` is reached)."""
        if side == BUY:
            lvls, keys, sign = self._ask_lvls, self._ask_px, -1
        else:
            lvls, keys, sign = self._bid_lvls, self._bid_px, 1
        lim_key = sign * limit
        filled = 0
        rem = qty
        for key in reversed(keys):
            if key < lim_key:
                break
            for m in lvls[sign * key][1].values():
                mq = m[0]
                if m[2] == acct:
                    if stp == CANCEL_OLDEST:
                        continue
                    if stp == DECREMENT_AND_CANCEL:
                        rem -= min(rem, mq)
                        if not rem:
                            return filled
                        continue
                    return filled  # CANCEL_NEWEST / CANCEL_BOTH end the incoming order
                fill = mq if mq < rem else rem
                filled += fill
                rem -= fill
                if filled >= need or not rem:
                    return filled
        return filled

    def _take(self, oid: int, acct: int, side: int, limit: int, rem: int, stp: int, ev: list[Event]) -> int:
        """Match an incoming order against the opposite side up to ``limit``; return what is left.

        The incoming order is not in the book. Trades are at the resting order's price. STP follows
        the incoming order's mode; when it ends the incoming order, 0 is returned.
        """
        if side == BUY:
            olvls = self._ask_lvls
            opx = self._ask_px
            lim_key = -limit
            oside = SELL
            sign = -1
        else:
            olvls = self._bid_lvls
            opx = self._bid_px
            lim_key = limit
            oside = BUY
            sign = 1
        orders = self._orders
        while opx:
            key = opx[-1]
            if key < lim_key:
                break
            price = sign * key
            lvl = olvls[price]
            queue = lvl[1]
            total = before = lvl[0]
            gone = []  # makers that left the queue; deleted after the iteration
            for m in queue.values():
                mq = m[0]
                if m[2] == acct:
                    if stp == CANCEL_NEWEST:
                        ev.append((E_CANCELLED, oid, rem, C_STP))
                        rem = 0
                    elif stp == DECREMENT_AND_CANCEL and mq > rem:
                        m[0] = mq - rem
                        total -= rem
                        ev.append((E_REDUCED, m[1], rem, mq - rem, C_STP))
                        ev.append((E_CANCELLED, oid, rem, C_STP))
                        rem = 0
                    else:  # the resting order goes
                        gone.append(m[1])
                        del orders[m[1]]
                        total -= mq
                        ev.append((E_CANCELLED, m[1], mq, C_STP))
                        if stp == CANCEL_BOTH:
                            ev.append((E_CANCELLED, oid, rem, C_STP))
                            rem = 0
                        elif stp == DECREMENT_AND_CANCEL:
                            rem -= mq
                            if rem:
                                ev.append((E_REDUCED, oid, mq, rem, C_STP))
                            else:
                                ev.append((E_CANCELLED, oid, mq, C_STP))
                elif mq <= rem:
                    moid = m[1]
                    gone.append(moid)
                    del orders[moid]
                    total -= mq
                    rem -= mq
                    ev.append((E_TRADE, moid, oid, price, mq, side, 0, rem, m[2], acct))
                else:
                    m[0] = mq = mq - rem
                    total -= rem
                    ev.append((E_TRADE, m[1], oid, price, rem, side, mq, 0, m[2], acct))
                    rem = 0
                if not rem:
                    break
            for g in gone:
                del queue[g]
            if total != before:
                self._seq = seq = self._seq + 1
                ev.append((E_BOOK, oside, price, total, seq))
            if queue:  # the level outlived the incoming order, so rem is 0
                lvl[0] = total
                break
            del olvls[price]
            opx.pop()
            if not rem:
                break
        return rem

    def _rest(
        self,
        oid: int,
        acct: int,
        side: int,
        price: int,
        qty: int,
        exp: int,
        stp: int,
        post: bool,
        ev: list[Event] | None,
        arrival: int | None = None,
        push_expiry: bool = True,
    ) -> None:
        """Put a record at the back of its level. ``ev=None``: no BOOK event (restore)."""
        if arrival is None:
            self._arrival = arrival = self._arrival + 1
        rec = [qty, oid, acct, price, side, exp, stp, arrival, post]
        self._orders[oid] = rec
        if side == BUY:
            lvls, spx, key = self._bid_lvls, self._bid_px, price
        else:
            lvls, spx, key = self._ask_lvls, self._ask_px, -price
        lvl = lvls.get(price)
        if lvl is None:
            lvls[price] = [qty, {oid: rec}]
            insort(spx, key)
            total = qty
        else:
            total = lvl[0] + qty
            lvl[0] = total
            lvl[1][oid] = rec
        if exp and push_expiry:
            heappush(self._gtd, (exp, oid))
        if ev is not None:
            self._seq = seq = self._seq + 1
            ev.append((E_BOOK, side, price, total, seq))

    def _unlink(self, rec: list[Any], ev: list[Event] | None) -> None:
        """Take a record (already popped from ``_orders``) out of its level; emit its BOOK event."""
        qty = rec[0]
        price = rec[3]
        side = rec[4]
        if side == BUY:
            lvls, spx, key = self._bid_lvls, self._bid_px, price
        else:
            lvls, spx, key = self._ask_lvls, self._ask_px, -price
        lvl = lvls[price]
        queue = lvl[1]
        del queue[rec[1]]
        if queue:
            total = lvl[0] - qty
            lvl[0] = total
        else:
            total = 0
            del lvls[price]
            if spx[-1] == key:
                spx.pop()
            else:
                del spx[bisect_left(spx, key)]
        if ev is not None:
            self._seq = seq = self._seq + 1
            ev.append((E_BOOK, side, price, total, seq))

    # ------------------------------------------------------------------ cancel / amend / expire

    def cancel(self, order_id: int, now: int) -> list[Event]:
        """Cancel a resting order: ``CANCELLED`` (reason USER) and ``BOOK``, or ``CANCEL_REJECTED``."""
        ev: list[Event] | None = None
        gtd = self._gtd
        if gtd and gtd[0][0] <= now:
            ev = []
            self._expire(now, ev)
        rec = self._orders.pop(order_id, None)
        if rec is None:
            if ev is None:
                return [(E_CANCEL_REJECTED, order_id, R.UNKNOWN_ORDER)]
            ev.append((E_CANCEL_REJECTED, order_id, R.UNKNOWN_ORDER))
            return ev
        qty = rec[0]
        # _unlink, inlined: cancels are a quarter of the traffic.
        price = rec[3]
        side = rec[4]
        if side == BUY:
            lvls, spx, key = self._bid_lvls, self._bid_px, price
        else:
            lvls, spx, key = self._ask_lvls, self._ask_px, -price
        lvl = lvls[price]
        queue = lvl[1]
        del queue[rec[1]]
        if queue:
            total = lvl[0] - qty
            lvl[0] = total
        else:
            total = 0
            del lvls[price]
            if spx[-1] == key:
                spx.pop()
            else:
                del spx[bisect_left(spx, key)]
        self._seq = seq = self._seq + 1
        if ev is not None:
            ev.append((E_CANCELLED, order_id, qty, C_USER))
            ev.append((E_BOOK, side, price, total, seq))
            return ev
        return [(E_CANCELLED, order_id, qty, C_USER), (E_BOOK, side, price, total, seq)]

    def cancel_all(self, account_id: int, now: int) -> list[Event]:
        """Cancel every resting order of the account, bids best first, then asks best first, each
        level in queue order: ``CANCELLED`` (reason CANCEL_ALL) and ``BOOK`` per order. O(book)."""
        ev: list[Event] = []
        gtd = self._gtd
        if gtd and gtd[0][0] <= now:
            self._expire(now, ev)
        victims = [rec for rec in self._iter_records() if rec[_R_ACCOUNT] == account_id]
        orders = self._orders
        for rec in victims:
            del orders[rec[_R_ID]]
            ev.append((E_CANCELLED, rec[_R_ID], rec[_R_QTY], C_CANCEL_ALL))
            self._unlink(rec, ev)
        return ev

    def amend(
        self, order_id: int, now: int, price: int | None = None, quantity: int | None = None
    ) -> list[Event]:
        """Change a resting order's price and/or open quantity.

        ``quantity`` is the new *open* (remaining) quantity. Reducing it at the same price keeps
        the order's place in the queue; a new price or a larger quantity re-enters the order at the
        back of its new level, and in continuous trading it may then execute as an incoming order
        (an amend of a post-only order that would execute is rejected with WOULD_TAKE). Limits
        checked: tick, band, lot, ``max_order_qty`` (not ``min_order_qty``: reducing below it is
        allowed). Events: ``AMENDED`` then ``BOOK`` (and trades etc.), or ``AMEND_REJECTED``.
        """
        ev: list[Event] = []
        gtd = self._gtd
        if gtd and gtd[0][0] <= now:
            self._expire(now, ev)
        rec = self._orders.get(order_id)
        reason = 0
        if rec is None:
            reason = R.UNKNOWN_ORDER
        elif self._status == HALTED:
            reason = R.HALTED
        else:
            old_q, old_p = rec[0], rec[3]
            new_p = old_p if price is None else price
            new_q = old_q if quantity is None else quantity
            if new_p != old_p:
                if new_p <= 0:
                    reason = R.INVALID_PRICE
                elif new_p % self._tick:
                    reason = R.INVALID_TICK
                elif new_p < self._lo or new_p > self._hi:
                    reason = R.PRICE_OUTSIDE_BAND
            if reason:
                pass
            elif new_q <= 0:
                reason = R.INVALID_QUANTITY
            elif new_q % self._lot:
                reason = R.INVALID_LOT
            elif new_q > self._max_qty:
                reason = R.ABOVE_MAX_QUANTITY
            elif new_p == old_p and new_q == old_q:
                reason = R.NO_CHANGE
        if reason:
            ev.append((E_AMEND_REJECTED, order_id, RejectReason(reason)))
            return ev
        assert rec is not None  # nosec B101 # narrows the type for the checker; rec is set when reason is empty
        side = rec[4]
        if new_p == old_p and new_q < old_q:
            rec[0] = new_q
            lvl = (self._bid_lvls if side == BUY else self._ask_lvls)[old_p]
            lvl[0] = total = lvl[0] - (old_q - new_q)
            ev.append((E_AMENDED, order_id, new_p, new_q))
            self._seq = seq = self._seq + 1
            ev.append((E_BOOK, side, old_p, total, seq))
            return ev
        crosses = False
        if self._status == CONTINUOUS:
            if side == BUY:
                crosses = bool(self._ask_px) and -self._ask_px[-1] <= new_p
            else:
                crosses = bool(self._bid_px) and self._bid_px[-1] >= new_p
            if crosses and rec[_R_POST]:
                ev.append((E_AMEND_REJECTED, order_id, R.WOULD_TAKE))
                return ev
        ev.append((E_AMENDED, order_id, new_p, new_q))
        del self._orders[order_id]
        self._unlink(rec, ev)
        acct, exp, stp, post = rec[_R_ACCOUNT], rec[_R_EXPIRES], rec[_R_STP], rec[_R_POST]
        rem = new_q
        if crosses:
            rem = self._take(order_id, acct, side, new_p, rem, stp, ev)
        if rem:
            self._rest(order_id, acct, side, new_p, rem, exp, stp, post, ev, push_expiry=False)
        elif exp:
            pass  # its heap entry is now stale and will be skipped
        return ev

    def expire(self, now: int) -> list[Event]:
        """Expire GTD orders with ``expires_at <= now``: ``EXPIRED`` and ``BOOK`` per order, in
        ``(expires_at, order_id)`` order."""
        ev: list[Event] = []
        self._expire(now, ev)
        return ev

    def _expire(self, now: int, ev: list[Event]) -> None:
        gtd = self._gtd
        orders = self._orders
        while gtd and gtd[0][0] <= now:
            exp, oid = heappop(gtd)
            rec = orders.get(oid)
            if rec is None or rec[_R_EXPIRES] != exp:
                continue  # filled, cancelled, or the id was reused
            del orders[oid]
            ev.append((E_EXPIRED, oid, rec[0]))
            self._unlink(rec, ev)

    # ------------------------------------------------------------------ status and auction

    def halt(self, now: int) -> list[Event]:
        """Stop trading: new orders and amends are rejected (HALTED); cancels still work."""
        ev: list[Event] = []
        self._expire(now, ev)
        if self._status != HALTED:
            self._status = HALTED
            ev.append((E_STATUS, HALTED))
        return ev

    def start_auction(self, now: int) -> list[Event]:
        """Enter a call auction: limit orders are collected without matching until :meth:`uncross`."""
        ev: list[Event] = []
        self._expire(now, ev)
        if self._status != AUCTION:
            self._status = AUCTION
            ev.append((E_STATUS, AUCTION))
        return ev

    def resume(self, now: int, auction: bool = False) -> list[Event]:
        """Leave a halt into a (re-opening) call auction, or straight into continuous trading. In
        the latter case a book left crossed by an interrupted auction is uncrossed first."""
        ev: list[Event] = []
        self._expire(now, ev)
        if auction:
            if self._status != AUCTION:
                self._status = AUCTION
                ev.append((E_STATUS, AUCTION))
            return ev
        if self._status != CONTINUOUS:
            _auction.uncross(self, ev)
            self._status = CONTINUOUS
            ev.append((E_STATUS, CONTINUOUS))
        return ev

    def uncross(self, now: int) -> list[Event]:
        """End a call auction: execute at the single uncrossing price (see
        :mod:`exchange.engine.auction`), then trade continuously. Events: ``TRADE``... ``BOOK``...
        ``UNCROSSED(price, quantity)``, then ``STATUS(CONTINUOUS)``. No events outside an auction."""
        ev: list[Event] = []
        self._expire(now, ev)
        if self._status != AUCTION:
            return ev
        _auction.uncross(self, ev)
        self._status = CONTINUOUS
        ev.append((E_STATUS, CONTINUOUS))
        return ev

    def indicative(self) -> tuple[int, int, int] | None:
        """During an auction: ``(price, executable_quantity, imbalance)`` if it uncrossed now."""
        return _auction.equilibrium(self)

    def set_reference_price(self, price: int, now: int) -> list[Event]:
        """Move the band. Resting orders outside the new band stay; new ones are checked."""
        if price <= 0:
            raise ValueError("reference price must be positive")
        ev: list[Event] = []
        self._expire(now, ev)
        self._reference = price
        self._lo, self._hi = band_limits(self.config, price)
        return ev

    # ------------------------------------------------------------------ snapshot / restore

    def _iter_records(self):  # type: ignore[no-untyped-def]
        """Live records: bids best price first, then asks best first; each level in queue order."""
        for p in reversed(self._bid_px):
            yield from self._bid_lvls[p][1].values()
        for k in reversed(self._ask_px):
            yield from self._ask_lvls[-k][1].values()

    def snapshot(self) -> dict[str, Any]:
        """The whole state as JSON-compatible data; :meth:`restore` gives back an identical book.

        ``orders`` lists resting orders as ``[order_id, account_id, side, price, remaining,
        expires_at, stp, arrival, post_only]``: bids from the best price down, then asks from the
        best price up, each level in time priority. A matcher may also build this list itself
        from its database (arrival = any increasing number in priority order) to load a book
        without generating trades.
        """
        return {
            "version": SNAPSHOT_VERSION,
            "config": self.config.to_dict(),
            "status": int(self._status),
            "reference_price": self._reference,
            "seq": self._seq,
            "arrival": self._arrival,
            "orders": [
                [r[1], r[2], int(r[4]), r[3], r[0], r[5], int(r[6]), r[7], bool(r[8])]
                for r in self._iter_records()
            ],
            "checksum": self.checksum(),
        }

    @classmethod
    def restore(cls, snapshot: dict[str, Any]) -> Book:
        """Rebuild a book from :meth:`snapshot` output. Raises ValueError if it is inconsistent."""
        if snapshot.get("version") != SNAPSHOT_VERSION:
            raise ValueError(f"unsupported snapshot version {snapshot.get('version')!r}")
        book = cls(BookConfig(**snapshot["config"]), Status(snapshot["status"]))
        book._reference = snapshot["reference_price"]
        book._lo, book._hi = band_limits(book.config, book._reference)
        book._seq = snapshot["seq"]
        book._arrival = snapshot["arrival"]
        for oid, acct, side, price, qty, exp, stp, arrival, post in snapshot["orders"]:
            if oid in book._orders or qty <= 0 or side not in (BUY, SELL):
                raise ValueError(f"bad order in snapshot: {oid}")
            book._rest(oid, acct, Side(side), price, qty, exp, STP(stp), bool(post), None, arrival, False)
        book._gtd = [(r[5], r[1]) for r in book._orders.values() if r[5]]
        heapify(book._gtd)
        if "checksum" in snapshot and snapshot["checksum"] != book.checksum():
            raise ValueError("snapshot checksum does not match its orders")
        book.check_invariants()
        return book

    # ------------------------------------------------------------------ invariants

    def check_invariants(self) -> None:
        """Raise AssertionError if the book's internal state is inconsistent. Explicit raises, not `assert`:
        from_snapshot relies on this check, and `python -O` would strip asserts."""
        seen = 0
        arrivals: dict[int, int] = {}
        heap_entries = set(self._gtd)
        for side, lvls, keys, sign in (
            (BUY, self._bid_lvls, self._bid_px, 1),
            (SELL, self._ask_lvls, self._ask_px, -1),
        ):
            if keys != sorted(keys):
                raise AssertionError("price keys not sorted")
            if len(set(keys)) != len(keys):
                raise AssertionError("duplicate price key")
            if {sign * k for k in keys} != set(lvls):
                raise AssertionError("price keys and levels differ")
            for price, (total, queue) in lvls.items():
                live = list(queue.values())
                if not live:
                    raise AssertionError(f"level {price} is empty")
                if list(queue) != [r[1] for r in live]:
                    raise AssertionError(f"level {price}: keys and records differ")
                if total != sum(r[0] for r in live):
                    raise AssertionError(f"level {price}: total {total} wrong")
                for r in live:
                    if r[0] <= 0 or r[0] % self._lot:
                        raise AssertionError(f"order {r[1]}: bad quantity {r[0]}")
                    if r[3] != price or r[4] != side:
                        raise AssertionError(f"order {r[1]} on the wrong level")
                    if self._orders.get(r[1]) is not r:
                        raise AssertionError(f"order {r[1]} not indexed")
                    if r[7] > self._arrival:
                        raise AssertionError(f"order {r[1]}: arrival stamp {r[7]} is ahead of the book's {self._arrival}")
                    arrivals[r[1]] = r[7]
                    if r[5] and (r[5], r[1]) not in heap_entries:
                        raise AssertionError(f"GTD order {r[1]} not in heap")
                seen += len(live)
                prev = 0
                for r in live:  # time priority
                    if r[7] <= prev:
                        raise AssertionError(f"level {price}: priority out of order")
                    prev = r[7]
        if seen != len(self._orders):
            raise AssertionError("order index holds records not in the book")
        if len(set(arrivals.values())) != len(arrivals):
            raise AssertionError("duplicate arrival stamps")
        if self._status == CONTINUOUS and self._bid_px and self._ask_px and self._bid_px[-1] >= -self._ask_px[-1]:
            raise AssertionError("book crossed at rest")
