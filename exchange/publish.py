"""After a batch commits, the matcher tells the world: market data per instrument, order events per
organisation. One message per update per group, serialised once."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

log = logging.getLogger(__name__)


def market_group(instrument_id: int) -> str:
    return f"market.{instrument_id}"


def organisation_group(organisation_id: int) -> str:
    return f"org.{organisation_id}"


@dataclass(frozen=True)
class Publication:
    group: str
    payload: dict[str, Any]

    @classmethod
    def market(cls, instrument_id: int, payload: dict[str, Any]) -> Publication:
        return cls(market_group(instrument_id), payload)

    @classmethod
    def trade(cls, instrument_id: int, trade) -> Publication:
        return cls(market_group(instrument_id), {
            "type": "trade", "instrument": instrument_id, "seq": trade.seq, "price_fen_per_lot": trade.price_fen_per_lot,
            "quantity": trade.quantity, "taker_side": trade.taker_side, "at": trade.created_at.isoformat(),
        })

    @classmethod
    def order(cls, order, fills) -> Publication:
        from exchange.matcher import order_state

        return cls(organisation_group(order.organisation_id), {"type": "order", "instrument": order.instrument_id, **order_state(order, fills)})


def publish(publications: list[Publication]) -> None:
    """Best effort: the database is the record; a subscriber that misses a message sees the gap in the
    sequence numbers and asks for a snapshot."""
    if not publications:
        return
    layer = get_channel_layer()
    if layer is None:
        return
    try:
        async_to_sync(_send_all)(layer, publications)
    except Exception:
        log.exception("publishing %d messages failed", len(publications))


async def _send_all(layer, publications: list[Publication]) -> None:
    for p in publications:
        await layer.group_send(p.group, {"type": "relay", "payload": p.payload})
