"""Unit tests of the order book: each order type, STP mode, amend rule, band and auction case, with
the exact events expected. ``check_invariants()`` runs after every command (see ``Harness``)."""

from __future__ import annotations

import zlib
from typing import Any

import pytest

from exchange.engine import (
    STP,
    Book,
    BookConfig,
    CancelReason,
    EventKind,
    Order,
    OrderType,
    RejectReason,
    Side,
    Status,
    TimeInForce,
    band_limits,
    event_dict,
)

BUY, SELL = Side.BUY, Side.SELL
ACCEPTED, REJECTED, TRADE = EventKind.ACCEPTED, EventKind.REJECTED, EventKind.TRADE
CANCELLED, REDUCED, AMENDED = EventKind.CANCELLED, EventKind.REDUCED, EventKind.AMENDED
EXPIRED, BOOK, STATUS, UNCROSSED = EventKind.EXPIRED, EventKind.BOOK, EventKind.STATUS, EventKind.UNCROSSED
CANCEL_REJECTED, AMEND_REJECTED = EventKind.CANCEL_REJECTED, EventKind.AMEND_REJECTED
R, C = RejectReason, CancelReason
GTC, GTD, IOC, FOK = TimeInForce.GTC, TimeInForce.GTD, TimeInForce.IOC, TimeInForce.FOK
MARKET = OrderType.MARKET


class Harness:
    """A book whose every command is followed by check_invariants()."""

    def __init__(self, **cfg: Any) -> None:
        status = cfg.pop("status", Status.CONTINUOUS)
        cfg.setdefault("reference_price", 100)
        self.book = Book(BookConfig(**cfg), status)

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.book, name)
        if not callable(attr) or name.startswith("_"):
            return attr

        def checked(*args: Any, **kwargs: Any) -> Any:
            out = attr(*args, **kwargs)
            self.book.check_invariants()
            return out

        return checked

    def buy(self, oid: int, price: int, qty: int, now: int = 0, acct: int | None = None, **kw: Any) -> list:
        return self.submit(Order(oid, oid if acct is None else acct, BUY, price, qty, **kw), now)

    def sell(self, oid: int, price: int, qty: int, now: int = 0, acct: int | None = None, **kw: Any) -> list:
        return self.submit(Order(oid, oid if acct is None else acct, SELL, price, qty, **kw), now)


def trade(maker: int, taker: int, price: int, qty: int, taker_side: int, m_rem: int, t_rem: int, m_acct: int | None = None, t_acct: int | None = None) -> tuple:
    return (TRADE, maker, taker, price, qty, taker_side, m_rem, t_rem,
            maker if m_acct is None else m_acct, taker if t_acct is None else t_acct)


# ------------------------------------------------------------------------------- limit orders


def test_resting_limit_order_is_accepted_and_publishes_its_level() -> None:
    h = Harness()
    assert h.buy(1, 99, 5) == [(ACCEPTED, 1), (BOOK, BUY, 99, 5, 1)]
    assert h.buy(2, 99, 3) == [(ACCEPTED, 2), (BOOK, BUY, 99, 8, 2)]
    assert h.sell(3, 101, 4) == [(ACCEPTED, 3), (BOOK, SELL, 101, 4, 3)]
    assert h.depth() == ([(99, 8)], [(101, 4)])
    assert (h.best_bid(), h.best_ask(), h.seq, len(h.book)) == (99, 101, 3, 3)


def test_trades_at_the_maker_price_in_price_then_time_priority() -> None:
    h = Harness()
    h.sell(1, 101, 2)
    h.sell(2, 100, 2)
    h.sell(3, 100, 2)
    assert h.buy(4, 102, 5) == [
        (ACCEPTED, 4),
        trade(2, 4, 100, 2, BUY, 0, 3),
        trade(3, 4, 100, 2, BUY, 0, 1),
        (BOOK, SELL, 100, 0, 4),
        trade(1, 4, 101, 1, BUY, 1, 0),
        (BOOK, SELL, 101, 1, 5),
    ]
    assert h.depth() == ([], [(101, 1)])


