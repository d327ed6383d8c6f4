"""Matching engine (placeholder docstring, expanded below)."""

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
