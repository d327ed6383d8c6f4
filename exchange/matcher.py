"""The matcher: the only writer of book state, one per shard of instruments.

It takes a batch of commands, applies them to the in-memory engine, writes every resulting change (orders,
order events, trades, contracts, ledger movements, capacity, sequence numbers) in ONE transaction, then
publishes market data and user events, then answers. If the transaction fails, the books it touched are
dropped and rebuilt from the database on next use, so memory never runs ahead of what is stored.

Recovery is the same code as normal running: a book is loaded from its resting orders in arrival order,
then pending orders and requested cancels found in the database are processed in arrival order.
"""

from __future__ import annotations

import contextlib
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from django.db import connection, transaction
from django.db.models import F, Q
from django.db.models.functions import Greatest
from django.utils import timezone

from common.db import bulk_update_rows, pg_array, prepared_statements
from exchange import engine as eng
from exchange.admission import (
    Admission,
    Refusal,
    buyer_hold_fen,
    listing_free_lots_locked,
    store_new_orders,
    trading_accounts,
)
from exchange.books import SIDE_NAME, book_from_orders, engine_order, to_ns
from exchange.models import (
    FINAL_STATUSES,
    BookState,
    CapacityHold,
    Contract,
    ContractStatus,
    KillScope,
    KillSwitch,
    Order,
    OrderEvent,
    OrderEventKind,
    OrderStatus,
    Side,
    Trade,
)
from exchange.publish import Publication, publish
from exchange.risk import KILL_REASON, RiskBook, cny
from ledger import services as ledger
from ledger.models import Account, AccountKind, EntryKind, Hold
from marketplace.models import Instrument, InstrumentStatus

log = logging.getLogger(__name__)
EK = eng.EventKind


def shard_of(instrument_id: int, shards: int) -> int:
    return instrument_id % shards


@dataclass(slots=True)
class TradeRow:
    """A trade (and its contract) as the matcher makes it: plain attributes named as on exchange.Trade, so
    replies and publications read either. Building Django model instances for each trade and contract was
    a seventh of the matcher's CPU under load (bench/RESULTS.md); rows are inserted by `trades_insert`."""

    instrument_id: int
    seq: int
    maker_order_id: int
    taker_order_id: int
    buyer_id: int
    seller_id: int
    price_fen_per_lot: int
    quantity: int
    value_fen: int
    taker_side: str
    buyer_fee_fen: int
    seller_fee_fen: int
    created_at: Any
    listing_id: int | None  # the sell order's listing: the contract's
    pk: int | None = None


@dataclass
class _Batch:
    """What one batch changes, kept until it is written in one transaction."""

    now: Any
    orders: dict[int, Order] = field(default_factory=dict)  # every order touched, by id
    dirty: set[int] = field(default_factory=set)
    # (order, kind, quantity, price, reason, trade, actor id): plain tuples, made into rows at persist time
    events: list[tuple] = field(default_factory=list)
    trades: list[TradeRow] = field(default_factory=list)  # each with its contract
    # (hold id, value into the buyer's escrow, buyer's fee, buyer's organisation id, key, memo): one entry each
    captures: list[tuple] = field(default_factory=list)
    releases: list[tuple[int, str]] = field(default_factory=list)  # (hold id, key): whatever remains
    amended: set[int] = field(default_factory=set)  # open orders amended (or refused an amend): holds trimmed
    hold_raised: dict[int, int] = field(default_factory=dict)  # hold id -> fen added for amends (entries in hold_entries)
    capacity_raised: dict[int, int] = field(default_factory=dict)  # sell order id -> lots added to its capacity hold
    listing_raised: dict[int, int] = field(default_factory=dict)  # listing id -> lots added to its holds in this batch
    sold: dict[int, int] = field(default_factory=lambda: defaultdict(int))  # sell order id -> lots sold now
    unsold_released: set[int] = field(default_factory=set)  # finished sell orders: release what is unsold
    states: dict[int, BookState] = field(default_factory=dict)
    publications: list[Publication] = field(default_factory=list)
    books: dict[int, Publication] = field(default_factory=dict)  # instrument id -> the batch's one book message
    hold_entries: list = field(default_factory=list)  # journal entries of the batch's new holds
    # New orders and their capacity holds not yet inserted (PostgreSQL: Admission.unstored), by _persist.
    unstored: list[Order] = field(default_factory=list)
    capacity_holds: list[CapacityHold] = field(default_factory=list)
    fills: dict[int, list[TradeRow]] = field(default_factory=lambda: defaultdict(list))
    new_switches: list | None = None  # kill switches found by this batch's risk_sync, swept by its command
    swept: list = field(default_factory=list)  # ... and marked swept once the batch commits