def test_partial_fill_rests_the_remainder() -> None:
    h = Harness()
    h.buy(1, 100, 3)
    assert h.sell(2, 99, 5) == [
        (ACCEPTED, 2),
        trade(1, 2, 100, 3, SELL, 0, 2),
        (BOOK, BUY, 100, 0, 2),
        (BOOK, SELL, 99, 2, 3),
    ]
    assert h.order(2)["remaining"] == 2


def test_cancel_and_unknown_cancel() -> None:
    h = Harness()
    h.buy(1, 99, 5)
    h.buy(2, 99, 1)
    assert h.cancel(1, 0) == [(CANCELLED, 1, 5, C.USER), (BOOK, BUY, 99, 1, 3)]
    assert h.cancel(1, 0) == [(CANCEL_REJECTED, 1, R.UNKNOWN_ORDER)]
    assert h.cancel(2, 0) == [(CANCELLED, 2, 1, C.USER), (BOOK, BUY, 99, 0, 4)]
    assert h.depth() == ([], [])


def test_cancel_all_cancels_only_that_account_in_book_order() -> None:
    h = Harness()
    h.buy(1, 98, 1, acct=7)
    h.buy(2, 99, 2, acct=7)
    h.buy(3, 99, 3, acct=8)
    h.sell(4, 101, 4, acct=7)
    assert h.cancel_all(7, 0) == [
        (CANCELLED, 2, 2, C.CANCEL_ALL), (BOOK, BUY, 99, 3, 5),
        (CANCELLED, 1, 1, C.CANCEL_ALL), (BOOK, BUY, 98, 0, 6),
        (CANCELLED, 4, 4, C.CANCEL_ALL), (BOOK, SELL, 101, 0, 7),
    ]
    assert h.depth() == ([(99, 3)], [])
    assert h.cancel_all(7, 0) == []


# ------------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("order", "reason"),
    [
        (Order(1, 1, 3, 100, 2), R.INVALID_SIDE),
        (Order(1, 1, BUY, 100, 2, type=9), R.INVALID_TYPE),
        (Order(1, 1, BUY, 100, 2, tif=9), R.INVALID_TIF),
        (Order(1, 1, BUY, 0, 2), R.INVALID_PRICE),
        (Order(1, 1, BUY, 101, 2), R.INVALID_TICK),
        (Order(1, 1, BUY, 110, 2), R.PRICE_OUTSIDE_BAND),
        (Order(1, 1, BUY, 90, 2), R.PRICE_OUTSIDE_BAND),
        (Order(1, 1, BUY, 100, 0), R.INVALID_QUANTITY),
        (Order(1, 1, BUY, 100, 3), R.INVALID_LOT),
        (Order(1, 1, BUY, 100, 2), R.BELOW_MIN_QUANTITY),
        (Order(1, 1, BUY, 100, 102), R.ABOVE_MAX_QUANTITY),
        (Order(1, 1, BUY, 100, 4, tif=GTD, expires_at=5), R.INVALID_EXPIRY),
        (Order(1, 1, BUY, 100, 4, expires_at=50), R.INVALID_EXPIRY),
        (Order(1, 1, BUY, 100, 4, min_quantity=6), R.INVALID_MIN_QUANTITY),
        (Order(1, 1, BUY, 100, 4, min_quantity=2, post_only=True), R.INVALID_MIN_QUANTITY),
        (Order(1, 1, BUY, 100, 4, post_only=True, tif=IOC), R.INVALID_POST_ONLY),
        (Order(1, 1, BUY, 0, 4, type=MARKET, tif=IOC, post_only=True), R.INVALID_POST_ONLY),
        (Order(1, 1, BUY, 0, 4, type=MARKET), R.INVALID_TIF),
        (Order(1, 1, BUY, 100, 4, stp=0), R.INVALID_STP),
        (Order(9, 1, BUY, 100, 4), R.DUPLICATE_ORDER_ID),
    ],
)
def test_invalid_orders_are_rejected_with_the_reason_and_change_nothing(order: Order, reason: int) -> None:
    # tick 5, lot 2, min 4, max 100, band +-5% of 100 -> [95, 105]
    h = Harness(tick_size=5, lot_size=2, min_order_qty=4, max_order_qty=100, band_bps=500)
    h.buy(9, 95, 4)
    before = h.snapshot()
    assert h.submit(order, 10) == [(REJECTED, 1 if order.order_id == 1 else 9, reason)]
    assert h.snapshot() == before


