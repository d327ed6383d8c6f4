"""Call auction: choose the uncrossing price and execute at it (opening and re-opening auctions).

During a call auction the book collects limit orders without matching, so it may be crossed. At
the end, every order that can execute does so at one price ``P``, chosen among valid tick prices as
the price that, in this order of precedence (as on the Shanghai and Shenzhen exchanges):

1. maximises the executable volume ``min(B(P), S(P))``, where ``B(P)`` is the bid quantity priced
   at or above ``P`` and ``S(P)`` the ask quantity priced at or below ``P``;
2. minimises the imbalance ``|B(P) - S(P)|``;
3. is nearest the reference price;
4. is the higher price (a last, arbitrary but fixed, tie-break).

Only prices where ``B`` or ``S`` change (order prices and the ticks either side) and the ticks
around the reference price can win, so those are the candidates; they are not filtered by the
band, since every order was inside the band when it was accepted.

Execution walks both sides in price-time priority, pairing the head bid with the head ask while
the bid is at or above ``P`` and the ask at or below it. Each trade is at ``P``; the order that
arrived earlier is reported as the maker, the later one as the taker (``taker_side`` is the later
order's side). Two orders of one account never trade: the later order's STP mode decides, as in
continuous trading. Because STP can remove orders, the book can still be crossed after one pass;
the uncross then repeats with a new price until it is not. Each pass that trades emits
``UNCROSSED(price, quantity)`` after its trades and level updates.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from typing import TYPE_CHECKING, Any

from .types import STP, CancelReason, Event, EventKind, Side

if TYPE_CHECKING:
    from .book import Book

BUY = Side.BUY
SELL = Side.SELL
E_TRADE = EventKind.TRADE
E_CANCELLED = EventKind.CANCELLED
E_REDUCED = EventKind.REDUCED
E_BOOK = EventKind.BOOK
E_UNCROSSED = EventKind.UNCROSSED
C_STP = CancelReason.STP


def _crossed(book: Book) -> bool:
    return bool(book._bid_px and book._ask_px and book._bid_px[-1] >= -book._ask_px[-1])


def equilibrium(book: Book) -> tuple[int, int, int] | None:
    """``(price, executable_quantity, imbalance)`` for the book as it stands, or None if nothing
    would execute. ``imbalance`` is ``B(P) - S(P)``: positive means bids are left over."""
    if not _crossed(book):
        return None
    bp = book._bid_px  # ascending
    ap = [-k for k in reversed(book._ask_px)]  # ascending
    bl, al = book._bid_lvls, book._ask_lvls
    bsuf = [0] * (len(bp) + 1)  # bsuf[i] = bid quantity at bp[i:]
    for i in range(len(bp) - 1, -1, -1):
        bsuf[i] = bsuf[i + 1] + bl[bp[i]][0]
    apre = [0]  # apre[j] = ask quantity at ap[:j]
    for p in ap:
        apre.append(apre[-1] + al[p][0])
    tick = book._tick
    ref = book._reference
    low, high = ap[0], bp[-1]  # outside [low, high] nothing executes
    cands = {ref // tick * tick, -(-ref // tick) * tick}
    for p in bp + ap:
        if low - tick <= p <= high + tick:
            cands.update((p - tick, p, p + tick))
    best: tuple[tuple[int, int, int, int], int, int] | None = None
    for c in cands:
        if c <= 0:
            continue
        b = bsuf[bisect_left(bp, c)]
        s = apre[bisect_right(ap, c)]
        vol = b if b < s else s
        if not vol:
            continue
        key = (vol, -abs(b - s), -abs(c - ref), c)
        if best is None or key > best[0]:
            best = (key, c, b - s)
    if best is None:
        return None
    return best[1], best[0][0], best[2]


def uncross(book: Book, ev: list[Event]) -> int:
    """Execute the auction; return the total quantity traded. The caller sets the status."""
    total = 0
    while True:
        eq = equilibrium(book)
        if eq is None:
            return total
        price = eq[0]
        traded = _execute(book, price, ev)
        if traded:
            ev.append((E_UNCROSSED, price, traded))
        total += traded


def _head(queue: dict[int, list[Any]]) -> list[Any]:
    return next(iter(queue.values()))


def _reduce(book: Book, rec: list[Any], q: int, touched: dict[tuple[int, int], None]) -> None:
    """Take ``q`` off a record at the head of its level; drop it (and the level) when empty."""
    touched[(rec[4], rec[3])] = None
    rec[0] -= q
    if rec[4] == BUY:
        lvls, keys, key = book._bid_lvls, book._bid_px, rec[3]
    else:
        lvls, keys, key = book._ask_lvls, book._ask_px, -rec[3]
    lvl = lvls[rec[3]]
    lvl[0] -= q
    if rec[0]:
        return
    del book._orders[rec[1]]
    del lvl[1][rec[1]]
    if not lvl[1]:
        del lvls[rec[3]]
        del keys[bisect_left(keys, key)]


def _execute(book: Book, price: int, ev: list[Event]) -> int:
    bpx, apx = book._bid_px, book._ask_px
    bids, asks = book._bid_lvls, book._ask_lvls
    touched: dict[tuple[int, int], None] = {}
    traded = 0
    while bpx and apx and bpx[-1] >= price and -apx[-1] <= price:
        bprice, aprice = bpx[-1], -apx[-1]
        b = _head(bids[bprice][1])
        a = _head(asks[aprice][1])
        maker, taker = (b, a) if b[7] < a[7] else (a, b)
        if b[2] == a[2]:
            stp = taker[6]
            mq, tq = maker[0], taker[0]
            if stp == STP.CANCEL_NEWEST:
                _reduce(book, taker, tq, touched)
                ev.append((E_CANCELLED, taker[1], tq, C_STP))
            elif stp == STP.CANCEL_OLDEST:
                _reduce(book, maker, mq, touched)
                ev.append((E_CANCELLED, maker[1], mq, C_STP))
            elif stp == STP.CANCEL_BOTH:
                _reduce(book, maker, mq, touched)
                _reduce(book, taker, tq, touched)
                ev.append((E_CANCELLED, maker[1], mq, C_STP))
                ev.append((E_CANCELLED, taker[1], tq, C_STP))
            else:  # DECREMENT_AND_CANCEL
                d = mq if mq < tq else tq
                _reduce(book, maker, d, touched)
                _reduce(book, taker, d, touched)
                for rec, q in ((maker, mq), (taker, tq)):
                    if q == d:
                        ev.append((E_CANCELLED, rec[1], d, C_STP))
                    else:
                        ev.append((E_REDUCED, rec[1], d, q - d, C_STP))
            continue
        q = b[0] if b[0] < a[0] else a[0]
        _reduce(book, maker, q, touched)
        _reduce(book, taker, q, touched)
        ev.append((E_TRADE, maker[1], taker[1], price, q, taker[4], maker[0], taker[0], maker[2], taker[2]))
        traded += q
    for side, p in touched:
        lvl = (bids if side == BUY else asks).get(p)
        book._seq = seq = book._seq + 1
        ev.append((E_BOOK, side, p, lvl[0] if lvl is not None else 0, seq))
    return traded