class Matcher:
    def __init__(self, *, shard: int = 0, shards: int = 1) -> None:
        self.shard = shard
        self.shards = shards
        self.engine = eng.Engine()
        self.instruments: dict[int, Instrument] = {}
        self.states: dict[int, BookState] = {}
        # The resting orders of the loaded books, as last written: the matcher is the only writer of the
        # fields it keeps here, so a trade against them needs no read. Dropped with the books on failure.
        self.resting: dict[int, Order] = {}
        self.escrow_accounts: dict[int, int] = {}  # organisation id -> its escrow account id
        self.account_ids: dict[tuple[int, str], int] = {}  # (organisation id, held/available) -> account id
        self.fees_account: int | None = None
        self.risk = RiskBook(owns=self.owns, shards=shards)  # limits and kill switches (exchange.risk)

    # --- books ---------------------------------------------------------------------------------------

    def owns(self, instrument_id: int) -> bool:
        return shard_of(instrument_id, self.shards) == self.shard

    def _book(self, instrument_id: int) -> eng.Book | None:
        book = self.engine.books.get(instrument_id)
        if book is not None:
            return book
        instrument = Instrument.objects.select_related("product").filter(pk=instrument_id).first()
        if instrument is None or instrument.status not in (InstrumentStatus.OPEN, InstrumentStatus.HALTED):
            return None
        resting = list(Order.objects.filter(instrument_id=instrument_id, status=OrderStatus.OPEN).order_by("pk"))
        self.resting.update((o.pk, o) for o in resting)
        state, _ = BookState.objects.get_or_create(instrument_id=instrument_id)
        book = book_from_orders(instrument, resting, state.book_seq)
        self.engine.books[instrument_id] = book
        self.instruments[instrument_id] = instrument
        self.states[instrument_id] = state
        return book

    def _forget(self, instrument_ids) -> None:
        gone = set(instrument_ids)
        for pk in [pk for pk, o in self.resting.items() if o.instrument_id in gone]:
            del self.resting[pk]
        for iid in instrument_ids:
            self.engine.books.pop(iid, None)
            self.instruments.pop(iid, None)
            self.states.pop(iid, None)

    # --- commands ------------------------------------------------------------------------------------

    def process(self, commands: list[dict]) -> list[dict]:
        """Apply a batch of commands; returns one reply per command, after the batch is durable. New orders
        (`place`) are stored with their holds in the batch's own transaction (exchange.admission)."""
        batch = _Batch(now=timezone.now())
        now_ns = to_ns(batch.now)
        outcomes = []
        try:
            with prepared_statements(), transaction.atomic(), _pipeline():
                if any(c["op"] == "risk_sync" for c in commands):
                    # Before admission: a switch pulled now refuses every order of this batch in its scope.
                    batch.new_switches = self.risk.sync()
                places = [(i, c) for i, c in enumerate(commands) if c["op"] == "place"]
                admitted: dict = {}
                created: set[int] = set()
                if places:
                    self.risk.ensure()
                    admission = Admission(now=batch.now, book_for=self._book, instrument_for=self.instruments.__getitem__,
                                          risk_check=self.risk.admission())
                    admitted, created = admission.admit(places)
                    batch.hold_entries = admission.entries
                    batch.unstored, batch.capacity_holds = admission.unstored, admission.capacity_holds
                    batch.orders.update((o.id, o) for o in admitted.values() if isinstance(o, Order))
                order_ids = {c["order"] for c in commands if "order" in c} - set(batch.orders)
                batch.orders.update(Order.objects.select_related("hold").in_bulk(order_ids))
                for i, command in enumerate(commands):
                    try:
                        if command["op"] == "place":
                            outcomes.append(self._place(admitted[i], i in created, batch, now_ns))
                        else:
                            outcomes.append(self._apply(command, batch, now_ns))
                    except Exception:
                        log.exception("matcher: command %r failed", command)
                        raise
                self._persist(batch)
        except Exception:
            self._forget(list(self.engine.books))
            self.risk.invalidate()
            # Ids read (or, for the fees account, created) in the rolled-back transaction: read again.
            self.escrow_accounts.clear()
            self.account_ids.clear()
            self.fees_account = None
            raise
        self.risk.apply(batch.orders[pk] for pk in batch.dirty)
        self.risk.swept.update(s.pk for s in batch.swept)
        self._publish(batch)
        return [self._reply(outcome, batch) for outcome in outcomes]

    def _place(self, result: Order | Refusal, created: bool, batch: _Batch, now: int) -> dict:
        if isinstance(result, Refusal):
            return result.as_reply()
        if not created:
            return {"op": "place", "order": result.pk, "created": False, "replay": True}
        self._submit(result, batch, now)
        return {"op": "place", "order": result.pk, "created": True}

    def _submit(self, order: Order, batch: _Batch, now: int) -> None:
        book = self._book(order.instrument_id)
        if book is None or self.instruments[order.instrument_id].gate_closure <= batch.now:
            self._finish(order, OrderStatus.REJECTED, "instrument_not_open", batch)
            return
        events = book.submit(engine_order(order), now)
        self._record(order.instrument_id, events, batch, actor_id=order.user_id)
        if order.cancel_requested_at and order.pk in book:
            self._record(order.instrument_id, book.cancel(order.pk, now), batch, actor_id=order.user_id)

    def _apply(self, command: dict, batch: _Batch, now: int) -> dict:
        op = command["op"]
        if op == "submit":
            order = batch.orders.get(command["order"])
            if order is None or order.status != OrderStatus.PENDING:
                return {"op": op, "order": command["order"]}
            self._submit(order, batch, now)
            return {"op": op, "order": order.pk}
        if op == "cancel":
            order = batch.orders.get(command["order"])
            if order is None or order.status in FINAL_STATUSES or order.status == OrderStatus.PENDING:
                return {"op": op, "order": command["order"]}  # pending: the submit (queued before) applies the cancel
            book = self._book(order.instrument_id)
            events = book.cancel(order.pk, now) if book is not None else []
            self._record(order.instrument_id, events, batch, actor_id=command.get("actor"))
            return {"op": op, "order": order.pk, "rejected": _rejection(events)}
        if op == "amend":
            order = batch.orders.get(command["order"])
            if order is None or order.status != OrderStatus.OPEN:
                return {"op": op, "order": command["order"], "rejected": "not_open"}
            batch.amended.add(order.pk)  # applied or refused, its hold ends the batch at what it then needs
            self.risk.ensure()
            price, quantity = command.get("price"), command.get("quantity")
            refused = self.risk.amend_refusal(order, price, quantity)
            if refused is not None:
                return {"op": op, "order": order.pk, "rejected": refused}
            book = self._book(order.instrument_id)
            reservation = self._amend_reservation(order, price, quantity, batch)
            if isinstance(reservation, Refusal):
                code = "insufficient_funds" if order.side == Side.BUY else "insufficient_capacity"
                return {"op": op, "order": order.pk, "rejected": code, "field": reservation.field, "message": reservation.message}
            events = book.amend(order.pk, now, price, quantity) if book is not None else []
            rejected = _rejection(events)
            if rejected is None and events:
                reservation()
            self._record(order.instrument_id, events, batch, actor_id=command.get("actor"))
            return {"op": op, "order": order.pk, "rejected": rejected}
        if op == "cancel_all":
            instrument_ids = [command["instrument"]] if command.get("instrument") else sorted(
                set(Order.objects.filter(organisation_id=command["organisation"], status=OrderStatus.OPEN).values_list("instrument_id", flat=True))
            )
            cancelled = 0
            for iid in instrument_ids:
                if not self.owns(iid):
                    continue
                book = self._book(iid)
                if book is not None:
                    events = book.cancel_all(command["organisation"], now)
                    cancelled += sum(1 for e in events if e[0] == EK.CANCELLED)
                    self._record(iid, events, batch, actor_id=command.get("actor"))
            return {"op": op, "cancelled": cancelled}
        if op == "expire":
            for iid, events in self.engine.expire_all(now).items():
                self._record(iid, events, batch)
            return {"op": op}
        if op == "close":
            return self._close(command["instrument"], batch, now)
        if op == "risk_sync":
            switches, batch.new_switches = batch.new_switches or [], []
            batch.swept.extend(switches)
            return {"op": op, "cancelled": sum(self._sweep(s, batch, now) for s in switches)}
        if op in ("halt", "resume"):
            book = self._book(command["instrument"])
            if book is not None:
                events = book.halt(now) if op == "halt" else book.resume(now)
                self._record(command["instrument"], events, batch)
            return {"op": op}
        raise ValueError(f"unknown matcher command {op!r}")

    def _amend_reservation(self, order: Order, price: int | None, open_qty: int | None, batch: _Batch):
        """What an amend needs reserved beyond what its order holds: a buyer's funds (the placement's formula
        for the new price and open lots) or a seller's capacity (more open lots). The matcher makes these
        reservations itself, in the batch that applies the amend, because it is the only writer of a resting
        order's hold: it also trims holds after amends (_trims, _capacity_kept), and a reservation made
        elsewhere against the hold's remaining as read then could be undone by a trim queued before it.
        Returns a Refusal (short of funds or capacity), or a callable that books the reservation, to be
        called once the book has taken the amend."""
        inst = self.instruments[order.instrument_id]
        new_open = open_qty if open_qty is not None else order.open_quantity
        asked = "quantity" if open_qty is not None else "price"  # the field a refusal names
        if order.side == Side.BUY and order.hold_id:
            need = buyer_hold_fen(price_fen_per_lot=price if price is not None else order.price_fen_per_lot, open_lots=new_open, instrument=inst)
            with connection.cursor() as cur:
                cur.execute("SELECT amount_fen - captured_fen - released_fen, reference FROM ledger_hold WHERE id = %s", [order.hold_id])
                left, reference = cur.fetchone()
            # This batch's captures from the hold and raises of it are written at its end: count them here.
            left += batch.hold_raised.get(order.hold_id, 0) - sum(c[1] + c[2] for c in batch.captures if c[0] == order.hold_id)
            short = need - left
            if short <= 0:
                return lambda: None
            accounts, balances = trading_accounts([order.organisation_id])  # not locked: as in admission
            available_id = accounts[(order.organisation_id, AccountKind.AVAILABLE)]
            held_id = accounts[(order.organisation_id, AccountKind.HELD)]
            # Less what this batch already takes from it (its new holds and earlier raises), posted at its end.
            balance = balances[available_id] + sum(
                amount for entry in batch.hold_entries for account, amount in entry.postings if account == available_id and amount < 0
            )
            if balance < short:
                return Refusal(400, asked, f"Insufficient funds in available for the amend: short by {cny(short - balance)} CNY (balance {cny(balance)} CNY).")

            def reserve() -> None:
                batch.hold_entries.append(ledger.EntryRequest(
                    idempotency_key=f"order:{order.pk}:raise:{to_ns(batch.now)}:{len(batch.hold_entries)}", kind=EntryKind.HOLD,
                    reference=reference, postings=[(available_id, -short), (held_id, short)], memo=f"hold of order {order.pk} raised for an amend",
                ))
                batch.hold_raised[order.hold_id] = batch.hold_raised.get(order.hold_id, 0) + short
            return reserve
        if order.side == Side.SELL and order.listing_id and new_open > order.open_quantity:
            extra = new_open - order.open_quantity
            free = listing_free_lots_locked(order.listing_id, inst) - batch.listing_raised.get(order.listing_id, 0)
            if batch.unstored:  # this batch's new sell orders on the listing: their holds are inserted at its end
                free -= sum(h.lots for h in batch.capacity_holds if h.listing_id == order.listing_id and h.instrument_id == inst.pk)
            if free < extra:
                return Refusal(400, "quantity", f"Not enough listed capacity for the larger quantity: {max(free, 0)} more lots free on the order's listing.")

            def reserve() -> None:
                batch.capacity_raised[order.pk] = batch.capacity_raised.get(order.pk, 0) + extra
                batch.listing_raised[order.listing_id] = batch.listing_raised.get(order.listing_id, 0) + extra
            return reserve
        return lambda: None

    def _close(self, instrument_id: int, batch: _Batch, now: int) -> dict:
        """Gate closure: every resting order expires and its hold is released; the book is dropped."""
        # The book as it is in memory; not loaded (e.g. after a restart, once the schedule has marked the
        # instrument closed): its resting orders are in the database and expire from there.
        book = self.engine.books.get(instrument_id)
        expired = 0
        if book is not None:
            for order_id in _resting_ids(book):
                events = book.cancel(order_id, now)
                self._load_orders(events, batch)
                order = batch.orders[order_id]
                self._record(instrument_id, [e for e in events if e[0] != EK.CANCELLED], batch)
                order.open_quantity = 0
                self._finish(order, OrderStatus.EXPIRED, "gate_closure", batch)
                expired += 1
            self._state(instrument_id, batch)
        # Orders not yet processed, and resting orders of a book that is not loaded, expire too.
        left = Order.objects.filter(instrument_id=instrument_id, status__in=[OrderStatus.PENDING, OrderStatus.OPEN]).select_related("hold")
        for order in left.order_by("pk"):
            order = batch.orders.setdefault(order.pk, order)
            if order.status in FINAL_STATUSES:
                continue
            self._finish(order, OrderStatus.EXPIRED, "gate_closure", batch)
            expired += 1
        self._forget([instrument_id])
        return {"op": "close", "expired": expired}

    def _sweep(self, switch: KillSwitch, batch: _Batch, now: int) -> int:
        """A kill switch just pulled: cancel this shard's resting orders in its scope through the book (holds
        and capacity released, events published, like any cancel)."""
        if switch.scope == KillScope.INSTRUMENT:
            instrument_ids = [switch.instrument_id]
        else:
            qs = Order.objects.filter(status=OrderStatus.OPEN)
            if switch.scope == KillScope.ACCOUNT:
                qs = qs.filter(organisation_id=switch.organisation_id)
            instrument_ids = sorted(set(qs.values_list("instrument_id", flat=True)))
        cancelled = 0
        for iid in instrument_ids:
            book = self._book(iid) if self.owns(iid) else None
            if book is None:
                continue
            if switch.scope == KillScope.ACCOUNT:
                events = book.cancel_all(switch.organisation_id, now)
            else:
                events = [e for order_id in _resting_ids(book) for e in book.cancel(order_id, now)]
            cancelled += sum(1 for e in events if e[0] == EK.CANCELLED)
            self._record(iid, events, batch, actor_id=switch.pulled_by_id, cancel_reason=KILL_REASON)
        return cancelled

    # --- events -> rows --------------------------------------------------------------------------------

    def _load_orders(self, events: list, batch: _Batch) -> None:
        wanted = set()
        for e in events:
            kind = e[0]
            if kind == EK.TRADE:
                wanted.update((e[1], e[2]))
            elif kind in (EK.ACCEPTED, EK.REJECTED, EK.CANCELLED, EK.REDUCED, EK.AMENDED, EK.EXPIRED):
                wanted.add(e[1])
        missing = {pk for pk in wanted if pk not in batch.orders}  # not `wanted - set(batch.orders)`: a batch's dict grows
        for pk in [pk for pk in missing if pk in self.resting]:
            batch.orders[pk] = self.resting[pk]
            missing.discard(pk)
        if missing:
            batch.orders.update(Order.objects.select_related("hold").in_bulk(missing))

    def _state(self, instrument_id: int, batch: _Batch) -> BookState:
        state = self.states.get(instrument_id) or BookState.objects.get_or_create(instrument_id=instrument_id)[0]
        batch.states[instrument_id] = state
        return state

    def _event(self, order: Order, kind: str, batch: _Batch, *, quantity: int = 0, price_fen_per_lot: int | None = None,
               reason: str = "", trade: TradeRow | None = None, actor_id: int | None = None) -> None:
        batch.events.append((order, kind, quantity, price_fen_per_lot, reason, trade, actor_id))

    def _record(self, instrument_id: int, events: list, batch: _Batch, actor_id: int | None = None, cancel_reason: str = "") -> None:
        if not events:
            return
        self._load_orders(events, batch)
        instrument = self.instruments.get(instrument_id) or Instrument.objects.get(pk=instrument_id)
        state = self._state(instrument_id, batch)
        book_levels, trades = [], []
        touched: set[int] = set()
        for e in events:
            kind = e[0]
            if kind == EK.ACCEPTED:
                order = batch.orders[e[1]]
                order.status = OrderStatus.OPEN
                self._event(order, OrderEventKind.ACCEPTED, batch, quantity=order.open_quantity, price_fen_per_lot=order.price_fen_per_lot, actor_id=actor_id)
                touched.add(order.id)
            elif kind == EK.REJECTED:
                order = batch.orders[e[1]]
                order.open_quantity = 0
                self._finish(order, OrderStatus.REJECTED, eng.RejectReason(e[2]).name.lower(), batch)
            elif kind == EK.TRADE:
                trades.append(self._trade(instrument, state, e, batch))
                touched.update((e[1], e[2]))
            elif kind in (EK.CANCELLED, EK.EXPIRED):
                order = batch.orders[e[1]]
                order.open_quantity = 0
                reason = (cancel_reason or eng.CancelReason(e[3]).name.lower()) if kind == EK.CANCELLED else "expired"
                self._event(order, OrderEventKind.CANCELLED if kind == EK.CANCELLED else OrderEventKind.EXPIRED, batch, quantity=e[2], reason=reason, actor_id=actor_id if kind == EK.CANCELLED else None)
                touched.add(order.id)
                order.reason = reason
            elif kind == EK.REDUCED:
                order = batch.orders[e[1]]
                order.open_quantity = e[3]
                self._event(order, OrderEventKind.REDUCED, batch, quantity=e[2], reason=eng.CancelReason(e[4]).name.lower())
                touched.add(order.id)
            elif kind == EK.AMENDED:
                order = batch.orders[e[1]]
                order.price_fen_per_lot = e[2]
                order.open_quantity = e[3]
                order.quantity = order.filled_quantity + e[3]
                self._event(order, OrderEventKind.AMENDED, batch, quantity=e[3], price_fen_per_lot=e[2], actor_id=actor_id)
                touched.add(order.id)
            elif kind == EK.BOOK:
                book_levels.append({"side": SIDE_NAME[e[1]], "price": e[2], "quantity": e[3], "seq": e[4]})
                state.book_seq = e[4]
            elif kind in (EK.STATUS, EK.UNCROSSED):
                batch.publications.append(Publication.market(instrument_id, {"type": "status", "event": eng.event_dict(e)}))
        book = self.engine.books.get(instrument_id)
        for order_id in touched:
            order = batch.orders[order_id]
            batch.dirty.add(order_id)
            if order.status in FINAL_STATUSES:
                continue
            if book is not None and order_id in book:
                order.status = OrderStatus.OPEN
            elif order.filled_quantity == order.quantity:
                self._finish(order, OrderStatus.FILLED, "", batch)
            elif order.reason == "expired":
                self._finish(order, OrderStatus.EXPIRED, "expired", batch)
            else:
                self._finish(order, OrderStatus.CANCELLED, order.reason or "cancelled", batch)
        if book_levels or trades:
            # One book message per instrument and batch, where its first change was: the batch's updates in
            # order, and the checksum of the book as the batch leaves it (filled in by _publish).
            pending = batch.books.get(instrument_id)
            if pending is None:
                pending = batch.books[instrument_id] = Publication.market(
                    instrument_id, {"type": "book", "instrument": instrument_id, "updates": [], "seq": state.book_seq, "checksum": 0})
                batch.publications.append(pending)
            pending.payload["updates"].extend(book_levels)
            pending.payload["seq"] = state.book_seq
        for trade in trades:
            batch.publications.append(Publication.trade(instrument_id, trade, book_seq=state.book_seq))

    def _publish(self, batch: _Batch) -> None:
        """After the batch committed: its book messages get the checksums of the books as the batch left them,
        then everything goes out."""
        for instrument_id, pending in batch.books.items():
            book = self.engine.books.get(instrument_id)
            pending.payload["checksum"] = book.checksum() if book is not None else 0
        publish(batch.publications)

    def _trade(self, instrument: Instrument, state: BookState, e: tuple, batch: _Batch) -> TradeRow:
        _, maker_id, taker_id, price, qty, taker_side, maker_rem, taker_rem, _, _ = e
        maker, taker = batch.orders[maker_id], batch.orders[taker_id]
        maker.open_quantity, taker.open_quantity = maker_rem, taker_rem
        buy, sell = (taker, maker) if SIDE_NAME[taker_side] == Side.BUY else (maker, taker)
        value = price * qty
        state.trade_seq += 1
        state.last_price_fen_per_lot = price
        buyer_fee = self._fill(buy, value, qty, buy is taker, instrument)
        seller_fee = self._fill(sell, value, qty, sell is taker, instrument)
        trade = TradeRow(
            instrument.id, state.trade_seq, maker.id, taker.id, buy.organisation_id, sell.organisation_id, price, qty, value,
            SIDE_NAME[taker_side], buyer_fee, seller_fee, batch.now, sell.listing_id,
        )
        batch.trades.append(trade)
        batch.sold[sell.id] += qty
        label = f"{instrument.code} #{trade.seq}"
        # One journal entry for the buyer's side of the trade: its value into escrow and its fee to the platform.
        # (Until 2026-12 these were two entries, keyed ...:escrow and ...:buyer_fee; older trades keep both.)
        batch.captures.append((buy.hold_id, value, buyer_fee, buy.organisation_id, f"trade:{instrument.id}:{trade.seq}:escrow",
                               f"trade {label} into escrow, fee {buyer_fee} fen" if buyer_fee else f"trade {label} into escrow"))
        for order in (maker, taker):
            self._event(order, OrderEventKind.FILLED, batch, quantity=qty, price_fen_per_lot=price, trade=trade)
            batch.fills[order.id].append(trade)
        return trade

    def _fill(self, order: Order, value: int, qty: int, is_taker: bool, instrument: Instrument) -> int:
        """Book a fill on an order; returns the fee it now owes (running total per role, rounded once)."""
        order.filled_quantity += qty
        if is_taker:
            before, order.taker_value_fen = order.taker_value_fen, order.taker_value_fen + value
            bps = instrument.taker_fee_bps
        else:
            before, order.maker_value_fen = order.maker_value_fen, order.maker_value_fen + value
            bps = instrument.maker_fee_bps
        fee = ledger.fee_amount(notional_fen=before + value, bps=bps) - ledger.fee_amount(notional_fen=before, bps=bps)
        order.fee_fen += fee
        return fee

    def _finish(self, order: Order, status: str, reason: str, batch: _Batch) -> None:
        """Make an order final and give back what it no longer needs: the rest of a buyer's hold, the
        unsold lots of a seller's capacity."""
        order.status = status
        order.reason = reason
        order.open_quantity = 0
        batch.dirty.add(order.id)
        if status == OrderStatus.REJECTED:
            self._event(order, OrderEventKind.REJECTED, batch, reason=reason)
        elif status == OrderStatus.EXPIRED and reason == "gate_closure":
            self._event(order, OrderEventKind.EXPIRED, batch, reason=reason)
        if order.side == Side.BUY and order.hold_id:
            batch.releases.append((order.hold_id, f"order:{order.id}:release"))
        elif order.side == Side.SELL:
            batch.unsold_released.add(order.id)

    # --- persistence ------------------------------------------------------------------------------------

    def _persist(self, batch: _Batch) -> None:
        stamp = timezone.now()  # after admission's inserts: never before an order's created_at
        if batch.unstored:  # first: the batch's trades, events and capacity holds name them
            store_new_orders(batch.unstored, batch.capacity_holds)  # as they are after matching, updated_at now
        trades_insert(batch.trades)
        events_insert(batch.events, timezone.now())
        dirty = [batch.orders[pk] for pk in sorted(batch.dirty)]
        stored = {o.id for o in batch.unstored}
        stale = [o for o in dirty if o.id not in stored]
        for order in stale:
            order.updated_at = stamp
        bulk_update_rows(Order, stale, [
            "status", "reason", "price_fen_per_lot", "quantity", "filled_quantity", "open_quantity",
            "maker_value_fen", "taker_value_fen", "fee_fen", "updated_at",
        ])
        if batch.hold_raised or batch.capacity_raised:
            _raises_apply(batch.hold_raised, batch.capacity_raised)
        capacity_settle(sold=batch.sold, finished=batch.unsold_released, kept=self._capacity_kept(batch))
        for state in batch.states.values():
            state.updated_at = stamp
            with connection.cursor() as cur:
                cur.execute(
                    "UPDATE exchange_bookstate SET book_seq = %s, trade_seq = %s, last_price_fen_per_lot = %s, updated_at = %s WHERE instrument_id = %s",
                    [state.book_seq, state.trade_seq, state.last_price_fen_per_lot, stamp, state.instrument_id],
                )
        self._settle_holds(batch)
        for order in dirty:
            batch.publications.append(Publication.order(order, batch.fills.get(order.id, [])))
            if order.status == OrderStatus.OPEN:
                self.resting[order.id] = order
            else:
                self.resting.pop(order.id, None)

    def _amended_open(self, batch: _Batch, side: str) -> list[Order]:
        orders = (batch.orders[pk] for pk in sorted(batch.amended))
        return [o for o in orders if o.side == side and o.status == OrderStatus.OPEN]

    def _capacity_kept(self, batch: _Batch) -> dict[int, int]:
        """Sell orders amended in the batch and still open: their capacity hold keeps just their open lots (an
        amend down gives the rest back)."""
        return {o.pk: o.open_quantity for o in self._amended_open(batch, Side.SELL)}

    def _trims(self, batch: _Batch) -> list[ledger.HoldMovement]:
        """Buy orders amended in the batch and still open: their hold keeps what the open part needs (the
        placement's formula: from a partly filled order's running fee totals, each role's further fees stay
        within their own share rounded up, so the two within the maximum fee), the rest goes back to
        available. Keyed by the batch's time, so a later amend trims again."""
        stamp = to_ns(batch.now)
        return [
            ledger.HoldMovement(
                hold_id=o.hold_id, amount_fen=None, idempotency_key=f"order:{o.pk}:trim:{stamp}", memo=f"hold of order {o.pk} trimmed after an amend",
                keep_fen=buyer_hold_fen(price_fen_per_lot=o.price_fen_per_lot, open_lots=o.open_quantity, instrument=self.instruments[o.instrument_id]),
            )
            for o in self._amended_open(batch, Side.BUY) if o.hold_id
        ]

    def _settle_holds(self, batch: _Batch) -> None:
        """Captures (each trade's value into escrow with its fee, one entry a trade) and then releases of
        whatever each finished order's hold has left (and the trims of amended ones), in ONE ledger call: every
        account is locked in one statement, so a batch never deadlocks with a placement."""
        trims = self._trims(batch) if batch.amended else []
        if not batch.captures and not batch.releases and not trims:
            if batch.hold_entries:
                ledger.entries_post(batch.hold_entries, savepoint=False, returning=False)
            return
        escrow = self.escrow_accounts
        missing = {c[3] for c in batch.captures} - set(escrow)
        if missing:  # account ids never change: read once per organisation
            escrow.update(Account.objects.filter(organisation_id__in=missing, kind=AccountKind.ESCROW).values_list("organisation_id", "pk"))
        if batch.captures and self.fees_account is None:
            self.fees_account = ledger.platform_account(kind=AccountKind.FEES).pk
        fees = self.fees_account
        movements = [
            ledger.HoldMovement(hold_id=hold, amount_fen=value, idempotency_key=key, memo=memo, destination_id=escrow[org],
                                fee_fen=fee, fee_destination_id=fees)
            for hold, value, fee, org, key, memo in batch.captures
        ]
        movements += [ledger.HoldMovement(hold_id=hold, amount_fen=None, idempotency_key=key) for hold, key in batch.releases]
        movements += trims
        # No savepoints: the batch's transaction is all or nothing (MatcherLoop retries its commands one by one).
        ledger.holds_move(movements, entries=batch.hold_entries, savepoint=False, account_ids=self.account_ids)

    def _reply(self, outcome: dict, batch: _Batch) -> dict:
        order = batch.orders.get(outcome.get("order")) if outcome.get("order") else None
        if order is not None:
            if outcome.pop("replay", False):  # a retry: every fill the order has had, not this batch's
                fills = list(Trade.objects.filter(Q(maker_order_id=order.pk) | Q(taker_order_id=order.pk)).order_by("seq"))
            else:
                fills = batch.fills.get(order.pk, [])
            outcome["state"] = order_state(order, fills)
        return outcome

    def reject_broken(self, order: Order) -> None:
        """Reject an order whose processing keeps failing, releasing its hold or capacity."""
        batch = _Batch(now=timezone.now())
        batch.orders[order.pk] = order
        self._finish(order, OrderStatus.REJECTED, "internal_error", batch)
        with transaction.atomic():
            self._persist(batch)
        self.risk.apply([order])
        self._publish(batch)

    # --- recovery ---------------------------------------------------------------------------------------

    def pending_commands(self) -> list[dict]:
        """What the database says is still to do for this shard, in arrival order: pending orders and
        cancels requested of open orders."""
        pending = Order.objects.filter(status=OrderStatus.PENDING).order_by("pk").values_list("pk", "instrument_id")
        cancels = Order.objects.filter(status=OrderStatus.OPEN, cancel_requested_at__isnull=False).order_by("pk").values_list("pk", "instrument_id")
        commands = [{"op": "submit", "order": pk} for pk, iid in pending if self.owns(iid)]
        commands += [{"op": "cancel", "order": pk} for pk, iid in cancels if self.owns(iid)]
        return commands