def test_band_is_rounded_inwards_to_the_tick() -> None:
    cfg = BookConfig(reference_price=1003, tick_size=5, band_bps=1000)
    assert band_limits(cfg, 1003) == (905, 1100)  # 902.7 -> 905, 1103.3 -> 1100
    assert band_limits(BookConfig(reference_price=100), 100) == (1, (1 << 63) - 1)


def test_market_order_needs_a_band_or_a_protection() -> None:
    h = Harness()
    assert h.submit(Order(1, 1, BUY, 0, 1, type=MARKET, tif=IOC), 0) == [(REJECTED, 1, R.NO_MARKET_PROTECTION)]


def test_set_reference_price_moves_the_band() -> None:
    h = Harness(band_bps=1000)
    assert h.band == (90, 110)
    h.set_reference_price(200, 0)
    assert (h.band, h.reference_price) == ((180, 220), 200)
    assert h.buy(1, 100, 1) == [(REJECTED, 1, R.PRICE_OUTSIDE_BAND)]


# ------------------------------------------------------------------------------- time in force


def test_ioc_fills_what_it_can_and_never_rests() -> None:
    h = Harness()
    h.sell(1, 100, 2)
    assert h.buy(2, 100, 5, tif=IOC) == [
        (ACCEPTED, 2),
        trade(1, 2, 100, 2, BUY, 0, 3),
        (BOOK, SELL, 100, 0, 2),
        (CANCELLED, 2, 3, C.IOC),
    ]
    assert h.buy(3, 99, 5, tif=IOC) == [(ACCEPTED, 3), (CANCELLED, 3, 5, C.IOC)]
    assert len(h.book) == 0


def test_fok_fills_wholly_across_levels_or_not_at_all() -> None:
    h = Harness()
    h.sell(1, 100, 2)
    h.sell(2, 101, 2)
    before = h.snapshot()
    assert h.buy(3, 101, 5, tif=FOK) == [(ACCEPTED, 3), (CANCELLED, 3, 5, C.FOK)]
    assert h.buy(4, 100, 3, tif=FOK) == [(ACCEPTED, 4), (CANCELLED, 4, 3, C.FOK)]
    assert h.snapshot() == before
    assert h.buy(5, 101, 4, tif=FOK) == [
        (ACCEPTED, 5),
        trade(1, 5, 100, 2, BUY, 0, 2),
        (BOOK, SELL, 100, 0, 3),
        trade(2, 5, 101, 2, BUY, 0, 0),
        (BOOK, SELL, 101, 0, 4),
    ]


@pytest.mark.parametrize(
    ("stp", "fills"),
    [
        (STP.CANCEL_NEWEST, False),  # meets its own order after 2 lots: would stop short
        (STP.CANCEL_BOTH, False),
        (STP.DECREMENT_AND_CANCEL, False),  # the decrement alone makes it less than whole
        (STP.CANCEL_OLDEST, True),  # own order is cancelled, and there is enough behind it
    ],
)
def test_fok_counts_what_stp_would_do(stp: STP, fills: bool) -> None:
    h = Harness()
    h.sell(1, 100, 2, acct=1)
    h.sell(2, 100, 2, acct=9)  # same account as the FOK
    h.sell(3, 101, 3, acct=3)
    before = h.snapshot()
    ev = h.buy(4, 101, 5, acct=9, tif=FOK, stp=stp)
    if fills:
        assert [e for e in ev if e[0] == TRADE] == [
            trade(1, 4, 100, 2, BUY, 0, 3, 1, 9), trade(3, 4, 101, 3, BUY, 0, 0, 3, 9)
        ]
        assert (CANCELLED, 2, 2, C.STP) in ev
    else:
        assert ev == [(ACCEPTED, 4), (CANCELLED, 4, 5, C.FOK)]
        assert h.snapshot() == before


