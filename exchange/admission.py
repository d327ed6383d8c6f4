"""Admission: the matcher stores a batch's new orders, their holds and their journal entries in the batch's
own transaction (group commit), instead of each web request writing its own.

The web process has validated what it can without the database (fields, tick, lot, band, roles) and sends
a `place` command. Here, per batch and in arrival order:

- idempotency on (organisation, client_order_id): a retry with the same terms answers with the stored order
  (created False), different terms are a conflict (409); two of them in one batch count as a retry;
- the instrument must be open, not halted, before gate closure (the matcher's view is the authority);
- no operator's kill switch may cover it and it must fit the account's risk limits (exchange.risk: from the
  matcher's memory, no SQL);
- a buyer's funds (price x quantity + the maximum fee; market orders at the band's edge) must be available,
  debited in arrival order (read here; the ledger call that posts the batch locks the accounts and re-checks);
- a seller's lots must fit on one of its listings covering the window (listings share-locked, see
  `listing_free_lots_locked`);
- then holds and their journal entries are inserted, a statement per table; orders and capacity holds too on
  SQLite, while on PostgreSQL they get their ids here and are inserted by the matcher after matching, in
  their final state (`store_new_orders`).

A refusal is an answer (the REST 400/409 with the field at fault), never a stored order.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from decimal import ROUND_FLOOR

from django.db import connection

from common.db import bulk_insert_rows, fetch_rows, fetch_together, ids_sql, in_lists, new, pg_array
from exchange import engine as eng
from exchange.books import band_fen_per_lot
from exchange.models import CapacityHold, ListingUsage, Order, OrderType, Side
from ledger import services as ledger
from ledger.models import Account, AccountKind, EntryKind, Hold
from marketplace.models import DeviceModel, Instrument, InstrumentStatus, Listing, MemberRole, Membership, User

# What a place command carries besides op/instrument/organisation/user, and the Order field it fills.
TERMS = ("side", "type", "time_in_force", "price_fen_per_lot", "quantity", "min_quantity", "post_only", "stp", "expires_at")


_DEVICE_RATES: dict[tuple[int, int], object] = {}  # (device model, product) -> one device's units per hour


@dataclass(frozen=True)
class _ListingRow:
    pk: int
    supplier_id: int
    device_count: int
    device_model_id: int


@dataclass(frozen=True)
class _Reads:
    """What Admission._read found for a batch (see there)."""

    traders: set[tuple[int, int]]  # (user, organisation) pairs allowed to trade
    keys: list[tuple]  # (order id, organisation, client order id) already stored
    accounts: list[tuple]  # the buyers' (account id, organisation, kind, balance)
    listings: dict[int, list[tuple]]  # instrument id -> sellers' (listing id, supplier, devices, model, used lots)
    # PostgreSQL: ids for the orders and holds the batch may create (one per place command, per buy); on
    # SQLite empty (the inserts return them)
    order_ids: list[int]
    hold_ids: list[int]


@dataclass
class Refusal:
    status: int
    field: str
    message: str

    def as_reply(self) -> dict:
        return {"op": "place", "error": {"status": self.status, "field": self.field, "message": self.message}}


def max_fee_fen(*, notional_fen: int, instrument: Instrument) -> int:
    """The most fees an order of this notional can be charged: each role's running total is rounded half up
    once, so the sum of the two never exceeds the whole rounded up plus one fen."""
    bps = max(instrument.maker_fee_bps, instrument.taker_fee_bps)
    return -((-notional_fen * bps) // 10_000) + (1 if bps else 0)


def buyer_hold_fen(*, price_fen_per_lot: int, open_lots: int, instrument: Instrument) -> int:
    notional = price_fen_per_lot * open_lots
    return notional + max_fee_fen(notional_fen=notional, instrument=instrument)


def store_new_orders(orders: list[Order], capacity_holds: list[CapacityHold]) -> None:
    """Insert orders admitted with ids from `ids_sql` (in their state after matching), then their capacity
    holds. Neither statement's result is read: in the batch's pipeline they wait for no answer."""
    bulk_insert_rows(Order, orders)
    bulk_insert_rows(CapacityHold, capacity_holds, ids=False)


def _listings_sql(where: str, instrument_id: int, *lists: list, extra: list) -> tuple[str, list]:
    """Listings with the lots each already holds for the instrument (sold or still offered: ListingUsage, which
    the database keeps from the capacity holds), share-locked (see `listing_free_lots_locked`): (id, supplier,
    devices, device model, used lots) per row."""
    return in_lists(
        f"SELECT l.id, l.supplier_id, l.device_count, l.device_model_id, COALESCE((SELECT u.lots "  # nosec B608 # table names from _meta, values are parameters
        f"FROM {ListingUsage._meta.db_table} u WHERE u.listing_id = l.id AND u.instrument_id = %s), 0) "
        f"FROM {Listing._meta.db_table} l WHERE {where} ORDER BY l.id"
        + (" FOR SHARE" if connection.features.has_select_for_update else ""),
        *lists, first=[instrument_id], extra=extra,
    )


def _keys_sql(keys: list[tuple[int, str]]) -> tuple[str, list]:
    """The stored orders with these (organisation, client order id) pairs: (id, organisation, client order id)
    per row. One index lookup per pair (the unique constraint's index): with an IN list per column the index
    was searched for every organisation x client order id of the batch, 12,800 descents for a batch of 128
    orders from 100 organisations (16 ms of PostgreSQL's time, bench/RESULTS.md)."""
    table = Order._meta.db_table
    if connection.vendor == "postgresql":
        return (
            f"SELECT o.id, o.organisation_id, o.client_order_id FROM unnest(%s::bigint[], %s::varchar[]) AS k(org, cid) "  # nosec B608 # table name from _meta, values are parameters
            f"JOIN {table} o ON o.organisation_id = k.org AND o.client_order_id = k.cid",
            [pg_array([org for org, _ in keys]), pg_array([cid for _, cid in keys])],
        )
    return (  # SQLite: a join from a VALUES list searches the index per pair (`(a, b) IN (VALUES ...)` scans the table)
        f"WITH k(org, cid) AS (VALUES {', '.join(['(%s, %s)'] * len(keys))}) "  # nosec B608 # table name from _meta, values are parameters
        f"SELECT o.id, o.organisation_id, o.client_order_id FROM k JOIN {table} o ON o.organisation_id = k.org AND o.client_order_id = k.cid",
        [v for key in keys for v in key],
    )


def _accounts_sql(organisation_ids: list[int]) -> tuple[str, list]:
    return in_lists(
        f"SELECT id, organisation_id, kind, balance_fen FROM {Account._meta.db_table} WHERE organisation_id IN ({{}}) AND kind IN (%s, %s)",  # nosec B608 # table name from _meta, values are parameters
        organisation_ids, extra=[AccountKind.AVAILABLE.value, AccountKind.HELD.value],
    )


def _accounts(rows: list[tuple]) -> tuple[dict[tuple[int, str], int], dict[int, int]]:
    return {(org, kind): pk for pk, org, kind, _ in rows}, {pk: bal for pk, _, _, bal in rows}


def trading_accounts(organisation_ids: list[int]) -> tuple[dict[tuple[int, str], int], dict[int, int]]:
    """The organisations' available and held accounts: ({(organisation id, kind): account id}, {account id:
    balance}). Read, not locked: the ledger call that posts a matcher batch's entries (Matcher._settle_holds)
    locks every account of the batch at once, in id order, and refuses the whole batch if a concurrent debit
    (a payout, another shard) left one short; the loop then retries the batch's commands one by one, so only
    that order is refused. Locking here as well would take two lock phases: a deadlock risk."""
    return _accounts(fetch_rows(*_accounts_sql(organisation_ids)))


def _capacity_lots(listing: _ListingRow, inst: Instrument) -> int:
    """Whole lots of the instrument's product that a listing (a locked row) can deliver in its window, from one
    device's rating (fixed per model and product)."""
    key = (listing.device_model_id, inst.product_id)
    rate = _DEVICE_RATES.get(key)
    if rate is None:
        rate = _DEVICE_RATES[key] = DeviceModel.objects.get(pk=listing.device_model_id).pflops(inst.product.unit)
    units = listing.device_count * rate * inst.window_hours
    return int((units / inst.lot_size).to_integral_value(rounding=ROUND_FLOOR))


def listing_free_lots_locked(listing_id: int, inst: Instrument) -> int:
    """Lots of the listing still free for the instrument: the matcher's check before it raises a capacity
    hold. The row is share-locked until the transaction ends, as in admission: a withdrawal waits for the
    batch, and the batch never reads a listing half withdrawn. A share lock, not FOR UPDATE: capacity is
    counted per instrument, and only the instrument's own shard writes its holds, so the shards whose
    instruments share the listing need not wait for each other (with FOR UPDATE two shards trading one
    product's windows took turns, batch by batch, bench/RESULTS.md)."""
    rows = fetch_rows(*_listings_sql("l.id = %s", inst.pk, extra=[listing_id]))
    if not rows:
        return 0
    pk, supplier, devices, model, used = rows[0]
    return _capacity_lots(_ListingRow(pk, supplier, devices, model), inst) - used


def _parse_expiry(value) -> dt.datetime | None:
    return dt.datetime.fromisoformat(value) if isinstance(value, str) else value


def same_terms(order: Order, command: dict) -> bool:
    return order.instrument_id == command["instrument"] and all(
        getattr(order, name) == (_parse_expiry(command.get(name)) if name == "expires_at" else command.get(name)) for name in TERMS
    )


class Admission:
    """One batch's placements. `admit` returns {command index: Order (new or replayed) | Refusal}."""

    def __init__(self, *, now: dt.datetime, book_for, instrument_for, risk_check=None) -> None:
        self.now = now
        self.risk_check = risk_check  # (command, instrument, market order price) -> Refusal | None (exchange.risk)
        self.book_for = book_for  # instrument id -> engine Book or None (loads it)
        self.instrument_for = instrument_for  # instrument id -> Instrument (after book_for)
        self.entries: list[ledger.EntryRequest] = []  # the new holds' journal entries: posted by the matcher
        # On PostgreSQL the new orders and their capacity holds are not inserted here but by the matcher once
        # it has matched them (Matcher._persist): an order is then written once, in its state after matching,
        # instead of inserted pending and rewritten (a new row version and an entry in each of its indexes).
        self.unstored: list[Order] = []
        self.capacity_holds: list[CapacityHold] = []

    def admit(self, places: list[tuple[int, dict]]) -> tuple[dict[int, Order | Refusal], set[int]]:
        """Returns the outcome per command index and the indexes whose order was created here."""
        outcome: dict[int, Order | Refusal] = {}
        reads = self._read(places)
        allowed = []
        for i, c in places:
            if (c["user"], c["organisation"]) in reads.traders:
                allowed.append((i, c))
            else:
                outcome[i] = Refusal(403, "organisation", "You may not trade for this organisation.")
        existing = self._existing(allowed, reads.keys)
        seen: dict[tuple[int, str], int] = {}
        repeats: list[tuple[int, int, dict]] = []  # (index, index of the first with its key, command)
        fresh: list[tuple[int, dict, Instrument]] = []
        for i, c in allowed:
            key = (c["organisation"], c["client_order_id"])
            stored = existing.get(key)
            if stored is None and key in seen:
                repeats.append((i, seen[key], c))  # answered once the first is placed or refused
                continue
            if stored is not None:
                outcome[i] = stored if same_terms(stored, c) else Refusal(
                    409, "client_order_id", f"client_order_id {c['client_order_id']!r} is already used by order {stored.pk} with different terms."
                )
                continue
            seen[key] = i
            refusal, inst = self._instrument_check(c)
            if refusal is None and self.risk_check is not None:
                refusal = self.risk_check(c, inst, band_fen_per_lot(inst)[1] if c["type"] != OrderType.LIMIT else 0)
            if refusal is not None:
                outcome[i] = refusal
                continue
            fresh.append((i, c, inst))
        holds = self._funds(fresh, outcome, reads.accounts)
        listings = self._capacity(fresh, outcome, reads.listings)
        created = self._insert([(i, c, inst) for i, c, inst in fresh if i not in outcome], holds, listings, outcome, reads)
        for i, first, c in repeats:  # a retry inside the batch: the first's answer, or a conflict
            placed = outcome[first]
            if isinstance(placed, Refusal) or same_terms(placed, c):
                outcome[i] = placed
            else:
                outcome[i] = Refusal(409, "client_order_id", f"client_order_id {c['client_order_id']!r} is already used by order {placed.pk} with different terms.")
        return outcome, created

    # --- reads ---------------------------------------------------------------------------------------

    def _read(self, places: list[tuple[int, dict]]) -> _Reads:
        """Everything the checks read, for every place command of the batch, in one round trip: who may trade
        for whom, the client order ids already used, the buyers' trading accounts and the sellers' listings
        (share-locked) with the lots they already hold per instrument; on PostgreSQL also ids for the orders
        and holds the batch may create. Memberships are read here, in the
        transaction that stores the orders, so a revoked trader cannot slip one in. The reads cover every
        command, even one that a check will refuse before its turn; only the commands that pass use them.
        The lots held are read as the listings are locked: only this instrument's shard writes them."""
        commands = [c for _, c in places]
        users = sorted({c["user"] for c in commands})
        orgs = sorted({c["organisation"] for c in commands})
        buyers = sorted({c["organisation"] for c in commands if c["side"] == Side.BUY})
        sellers: dict[int, set[int]] = {}  # instrument id -> selling organisations
        for c in commands:
            if c["side"] == Side.SELL:
                sellers.setdefault(c["instrument"], set()).add(c["organisation"])
        windows = []  # (instrument, its sellers): open instruments only (the others are refused before)
        for iid in sorted(sellers):
            if self.book_for(iid) is not None:
                windows.append((self.instrument_for(iid), sorted(sellers[iid])))
        pg = connection.vendor == "postgresql"
        rows = fetch_together([
            ids_sql(Order, len(commands)) if pg else None,
            ids_sql(Hold, sum(1 for c in commands if c["side"] == Side.BUY)) if pg and buyers else None,
            in_lists(
                f"SELECT m.user_id, m.organisation_id FROM {Membership._meta.db_table} m JOIN {User._meta.db_table} u ON u.id = m.user_id "  # nosec B608 # table names from _meta, values are parameters
                "WHERE m.user_id IN ({}) AND m.organisation_id IN ({}) AND m.role IN (%s, %s) AND u.is_active",
                users, orgs, extra=[MemberRole.ADMIN.value, MemberRole.TRADER.value],
            ),
            _keys_sql(sorted({(c["organisation"], c["client_order_id"]) for c in commands})),
            _accounts_sql(buyers) if buyers else None,
            *(
                _listings_sql(
                    "l.supplier_id IN ({}) AND l.product_id = %s AND l.is_active AND l.available_from <= %s AND l.available_until >= %s",
                    inst.pk, suppliers,
                    extra=[inst.product_id, *(connection.ops.adapt_datetimefield_value(t) for t in (inst.delivery_start, inst.delivery_end))],
                )
                for inst, suppliers in windows
            ),
        ])
        order_ids, hold_ids = ([pk for (pk,) in r] for r in rows[:2])
        rows = rows[2:]
        return _Reads(
            traders=set(rows[0]), keys=rows[1], accounts=rows[2],
            listings={inst.pk: rows[3 + n] for n, (inst, _) in enumerate(windows)},
            order_ids=order_ids, hold_ids=hold_ids,
        )

    # --- checks --------------------------------------------------------------------------------------

    def _existing(self, places: list[tuple[int, dict]], keys: list[tuple]) -> dict[tuple[int, str], Order]:
        """The stored orders of the places' (organisation, client_order_id), from `keys`: (id, organisation,
        client order id) rows read for the batch's pairs of them."""
        wanted = {(c["organisation"], c["client_order_id"]) for _, c in places}
        found = [pk for pk, org, cid in keys if (org, cid) in wanted]
        if not found:  # the usual case: a retry is rare, and only then are whole orders read
            return {}
        return {(o.organisation_id, o.client_order_id): o for o in Order.objects.filter(pk__in=found).select_related("hold")}

    def _instrument_check(self, c: dict) -> tuple[Refusal | None, Instrument | None]:
        book = self.book_for(c["instrument"])
        inst = self.instrument_for(c["instrument"]) if book is not None else Instrument.objects.filter(pk=c["instrument"]).first()
        if inst is None:
            return Refusal(400, "instrument", f"Invalid pk \"{c['instrument']}\" - object does not exist."), None
        if (book.status == eng.Status.HALTED) if book is not None else inst.status == InstrumentStatus.HALTED:
            return Refusal(400, "instrument", f"Trading in {inst.code} is halted."), None
        if book is None or inst.gate_closure <= self.now:
            return Refusal(400, "instrument", f"{inst.code} is not open for trading (status {inst.status}, gate closure {inst.gate_closure:%Y-%m-%d %H:%M %Z})."), None
        return None, inst

    def _funds(self, fresh, outcome, account_rows: list[tuple]) -> dict[int, int]:
        """Hold amount per command index for the buys that are funded; refuses the others."""
        buys = [(i, c, inst) for i, c, inst in fresh if c["side"] == Side.BUY]
        if not buys:
            return {}
        orgs = sorted({c["organisation"] for _, c, _ in buys})
        accounts, balance = _accounts(account_rows)
        for org in orgs:
            if (org, AccountKind.AVAILABLE) not in accounts or (org, AccountKind.HELD) not in accounts:
                from marketplace.models import Organisation

                opened = ledger.accounts_open(organisation=Organisation.objects.get(pk=org))
                for kind in (AccountKind.AVAILABLE, AccountKind.HELD):
                    accounts[(org, kind)] = opened[kind].pk
                    balance[opened[kind].pk] = opened[kind].balance_fen
        amounts: dict[int, int] = {}
        self.accounts = accounts
        for i, c, inst in buys:
            price = c["price_fen_per_lot"] if c["type"] == OrderType.LIMIT else band_fen_per_lot(inst)[1]
            amount = buyer_hold_fen(price_fen_per_lot=price, open_lots=c["quantity"], instrument=inst)
            available = accounts[(c["organisation"], AccountKind.AVAILABLE)]
            if balance[available] < amount:
                short, have = amount - balance[available], balance[available]
                outcome[i] = Refusal(400, "amount", f"Insufficient funds in available: short by {short // 100}.{short % 100:02d} CNY (balance {have // 100}.{have % 100:02d} CNY).")
                continue
            balance[available] -= amount
            amounts[i] = amount
        return amounts

    def _capacity(self, fresh, outcome, listing_rows: dict[int, list[tuple]]) -> dict[int, int]:
        """Listing id per command index for the sells that fit; refuses the others."""
        sells = [(i, c, inst) for i, c, inst in fresh if c["side"] == Side.SELL]
        if not sells:
            return {}
        chosen: dict[int, int] = {}
        for inst_id in sorted({c["instrument"] for _, c, _ in sells}):
            group = [(i, c, inst) for i, c, inst in sells if c["instrument"] == inst_id]
            inst = group[0][2]
            rows = listing_rows[inst_id]  # share-locked for the batch (see listing_free_lots_locked)
            listings = [_ListingRow(pk, supplier, count, model) for pk, supplier, count, model, _ in rows]
            free = {x.pk: _capacity_lots(x, inst) - used for x, (*_, used) in zip(listings, rows, strict=True)}
            by_org: dict[int, list[_ListingRow]] = {}
            for listing in listings:
                by_org.setdefault(listing.supplier_id, []).append(listing)
            for i, c, _ in group:
                mine = by_org.get(c["organisation"], [])
                if c.get("listing") is not None:
                    mine = [x for x in mine if x.pk == c["listing"]]
                    if not mine:
                        outcome[i] = Refusal(400, "listing", "That listing does not offer this product for the whole delivery window.")
                        continue
                if not mine:
                    outcome[i] = Refusal(400, "quantity", f"You have no active listing of {inst.product.code} covering {inst.code}'s delivery window.")
                    continue
                fit = next((x for x in mine if free[x.pk] >= c["quantity"]), None)
                if fit is None:
                    most = max(max(free[x.pk], 0) for x in mine)
                    outcome[i] = Refusal(400, "quantity", f"Not enough listed capacity: at most {most} lots free on one listing for this window.")
                    continue
                free[fit.pk] -= c["quantity"]
                chosen[i] = fit.pk
        return chosen

    # --- writes --------------------------------------------------------------------------------------

    def _insert(self, admitted, holds: dict[int, int], listings: dict[int, int], outcome, reads: _Reads) -> set[int]:
        if not admitted:
            return set()
        hold_rows, memos = [], []
        for i, c, inst in admitted:
            if i in holds:
                hold_rows.append(new(Hold, organisation_id=c["organisation"], reference=f"order:{c['organisation']}:{c['client_order_id']}", amount_fen=holds[i]))
                memos.append(f"order {c['client_order_id']} on {inst.code}")
        hold_ids: dict[str, int] = {}
        if hold_rows:
            if reads.hold_ids:  # PostgreSQL: ids read with the checks' reads, so the insert waits for no answer
                for h, pk in zip(hold_rows, reads.hold_ids[:len(hold_rows)], strict=True):
                    h.pk = pk
            bulk_insert_rows(Hold, hold_rows)
            hold_ids = {h.reference: h.pk for h in hold_rows}
            # Posted with the batch's captures and releases (Matcher._settle_holds): one ledger call.
            self.entries = ([
                ledger.EntryRequest(
                    idempotency_key=f"hold:{h.reference}:place", kind=EntryKind.HOLD, reference=h.reference,
                    postings=[(self.accounts[(h.organisation_id, AccountKind.AVAILABLE)], -h.amount_fen), (self.accounts[(h.organisation_id, AccountKind.HELD)], h.amount_fen)],
                    memo=memo,
                )
                for h, memo in zip(hold_rows, memos, strict=True)
            ])
        orders = []
        for i, c, _ in admitted:
            reference = f"order:{c['organisation']}:{c['client_order_id']}"
            orders.append(new(
                Order,
                instrument_id=c["instrument"], organisation_id=c["organisation"], user_id=c["user"], client_order_id=c["client_order_id"],
                side=c["side"], type=c["type"], time_in_force=c["time_in_force"], price_fen_per_lot=c["price_fen_per_lot"],
                quantity=c["quantity"], open_quantity=c["quantity"], min_quantity=c["min_quantity"], post_only=c["post_only"],
                stp=c["stp"], expires_at=_parse_expiry(c.get("expires_at")), hold_id=hold_ids.get(reference), listing_id=listings.get(i),
            ))
        if reads.order_ids:  # PostgreSQL: ids now, rows after matching (see __init__)
            for o, pk in zip(orders, reads.order_ids[:len(orders)], strict=True):
                o.pk, o.created_at = pk, self.now
            self.unstored = orders
        else:
            bulk_insert_rows(Order, orders)
            if any(o.pk is None for o in orders):  # SQLite >= 3.35 returns them
                raise RuntimeError("the database did not return the new orders' ids")
        self.capacity_holds = [
            new(CapacityHold, listing_id=o.listing_id, order_id=o.pk, instrument_id=o.instrument_id, lots=o.quantity)
            for o in orders if o.listing_id is not None
        ]
        if not self.unstored:
            bulk_insert_rows(CapacityHold, self.capacity_holds, ids=False)
        created = set()
        for (i, _, _), order in zip(admitted, orders, strict=True):
            outcome[i] = order
            created.add(i)
        return created