def _pipeline():
    """On PostgreSQL, psycopg's pipeline mode for the batch: a statement whose result is not read (most of the
    writes: capacity holds, order events, order updates, capacity, book state, entries and postings,
    balances, holds) is queued and sent with the next one that is read, instead of waiting for its own round
    trip; so is BEGIN. Each round trip costs the writer ~100-150 us of CPU and several times that in wall time
    here (bench/matcher_bench.py). An error in a queued statement is raised at the next read or when the block
    ends, inside the batch's transaction, which then rolls back as before."""
    if connection.vendor != "postgresql":
        return contextlib.nullcontext()
    connection.ensure_connection()
    return connection.connection.pipeline()


def _rejection(events: list) -> str | None:
    for e in events:
        if e[0] in (EK.CANCEL_REJECTED, EK.AMEND_REJECTED):
            return eng.RejectReason(e[2]).name.lower()
    return None


def _resting_ids(book: eng.Book) -> list[int]:
    return [row[0] for row in book.snapshot()["orders"]]


def order_state(order: Order, fills: list | None = None) -> dict:
    """What the matcher answers about an order: enough for the API to respond without re-reading it."""
    return {
        "id": order.pk,
        "client_order_id": order.client_order_id,
        "instrument": order.instrument_id,
        "organisation": order.organisation_id,
        "side": order.side,
        "type": order.type,
        "time_in_force": order.time_in_force,
        "expires_at": order.expires_at.isoformat() if order.expires_at else None,
        "post_only": order.post_only,
        "min_quantity": order.min_quantity,
        "stp": order.stp,
        "listing": order.listing_id,
        "created_at": order.created_at.isoformat() if order.created_at else None,
        "status": order.status,
        "filled_quantity": order.filled_quantity,
        "open_quantity": order.open_quantity,
        "quantity": order.quantity,
        "price_fen_per_lot": order.price_fen_per_lot,
        "reason": order.reason,
        "fee_fen": order.fee_fen,
        "updated_at": order.updated_at.isoformat() if order.updated_at else None,
        "fills": [
            {"trade": t.pk, "seq": t.seq, "price_fen_per_lot": t.price_fen_per_lot, "quantity": t.quantity,
             "created_at": t.created_at.isoformat() if t.created_at else None}
            for t in fills or []
        ],
    }