def test_gtd_expires_when_a_later_command_arrives() -> None:
    h = Harness()
    h.buy(1, 99, 5, now=10, tif=GTD, expires_at=20)
    h.buy(2, 98, 1, now=10, tif=GTD, expires_at=30)
    assert h.sell(3, 101, 1, now=19) == [(ACCEPTED, 3), (BOOK, SELL, 101, 1, 3)]
    # expiry events come first, then the command's own
    assert h.cancel(3, 20) == [
        (EXPIRED, 1, 5), (BOOK, BUY, 99, 0, 4),
        (CANCELLED, 3, 1, C.USER), (BOOK, SELL, 101, 0, 5),
    ]
    assert h.expire(29) == []
    assert h.expire(30) == [(EXPIRED, 2, 1), (BOOK, BUY, 98, 0, 6)]


def test_gtd_order_filled_before_its_expiry_does_not_expire_later() -> None:
    h = Harness()
    h.buy(1, 99, 5, tif=GTD, expires_at=20)
    h.sell(2, 99, 5)
    assert h.expire(25) == []


# ------------------------------------------------------------------------------- market orders


def test_market_order_stops_at_the_protection_price_and_cancels_the_rest() -> None:
    h = Harness(market_protection_bps=500)  # best ask 100 -> may go up to 105
    h.sell(1, 100, 1)
    h.sell(2, 105, 1)
    h.sell(3, 106, 1)
    assert h.submit(Order(4, 4, BUY, 0, 5, type=MARKET, tif=IOC), 0) == [
        (ACCEPTED, 4),
        trade(1, 4, 100, 1, BUY, 0, 4),
        (BOOK, SELL, 100, 0, 4),
        trade(2, 4, 105, 1, BUY, 0, 3),
        (BOOK, SELL, 105, 0, 5),
        (CANCELLED, 4, 3, C.IOC),
    ]
    assert h.depth() == ([], [(106, 1)])


def test_market_order_is_bounded_by_the_band() -> None:
    h = Harness(band_bps=1000)  # [90, 110]
    h.buy(1, 91, 1)
    h.buy(2, 90, 1)
    h.set_reference_price(110, 0)  # band now [99, 121]: 91 and 90 rest outside it
    assert h.submit(Order(3, 3, SELL, 0, 2, type=MARKET, tif=IOC), 0) == [(ACCEPTED, 3), (CANCELLED, 3, 2, C.IOC)]


def test_market_order_on_an_empty_side_is_cancelled_and_market_fok_is_all_or_nothing() -> None:
    h = Harness(band_bps=1000)
    assert h.submit(Order(1, 1, BUY, 0, 5, type=MARKET, tif=IOC), 0) == [(ACCEPTED, 1), (CANCELLED, 1, 5, C.IOC)]
    h.sell(2, 101, 2)
    assert h.submit(Order(3, 3, BUY, 0, 5, type=MARKET, tif=FOK), 0) == [(ACCEPTED, 3), (CANCELLED, 3, 5, C.FOK)]
    assert h.submit(Order(4, 4, BUY, 0, 2, type=MARKET, tif=FOK), 0)[1] == trade(2, 4, 101, 2, BUY, 0, 0)


# ------------------------------------------------------------------------------- post-only, min qty


