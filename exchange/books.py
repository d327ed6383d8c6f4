"""Between the database and the engine: instrument rules as a BookConfig, orders as engine orders, time as
integer nanoseconds, and books rebuilt from resting orders."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

from exchange import engine as eng
from exchange.engine.book import SNAPSHOT_VERSION
from exchange.models import Order, OrderType, SelfTradePrevention, Side, TimeInForce
from marketplace.models import Instrument, InstrumentStatus

SIDE = {Side.BUY: eng.Side.BUY, Side.SELL: eng.Side.SELL}
SIDE_NAME = {eng.Side.BUY: Side.BUY, eng.Side.SELL: Side.SELL}
TYPE = {OrderType.LIMIT: eng.OrderType.LIMIT, OrderType.MARKET: eng.OrderType.MARKET}
TIF = {TimeInForce.GTC: eng.TimeInForce.GTC, TimeInForce.GTD: eng.TimeInForce.GTD, TimeInForce.IOC: eng.TimeInForce.IOC, TimeInForce.FOK: eng.TimeInForce.FOK}
STP = {
    SelfTradePrevention.CANCEL_NEWEST: eng.STP.CANCEL_NEWEST,
    SelfTradePrevention.CANCEL_OLDEST: eng.STP.CANCEL_OLDEST,
    SelfTradePrevention.CANCEL_BOTH: eng.STP.CANCEL_BOTH,
    SelfTradePrevention.DECREMENT_AND_CANCEL: eng.STP.DECREMENT_AND_CANCEL,
}
# Market orders may execute at most this far beyond the best opposite price (and never outside the band).
MARKET_PROTECTION_BPS = 500


def to_ns(when: dt.datetime) -> int:
    return int(when.timestamp()) * 1_000_000_000 + when.microsecond * 1_000


def reference_fen_per_lot(instrument: Instrument) -> int:
    price = instrument.price_to_fen_per_lot(instrument.reference_price)
    if price is None:  # the product's tick/lot rule makes this impossible for a tick-aligned reference
        raise ValueError(f"{instrument} reference price is not whole fen per lot")
    return price


def book_config(instrument: Instrument) -> eng.BookConfig:
    return eng.BookConfig(
        reference_price=reference_fen_per_lot(instrument),
        tick_size=instrument.tick_fen_per_lot,
        lot_size=1,
        min_order_qty=instrument.min_order_lots,
        max_order_qty=instrument.max_order_lots,
        band_bps=instrument.price_band_bps if instrument.price_band_bps < 10_000 else None,
        market_protection_bps=MARKET_PROTECTION_BPS,
    )


def band_fen_per_lot(instrument: Instrument) -> tuple[int, int]:
    return eng.band_limits(book_config(instrument), reference_fen_per_lot(instrument))


def engine_order(order: Order) -> eng.Order:
    return eng.Order(
        order_id=order.pk,
        account_id=order.organisation_id,  # self-trade prevention is per organisation (beneficial owner)
        side=SIDE[order.side],
        price=order.price_fen_per_lot or 0,
        quantity=order.open_quantity or order.quantity,
        type=TYPE[order.type],
        tif=TIF[order.time_in_force],
        expires_at=to_ns(order.expires_at) if order.expires_at else 0,
        post_only=order.post_only,
        min_quantity=order.min_quantity,
        stp=STP[order.stp],
    )


def book_from_orders(instrument: Instrument, resting: Iterable[Order], book_seq: int) -> eng.Book:
    """Load a book from its resting orders (in arrival order) without generating trades."""
    config = book_config(instrument)
    status = eng.Status.HALTED if instrument.status == InstrumentStatus.HALTED else eng.Status.CONTINUOUS
    rows = [
        [o.pk, o.organisation_id, int(SIDE[o.side]), o.price_fen_per_lot, o.open_quantity,
         to_ns(o.expires_at) if o.expires_at else 0, int(STP[o.stp]), n, o.post_only]
        for n, o in enumerate(resting, start=1)
    ]
    return eng.Book.restore(
        {
            "version": SNAPSHOT_VERSION,
            "config": config.to_dict(),
            "status": int(status),
            "reference_price": config.reference_price,
            "seq": book_seq,
            "arrival": len(rows),
            "orders": rows,
        }
    )