def trades_insert(trades: list[TradeRow]) -> None:
    """The batch's trades and their contracts (open, for the sell order's listing); sets each row's pk. One
    statement on PostgreSQL: the contracts are inserted from the trades' RETURNING."""
    if not trades:
        return
    if connection.vendor != "postgresql":
        made = Trade.objects.bulk_create([
            Trade(**{name: getattr(t, name) for name in _TRADE_COLUMNS}) for t in trades
        ])
        for t, m in zip(trades, made, strict=True):
            t.pk, t.created_at = m.pk, m.created_at  # auto_now_add: the time bulk_create stored
        Contract.objects.bulk_create([
            Contract(trade_id=t.pk, instrument_id=t.instrument_id, buyer_id=t.buyer_id, seller_id=t.seller_id, listing_id=t.listing_id,
                     quantity=t.quantity, price_fen_per_lot=t.price_fen_per_lot, value_fen=t.value_fen, created_at=t.created_at)
            for t in trades
        ])
        return
    with connection.cursor() as cur:
        arrays = [pg_array([getattr(t, name) for t in trades]) for name in (*_TRADE_COLUMNS, "listing_id")]
        cur.execute(_TRADES_SQL, [*arrays, ContractStatus.OPEN.value])
        ids = {(iid, seq): pk for pk, iid, seq in cur.fetchall()}
    for t in trades:
        t.pk = ids[(t.instrument_id, t.seq)]