def test_post_only_rests_or_is_rejected_never_repriced() -> None:
    h = Harness()
    h.sell(1, 101, 1)
    assert h.buy(2, 100, 1, post_only=True) == [(ACCEPTED, 2), (BOOK, BUY, 100, 1, 2)]
    assert h.buy(3, 101, 1, post_only=True) == [(REJECTED, 3, R.WOULD_TAKE)]
    assert h.depth() == ([(100, 1)], [(101, 1)])
    assert h.amend(2, 0, price=101) == [(AMEND_REJECTED, 2, R.WOULD_TAKE)]


def test_minimum_quantity_on_entry() -> None:
    h = Harness()
    h.sell(1, 100, 2)
    h.sell(2, 101, 1)
    before = h.snapshot()
    assert h.buy(3, 101, 6, min_quantity=4) == [(ACCEPTED, 3), (CANCELLED, 3, 6, C.MIN_QUANTITY)]
    assert h.buy(4, 99, 6, min_quantity=1) == [(ACCEPTED, 4), (CANCELLED, 4, 6, C.MIN_QUANTITY)]
    assert h.snapshot() == before
    assert h.buy(5, 101, 6, min_quantity=3) == [
        (ACCEPTED, 5),
        trade(1, 5, 100, 2, BUY, 0, 4),
        (BOOK, SELL, 100, 0, 3),
        trade(2, 5, 101, 1, BUY, 0, 3),
        (BOOK, SELL, 101, 0, 4),
        (BOOK, BUY, 101, 3, 5),  # the remainder rests as a normal GTC order
    ]


# ------------------------------------------------------------------------------- self-trade prevention


def stp_book() -> Harness:
    h = Harness()
    h.sell(1, 100, 5, acct=7)
    return h


def test_stp_cancel_newest() -> None:
    h = stp_book()
    assert h.buy(2, 100, 3, acct=7, stp=STP.CANCEL_NEWEST) == [(ACCEPTED, 2), (CANCELLED, 2, 3, C.STP)]
    assert h.depth() == ([], [(100, 5)])


def test_stp_cancel_oldest_then_rests() -> None:
    h = stp_book()
    assert h.buy(2, 100, 3, acct=7, stp=STP.CANCEL_OLDEST) == [
        (ACCEPTED, 2), (CANCELLED, 1, 5, C.STP), (BOOK, SELL, 100, 0, 2), (BOOK, BUY, 100, 3, 3)
    ]


def test_stp_cancel_both() -> None:
    h = stp_book()
    assert h.buy(2, 100, 3, acct=7, stp=STP.CANCEL_BOTH) == [
        (ACCEPTED, 2), (CANCELLED, 1, 5, C.STP), (CANCELLED, 2, 3, C.STP), (BOOK, SELL, 100, 0, 2)
    ]
    assert len(h.book) == 0


def test_stp_decrement_and_cancel_smaller_incoming() -> None:
    h = stp_book()
    assert h.buy(2, 100, 3, acct=7, stp=STP.DECREMENT_AND_CANCEL) == [
        (ACCEPTED, 2), (REDUCED, 1, 3, 2, C.STP), (CANCELLED, 2, 3, C.STP), (BOOK, SELL, 100, 2, 2)
    ]
    assert h.order(1)["remaining"] == 2


def test_stp_decrement_and_cancel_larger_incoming_carries_on() -> None:
    h = stp_book()
    h.sell(3, 101, 1, acct=8)
    assert h.buy(2, 101, 8, acct=7, stp=STP.DECREMENT_AND_CANCEL) == [
        (ACCEPTED, 2),
        (CANCELLED, 1, 5, C.STP),
        (REDUCED, 2, 5, 3, C.STP),
        (BOOK, SELL, 100, 0, 3),
        trade(3, 2, 101, 1, BUY, 0, 2, 8, 7),
        (BOOK, SELL, 101, 0, 4),
        (BOOK, BUY, 101, 2, 5),
    ]


