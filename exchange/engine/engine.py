"""The multi-instrument engine: one :class:`Book` per instrument id, commands routed by id."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .book import Book
from .types import (
    Amend,
    BookConfig,
    Cancel,
    CancelAll,
    Command,
    Event,
    EventKind,
    Expire,
    Halt,
    Order,
    RejectReason,
    Resume,
    SetReferencePrice,
    StartAuction,
    Status,
    Submit,
    Uncross,
)


class Engine:
    """Books by instrument id. Order traffic for an unknown instrument is rejected with
    UNKNOWN_INSTRUMENT; administrative commands for one raise KeyError (a configuration error)."""

    __slots__ = ("books",)

    def __init__(self) -> None:
        self.books: dict[int, Book] = {}

    def add_book(self, instrument_id: int, config: BookConfig, status: Status = Status.CONTINUOUS) -> Book:
        if instrument_id in self.books:
            raise ValueError(f"instrument {instrument_id} already has a book")
        book = self.books[instrument_id] = Book(config, status)
        return book

    def remove_book(self, instrument_id: int) -> Book:
        return self.books.pop(instrument_id)

    def book(self, instrument_id: int) -> Book:
        return self.books[instrument_id]

    # order traffic
    def submit(self, instrument_id: int, order: Order, now: int) -> list[Event]:
        book = self.books.get(instrument_id)
        if book is None:
            return [(EventKind.REJECTED, order.order_id, RejectReason.UNKNOWN_INSTRUMENT)]
        return book.submit(order, now)

    def cancel(self, instrument_id: int, order_id: int, now: int) -> list[Event]:
        book = self.books.get(instrument_id)
        if book is None:
            return [(EventKind.CANCEL_REJECTED, order_id, RejectReason.UNKNOWN_INSTRUMENT)]
        return book.cancel(order_id, now)

    def amend(
        self,
        instrument_id: int,
        order_id: int,
        now: int,
        price: int | None = None,
        quantity: int | None = None,
    ) -> list[Event]:
        book = self.books.get(instrument_id)
        if book is None:
            return [(EventKind.AMEND_REJECTED, order_id, RejectReason.UNKNOWN_INSTRUMENT)]
        return book.amend(order_id, now, price, quantity)

    def cancel_all(self, instrument_id: int | None, account_id: int, now: int) -> list[Event] | dict[int, list[Event]]:
        """One book's events; with ``instrument_id=None``, ``{instrument_id: events}`` over every
        book where the account had orders."""
        if instrument_id is not None:
            book = self.books.get(instrument_id)
            return [] if book is None else book.cancel_all(account_id, now)
        out: dict[int, list[Event]] = {}
        for iid in sorted(self.books):
            ev = self.books[iid].cancel_all(account_id, now)
            if ev:
                out[iid] = ev
        return out

    # time and status
    def expire(self, instrument_id: int, now: int) -> list[Event]:
        return self.books[instrument_id].expire(now)

    def expire_all(self, now: int) -> dict[int, list[Event]]:
        """Expire GTD orders in every book (in instrument id order); only books with events."""
        out: dict[int, list[Event]] = {}
        for iid in sorted(self.books):
            ev = self.books[iid].expire(now)
            if ev:
                out[iid] = ev
        return out

    def halt(self, instrument_id: int, now: int) -> list[Event]:
        return self.books[instrument_id].halt(now)

    def resume(self, instrument_id: int, now: int, auction: bool = False) -> list[Event]:
        return self.books[instrument_id].resume(now, auction)

    def start_auction(self, instrument_id: int, now: int) -> list[Event]:
        return self.books[instrument_id].start_auction(now)

    def uncross(self, instrument_id: int, now: int) -> list[Event]:
        return self.books[instrument_id].uncross(now)

    def set_reference_price(self, instrument_id: int, price: int, now: int) -> list[Event]:
        return self.books[instrument_id].set_reference_price(price, now)

    def apply(self, command: Command) -> list[Event]:
        """Apply one command object (see :mod:`exchange.engine.types`); for replay logs."""
        handler = _DISPATCH.get(type(command))
        if handler is None:
            raise TypeError(f"not an engine command: {command!r}")
        return handler(self, command)

    # persistence
    def snapshot(self) -> dict[int, dict[str, Any]]:
        return {iid: book.snapshot() for iid, book in self.books.items()}

    @classmethod
    def restore(cls, snapshot: dict[int, dict[str, Any]]) -> Engine:
        engine = cls()
        for iid, snap in snapshot.items():
            engine.books[int(iid)] = Book.restore(snap)
        return engine

    def check_invariants(self) -> None:
        for book in self.books.values():
            book.check_invariants()


_DISPATCH: dict[type, Callable[[Engine, Any], list[Event]]] = {
    Submit: lambda e, c: e.submit(c.instrument_id, c.order, c.now),
    Cancel: lambda e, c: e.cancel(c.instrument_id, c.order_id, c.now),
    CancelAll: lambda e, c: e.cancel_all(c.instrument_id, c.account_id, c.now),
    Amend: lambda e, c: e.amend(c.instrument_id, c.order_id, c.now, c.price, c.quantity),
    Expire: lambda e, c: e.expire(c.instrument_id, c.now),
    Halt: lambda e, c: e.halt(c.instrument_id, c.now),
    Resume: lambda e, c: e.resume(c.instrument_id, c.now, c.auction),
    StartAuction: lambda e, c: e.start_auction(c.instrument_id, c.now),
    Uncross: lambda e, c: e.uncross(c.instrument_id, c.now),
    SetReferencePrice: lambda e, c: e.set_reference_price(c.instrument_id, c.price, c.now),
}