_TRADE_COLUMNS = (
    "instrument_id", "seq", "maker_order_id", "taker_order_id", "buyer_id", "seller_id", "price_fen_per_lot", "quantity",
    "value_fen", "taker_side", "buyer_fee_fen", "seller_fee_fen", "created_at",
)
_TRADES_SQL = (
    "WITH v AS (SELECT * FROM unnest(%s::bigint[], %s::bigint[], %s::bigint[], %s::bigint[], %s::bigint[], %s::bigint[], "
    "%s::bigint[], %s::integer[], %s::bigint[], %s::varchar(4)[], %s::bigint[], %s::bigint[], %s::timestamptz[], %s::bigint[]) "
    "AS v(instrument_id, seq, maker, taker, buyer, seller, price, qty, value, taker_side, buyer_fee, seller_fee, at, listing)), "
    "t AS (INSERT INTO exchange_trade (instrument_id, seq, maker_order_id, taker_order_id, buyer_id, seller_id, price_fen_per_lot, "
    "quantity, value_fen, taker_side, buyer_fee_fen, seller_fee_fen, created_at) "
    "SELECT instrument_id, seq, maker, taker, buyer, seller, price, qty, value, taker_side, buyer_fee, seller_fee, at FROM v "
    "RETURNING id, instrument_id, seq), "
    "c AS (INSERT INTO exchange_contract (trade_id, instrument_id, buyer_id, seller_id, listing_id, quantity, price_fen_per_lot, "
    "value_fen, status, created_at) "
    "SELECT t.id, v.instrument_id, v.buyer, v.seller, v.listing, v.qty, v.price, v.value, %s, v.at "
    "FROM t JOIN v ON v.instrument_id = t.instrument_id AND v.seq = t.seq) "
    "SELECT id, instrument_id, seq FROM t"
)