def test_stp_after_partial_fills_uses_the_incoming_orders_mode() -> None:
    h = Harness()
    h.sell(1, 100, 2, acct=1, stp=STP.CANCEL_OLDEST)  # the resting order's mode does not matter
    h.sell(2, 100, 5, acct=7)
    assert h.buy(3, 100, 5, acct=7, stp=STP.CANCEL_NEWEST) == [
        (ACCEPTED, 3), trade(1, 3, 100, 2, BUY, 0, 3, 1, 7), (CANCELLED, 3, 3, C.STP), (BOOK, SELL, 100, 5, 3)
    ]


# ------------------------------------------------------------------------------- amend


def amend_book() -> Harness:
    h = Harness(max_order_qty=50)
    h.buy(1, 99, 5)
    h.buy(2, 99, 5)
    return h


def test_amend_reducing_quantity_keeps_priority() -> None:
    h = amend_book()
    assert h.amend(1, 0, quantity=2) == [(AMENDED, 1, 99, 2), (BOOK, BUY, 99, 7, 3)]
    assert h.sell(3, 99, 1)[1] == trade(1, 3, 99, 1, SELL, 1, 0)


def test_amend_raising_quantity_loses_priority() -> None:
    h = amend_book()
    assert h.amend(1, 0, quantity=6) == [
        (AMENDED, 1, 99, 6), (BOOK, BUY, 99, 5, 3), (BOOK, BUY, 99, 11, 4)
    ]
    assert h.sell(3, 99, 1)[1] == trade(2, 3, 99, 1, SELL, 4, 0)


def test_amend_price_loses_priority_and_can_trade() -> None:
    h = amend_book()
    h.sell(3, 101, 3)
    assert h.amend(1, 0, price=98) == [(AMENDED, 1, 98, 5), (BOOK, BUY, 99, 5, 4), (BOOK, BUY, 98, 5, 5)]
    assert h.amend(2, 0, price=101, quantity=4) == [
        (AMENDED, 2, 101, 4),
        (BOOK, BUY, 99, 0, 6),
        trade(3, 2, 101, 3, BUY, 0, 1),
        (BOOK, SELL, 101, 0, 7),
        (BOOK, BUY, 101, 1, 8),
    ]


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"price": 99, "quantity": 5}, R.NO_CHANGE),
        ({}, R.NO_CHANGE),
        ({"quantity": 0}, R.INVALID_QUANTITY),
        ({"quantity": 51}, R.ABOVE_MAX_QUANTITY),
        ({"price": 0}, R.INVALID_PRICE),
    ],
)
def test_amend_rejections_change_nothing(kwargs: dict, reason: int) -> None:
    h = amend_book()
    before = h.snapshot()
    assert h.amend(1, 0, **kwargs) == [(AMEND_REJECTED, 1, reason)]
    assert h.amend(77, 0, **kwargs) == [(AMEND_REJECTED, 77, R.UNKNOWN_ORDER)]
    assert h.snapshot() == before


def test_amend_checks_tick_lot_and_band() -> None:
    h = Harness(tick_size=5, lot_size=2, band_bps=500)
    h.buy(1, 100, 4)
    assert h.amend(1, 0, price=101) == [(AMEND_REJECTED, 1, R.INVALID_TICK)]
    assert h.amend(1, 0, price=110) == [(AMEND_REJECTED, 1, R.PRICE_OUTSIDE_BAND)]
    assert h.amend(1, 0, quantity=3) == [(AMEND_REJECTED, 1, R.INVALID_LOT)]


def test_amend_of_gtd_keeps_its_expiry() -> None:
    h = Harness()
    h.buy(1, 99, 5, tif=GTD, expires_at=10)
    h.amend(1, 0, price=98)
    assert h.expire(10) == [(EXPIRED, 1, 5), (BOOK, BUY, 98, 0, 4)]


# ------------------------------------------------------------------------------- halt