def _raises_apply(holds: dict[int, int], capacity: dict[int, int]) -> None:
    """Amends' reservations (Matcher._amend_reservation): holds' amounts (their journal entries are posted
    with the batch's other hold entries) and capacity holds' lots. Amends are few: a statement each."""
    for hold_id, fen in sorted(holds.items()):
        Hold.objects.filter(pk=hold_id).update(amount_fen=F("amount_fen") + fen)
    for order_id, lots in sorted(capacity.items()):
        CapacityHold.objects.filter(order_id=order_id).update(lots=F("lots") + lots)


def capacity_settle(*, sold: dict[int, int], finished: set[int], kept: dict[int, int] | None = None) -> None:
    """Sell orders' capacity holds: add the lots sold in this batch, and for the orders that finished give
    back whatever is neither sold nor released (from the row's current `lots`, which an amend may have
    raised meanwhile); orders in `kept` (order id -> open lots) give back all but those. One statement on
    PostgreSQL."""
    kept = kept or {}
    ids = sorted(set(sold) | finished | set(kept))
    if not ids:
        return
    if connection.vendor == "postgresql":
        with connection.cursor() as cur:
            cur.execute(
                "UPDATE exchange_capacityhold AS c SET sold_lots = c.sold_lots + v.sold, "
                "released_lots = CASE WHEN v.fin THEN c.lots - c.sold_lots - v.sold "
                "WHEN v.keep IS NOT NULL THEN GREATEST(c.released_lots, c.lots - c.sold_lots - v.sold - v.keep) ELSE c.released_lots END "
                "FROM unnest(%s::bigint[], %s::integer[], %s::boolean[], %s::integer[]) AS v(oid, sold, fin, keep) WHERE c.order_id = v.oid",
                [pg_array(ids), pg_array([sold.get(pk, 0) for pk in ids]), pg_array([pk in finished for pk in ids]),
                 pg_array([kept.get(pk) for pk in ids])],
            )
        return
    for pk in ids:
        update = {"sold_lots": F("sold_lots") + sold.get(pk, 0)}
        if pk in finished:
            update["released_lots"] = F("lots") - F("sold_lots") - sold.get(pk, 0)
        elif pk in kept:
            update["released_lots"] = Greatest(F("released_lots"), F("lots") - F("sold_lots") - sold.get(pk, 0) - kept[pk])
        CapacityHold.objects.filter(order_id=pk).update(**update)