def test_halt_rejects_orders_and_amends_but_allows_cancels() -> None:
    h = Harness()
    h.buy(1, 99, 5)
    assert h.halt(0) == [(STATUS, Status.HALTED)]
    assert h.halt(0) == []
    assert h.buy(2, 99, 5) == [(REJECTED, 2, R.HALTED)]
    assert h.amend(1, 0, quantity=1) == [(AMEND_REJECTED, 1, R.HALTED)]
    assert h.resume(0) == [(STATUS, Status.CONTINUOUS)]
    assert h.cancel(1, 0)[0] == (CANCELLED, 1, 5, C.USER)


# ------------------------------------------------------------------------------- call auction


def test_auction_collects_orders_then_uncrosses_at_the_max_volume_price() -> None:
    h = Harness(status=Status.AUCTION)
    h.buy(1, 102, 5)
    h.buy(2, 101, 5)
    h.sell(3, 100, 3)
    h.sell(4, 101, 6)
    assert h.depth() == ([(102, 5), (101, 5)], [(100, 3), (101, 6)])  # crossed while collecting
    assert h.indicative() == (101, 9, 1)
    assert h.uncross(0) == [
        trade(1, 3, 101, 3, SELL, 2, 0),
        trade(1, 4, 101, 2, SELL, 0, 4),
        trade(2, 4, 101, 4, SELL, 1, 0),
        (BOOK, BUY, 102, 0, 5),
        (BOOK, SELL, 100, 0, 6),
        (BOOK, SELL, 101, 0, 7),
        (BOOK, BUY, 101, 1, 8),
        (UNCROSSED, 101, 9),
        (STATUS, Status.CONTINUOUS),
    ]
    assert h.depth() == ([(101, 1)], [])


def test_auction_price_minimises_imbalance_before_nearness_to_reference() -> None:
    h = Harness(status=Status.AUCTION)  # reference 100
    h.buy(1, 100, 5)
    h.sell(2, 99, 5)
    h.sell(3, 100, 3)
    assert h.indicative() == (99, 5, 0)  # at 100 also 5 lots, but 3 left over


def test_auction_price_nearest_the_reference_then_the_higher() -> None:
    h = Harness(status=Status.AUCTION, reference_price=103)
    h.buy(1, 105, 10)
    h.sell(2, 95, 10)
    assert h.indicative() == (103, 10, 0)
    h.set_reference_price(200, 0)
    assert h.indicative() == (105, 10, 0)
    h2 = Harness(status=Status.AUCTION, reference_price=101, tick_size=2)
    h2.buy(1, 110, 1)
    h2.sell(2, 90, 1)
    assert h2.indicative() == (102, 1, 0)  # 100 and 102 are equally near 101


def test_auction_rejects_immediate_orders_and_allows_amends() -> None:
    h = Harness(status=Status.AUCTION, band_bps=1000)
    for i, kw in enumerate(
        [{"tif": IOC}, {"tif": FOK}, {"post_only": True}, {"min_quantity": 1}], start=1
    ):
        assert h.buy(i, 100, 1, **kw) == [(REJECTED, i, R.NOT_IN_AUCTION)]
    assert h.submit(Order(9, 9, BUY, 0, 1, type=MARKET, tif=IOC), 0) == [(REJECTED, 9, R.NOT_IN_AUCTION)]
    h.buy(10, 99, 1)
    h.sell(11, 101, 1)
    assert h.amend(10, 0, price=102) == [(AMENDED, 10, 102, 1), (BOOK, BUY, 99, 0, 3), (BOOK, BUY, 102, 1, 4)]
    assert h.indicative() == (101, 1, 0)  # 101..102 all trade 1; 101 is nearest the reference 100


def test_auction_with_nothing_crossed_just_opens() -> None:
    h = Harness(status=Status.AUCTION)
    h.buy(1, 99, 1)
    assert h.indicative() is None
    assert h.uncross(0) == [(STATUS, Status.CONTINUOUS)]
    assert h.uncross(0) == []