def events_insert(events: list[tuple], now) -> None:
    """The batch's order events (the audit trail), one statement on PostgreSQL: rows built from tuples, not
    model instances (a Django model's __init__ was a fifth of a batch's CPU)."""
    if not events:
        return
    if connection.vendor != "postgresql":
        OrderEvent.objects.bulk_create([
            OrderEvent(order=o, kind=k, quantity=q, price_fen_per_lot=p, reason=r, trade_id=t.pk if t is not None else None, actor_id=a, created_at=now)
            for o, k, q, p, r, t, a in events
        ])
        return
    with connection.cursor() as cur:
        cur.execute(
            "INSERT INTO exchange_orderevent (order_id, kind, quantity, price_fen_per_lot, reason, trade_id, actor_id, created_at) "
            "SELECT o, k, q, p, r, t, a, %s FROM unnest(%s::bigint[], %s::varchar(10)[], %s::integer[], %s::bigint[], "
            "%s::varchar(40)[], %s::bigint[], %s::bigint[]) AS v(o, k, q, p, r, t, a)",
            [now, *(pg_array(column) for column in (
                [e[0].id for e in events], [str(e[1]) for e in events], [e[2] for e in events], [e[3] for e in events],
                [e[4] for e in events], [e[5].pk if e[5] is not None else None for e in events], [e[6] for e in events]))],
        )