def test_auction_self_trade_is_prevented_and_the_uncross_repeats() -> None:
    h = Harness(status=Status.AUCTION)
    h.buy(1, 102, 5, acct=7)
    h.sell(2, 100, 5, acct=7)  # later: its CANCEL_NEWEST applies
    h.sell(3, 101, 2, acct=8)
    # first pass at 100 (5 lots, no imbalance) only cancels the self-match; the second at 101
    assert h.uncross(0) == [
        (CANCELLED, 2, 5, C.STP),
        (BOOK, SELL, 100, 0, 4),
        trade(1, 3, 101, 2, SELL, 3, 0, 7, 8),
        (BOOK, BUY, 102, 3, 5),
        (BOOK, SELL, 101, 0, 6),
        (UNCROSSED, 101, 2),
        (STATUS, Status.CONTINUOUS),
    ]


def test_reopening_auction_after_a_halt() -> None:
    h = Harness()
    h.buy(1, 99, 2)
    h.halt(0)
    assert h.resume(0, auction=True) == [(STATUS, Status.AUCTION)]
    h.sell(2, 98, 1)
    ev = h.uncross(0)
    # 98 and 99 both trade 1 lot leaving 1 over; 99 is nearer the reference price 100
    assert ev[0] == trade(1, 2, 99, 1, SELL, 1, 0)
    assert ev[-2:] == [(UNCROSSED, 99, 1), (STATUS, Status.CONTINUOUS)]


def test_start_auction_from_continuous() -> None:
    h = Harness()
    assert h.start_auction(0) == [(STATUS, Status.AUCTION)]
    h.buy(1, 101, 1)
    h.sell(2, 99, 1)
    assert h.resume(0) == [
        trade(1, 2, 100, 1, SELL, 0, 0), (BOOK, BUY, 101, 0, 3), (BOOK, SELL, 99, 0, 4),
        (UNCROSSED, 100, 1), (STATUS, Status.CONTINUOUS),
    ]


# ------------------------------------------------------------------------------- market data


def test_checksum_matches_the_documented_example() -> None:
    h = Harness()
    assert h.checksum() == 0
    h.buy(1, 101, 5)
    h.buy(2, 100, 3)
    h.sell(3, 103, 2)
    assert h.checksum() == zlib.crc32(b"101:5:103:2:100:3")


def test_checksum_covers_ten_levels() -> None:
    h = Harness()
    for i in range(12):
        h.buy(i + 1, 80 + i, 1)
    bids = [f"{p}:1" for p in range(91, 81, -1)]
    assert h.checksum() == zlib.crc32(":".join(bids).encode())


def test_event_dict_names_fields() -> None:
    assert event_dict((BOOK, BUY, 99, 5, 1)) == {"kind": "BOOK", "side": BUY, "price": 99, "quantity": 5, "seq": 1}


# ------------------------------------------------------------------------------- snapshot


def test_snapshot_restore_round_trips_and_continues_identically() -> None:
    h = Harness(band_bps=1000)
    h.buy(1, 99, 5, acct=3, tif=GTD, expires_at=50)
    h.buy(2, 99, 2)
    h.sell(3, 102, 4, post_only=True, stp=STP.DECREMENT_AND_CANCEL)
    h.cancel(2, 0)
    h.buy(4, 98, 1)
    snap = h.snapshot()
    restored = Book.restore(snap)
    assert restored.snapshot() == snap
    ev_a = [h.book.submit(Order(5, 5, SELL, 98, 7), 10), h.book.expire(60)]
    ev_b = [restored.submit(Order(5, 5, SELL, 98, 7), 10), restored.expire(60)]
    assert ev_a == ev_b
    assert h.book.snapshot() == restored.snapshot()


def test_restore_rejects_a_bad_checksum() -> None:
    h = Harness()
    h.buy(1, 99, 5)
    snap = h.snapshot()
    snap["orders"][0][4] = 6
    with pytest.raises(ValueError):
        Book.restore(snap)
