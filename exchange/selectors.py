"""Exchange reads: own orders and fills, the public tape, the committed book, ticker and candles."""

from __future__ import annotations

import datetime as dt
import time
from collections import defaultdict
from zlib import crc32

from django.db import connection, transaction
from django.db.models import Count, Max, Min, Prefetch, Q, QuerySet, Sum

from common.api import id_of
from exchange.models import BookState, Order, OrderStatus, Side, Trade
from marketplace.models import Instrument, MemberRole, Organisation, User
from marketplace.selectors import NotAMember, acting_organisation, organisation_ids_for_user

TRADING_ROLES = (MemberRole.ADMIN, MemberRole.TRADER)

INSTRUMENT_CACHE_SECONDS = 2.0
_instruments: dict[int, tuple[float, Instrument]] = {}


def instrument_get_cached(pk: int) -> Instrument | None:
    """An instrument with its product, read at most every INSTRUMENT_CACHE_SECONDS per process: order entry
    validates the trading rules (tick, lot, band) from it on every request. Status and gate closure are
    checked again by the matcher, which is the authority on them."""
    now = time.monotonic()
    hit = _instruments.get(pk)
    if hit is not None and now - hit[0] < INSTRUMENT_CACHE_SECONDS:
        return hit[1]
    instrument = Instrument.objects.select_related("product").filter(pk=pk).first()
    if instrument is None:
        _instruments.pop(pk, None)
        return None
    _instruments[pk] = (now, instrument)
    return instrument


TRADER_CACHE_SECONDS = 60.0
_trading: dict[int, tuple[float, list[Organisation]]] = {}


def trading_organisation_get(user: User, organisation_id: int | str | None) -> Organisation:
    """`acting_organisation` for order entry (roles admin or trader), the user's memberships read at most every
    TRADER_CACHE_SECONDS per process (and again before refusing, so a new membership counts at once). Safe
    to cache: the matcher checks the membership again in the transaction that stores the order, so a
    revoked trader's order is refused (403) at once."""
    if not user.is_authenticated:
        return acting_organisation(user, organisation_id, TRADING_ROLES)
    now = time.monotonic()
    hit = _trading.get(user.pk)
    fresh = hit is None or now - hit[0] >= TRADER_CACHE_SECONDS
    if fresh:
        hit = _trading[user.pk] = (now, _trading_organisations(user))
    orgs = hit[1]
    wanted = None if organisation_id in (None, "") else id_of(organisation_id)
    if not fresh and (not orgs or (wanted is not None and all(o.pk != wanted for o in orgs))):
        # A membership added since the cache was filled: look again before refusing.
        orgs = _trading_organisations(user)
        _trading[user.pk] = (now, orgs)
    if organisation_id in (None, ""):
        if len(orgs) == 1:
            return orgs[0]
        if not orgs:
            raise NotAMember("You are not a member of an organisation that may do this.")
        raise NotAMember("You belong to several organisations: say which with `organisation`.", ambiguous=True)
    if wanted is None:
        raise NotAMember("`organisation` must be an organisation id.", ambiguous=True)
    for org in orgs:
        if org.pk == wanted:
            return org
    raise NotAMember("No such organisation among yours.")


def _trading_organisations(user: User) -> list[Organisation]:
    # Raw SQL: a cache miss per trader and process; through the ORM it cost 1.6 ms of CPU, most of it compiling.
    return list(Organisation.objects.raw(
        "SELECT o.* FROM marketplace_organisation o JOIN marketplace_membership m ON m.organisation_id = o.id "
        "WHERE m.user_id = %s AND m.role IN (%s, %s) ORDER BY o.id",
        [user.pk, *(str(r.value) for r in TRADING_ROLES)],
    ))


def caches_clear() -> None:
    """Forget the per-process caches of order entry (tests: ids are reused from one test to the next)."""
    _instruments.clear()
    _trading.clear()


def order_with_fills() -> QuerySet[Order]:
    return Order.objects.select_related("instrument").prefetch_related(
        Prefetch("maker_trades", queryset=Trade.objects.select_related("instrument")),
        Prefetch("taker_trades", queryset=Trade.objects.select_related("instrument")),
    )


def order_list_for_user(user: User) -> QuerySet[Order]:
    """A member sees its organisations' orders; regulators and operators see all (read-only)."""
    qs = order_with_fills()
    if user.is_authenticated and (user.is_regulator or user.is_operator):
        return qs
    return qs.filter(organisation_id__in=organisation_ids_for_user(user))


def fill_list_for_user(user: User) -> QuerySet[Trade]:
    orgs = organisation_ids_for_user(user)
    return Trade.objects.filter(Q(buyer_id__in=orgs) | Q(seller_id__in=orgs)).select_related("instrument", "maker_order", "taker_order")


def checksum(bids: list[tuple[int, int]], asks: list[tuple[int, int]], depth: int = 10) -> int:
    """The engine's book checksum (see exchange.engine.Book.checksum) over committed levels."""
    parts: list[str] = []
    bids, asks = bids[:depth], asks[:depth]
    for i in range(max(len(bids), len(asks))):
        if i < len(bids):
            parts.append(f"{bids[i][0]}:{bids[i][1]}")
        if i < len(asks):
            parts.append(f"{asks[i][0]}:{asks[i][1]}")
    return crc32(":".join(parts).encode("ascii"))


def book_depth_get(*, instrument: Instrument, depth: int | None = None) -> dict:
    """The committed book: price levels from resting orders, with the sequence number they correspond to.
    The book state row is read first under a share lock, so the matcher cannot commit between the two
    reads and the levels always match the sequence number."""
    with transaction.atomic():
        state = _locked_state(instrument)
        rows = (
            Order.objects.filter(instrument=instrument, status=OrderStatus.OPEN)
            .values("side", "price_fen_per_lot").annotate(quantity=Sum("open_quantity"))
        )
        levels = defaultdict(list)
        for row in rows:
            levels[row["side"]].append((row["price_fen_per_lot"], row["quantity"]))
    bids = sorted(levels[Side.BUY], key=lambda level: -level[0])
    asks = sorted(levels[Side.SELL], key=lambda level: level[0])
    full_checksum = checksum(bids, asks)
    if depth is not None:
        bids, asks = bids[:depth], asks[:depth]
    return {"seq": state.book_seq if state else 0, "bids": bids, "asks": asks, "checksum": full_checksum}


BULK_CHUNK = 300  # instruments per statement (SQLite allows 999 parameters before 3.32)


def book_depths_get(*, instrument_ids: list[int], depth: int | None = None) -> dict[int, dict]:
    """`book_depth_get` for many instruments in one statement per BULK_CHUNK of them: {instrument id: the
    same dict}. Each instrument's levels match its sequence number because the book states and the
    aggregated resting orders are read by ONE statement, hence from one snapshot (PostgreSQL's READ
    COMMITTED takes a snapshot per statement; SQLite's reads are serialised), and the matcher commits a
    batch's order rows and book state in one transaction. No row locks: share locks on many book states
    could deadlock with a matcher batch updating several of them in another order."""
    ids = sorted({int(pk) for pk in instrument_ids})
    orders, states = Order._meta.db_table, BookState._meta.db_table
    levels: dict[int, dict[str, list[tuple[int, int]]]] = {pk: {Side.BUY: [], Side.SELL: []} for pk in ids}
    seqs: dict[int, int] = {}
    for at in range(0, len(ids), BULK_CHUNK):
        chunk = ids[at:at + BULK_CHUNK]
        marks = ", ".join(["%s"] * len(chunk))
        sql = (
            f"SELECT instrument_id, side, price_fen_per_lot, SUM(open_quantity), NULL FROM {orders} "  # nosec B608 # table names from _meta, ids are parameters
            f"WHERE instrument_id IN ({marks}) AND status = %s GROUP BY instrument_id, side, price_fen_per_lot "
            f"UNION ALL SELECT instrument_id, NULL, NULL, NULL, book_seq FROM {states} WHERE instrument_id IN ({marks})"
        )
        with connection.cursor() as cur:
            cur.execute(sql, [*chunk, OrderStatus.OPEN.value, *chunk])
            for inst_id, side, price, quantity, seq in cur.fetchall():
                if side is None:
                    seqs[inst_id] = seq
                else:
                    levels[inst_id][side].append((price, int(quantity)))
    out = {}
    for pk in ids:
        bids = sorted(levels[pk][Side.BUY], key=lambda level: -level[0])
        asks = sorted(levels[pk][Side.SELL], key=lambda level: level[0])
        full_checksum = checksum(bids, asks)
        if depth is not None:
            bids, asks = bids[:depth], asks[:depth]
        out[pk] = {"seq": seqs.get(pk, 0), "bids": bids, "asks": asks, "checksum": full_checksum}
    return out


def _locked_state(instrument: Instrument) -> BookState | None:
    if connection.vendor == "postgresql":
        # FOR SHARE until the levels are read: the matcher updates this row in each batch that changes the
        # book, so it cannot commit in between; readers do not block each other.
        rows = list(BookState.objects.raw("SELECT * FROM exchange_bookstate WHERE instrument_id = %s FOR SHARE", [instrument.pk]))
        return rows[0] if rows else None
    return BookState.objects.filter(instrument=instrument).first()  # SQLite transactions are serialised


def ticker_get(*, instrument: Instrument, now: dt.datetime) -> dict:
    """The last 24 hours summed by the database: the tape's rows are not loaded (a busy instrument's day of
    trades was read into the web process on every request)."""
    since = now - dt.timedelta(hours=24)
    trades = Trade.objects.filter(instrument=instrument)
    totals = trades.filter(created_at__gte=since).aggregate(
        high=Max("price_fen_per_lot"), low=Min("price_fen_per_lot"), volume=Sum("quantity"), value=Sum("value_fen"),
        trades=Count("id"), first_seq=Min("seq"))
    # The day's first trade by its sequence number (one index lookup, not a second pass over the day).
    opening = None if totals["first_seq"] is None else trades.filter(seq=totals["first_seq"]).values_list("price_fen_per_lot", flat=True).first()
    last = trades.order_by("-seq").values_list("price_fen_per_lot", flat=True).first()
    book = book_depth_get(instrument=instrument, depth=1)
    return {
        "last": last,
        "best_bid": book["bids"][0][0] if book["bids"] else None,
        "best_ask": book["asks"][0][0] if book["asks"] else None,
        "open_24h": opening,
        "high_24h": totals["high"],
        "low_24h": totals["low"],
        "volume_24h": totals["volume"] or 0,
        "value_24h_fen": totals["value"] or 0,
        "trades_24h": totals["trades"],
    }


INTERVALS = {"1m": 60, "5m": 300, "15m": 900, "1h": 3600, "1d": 86400}


def candles_get(*, instrument: Instrument, interval: str, since: dt.datetime, until: dt.datetime) -> list[dict]:
    """OHLC candles from the tape, aligned to the interval (UTC epoch buckets)."""
    seconds = INTERVALS[interval]
    buckets: dict[int, dict] = {}
    rows = Trade.objects.filter(instrument=instrument, created_at__gte=since, created_at__lt=until).order_by("seq")
    for at, price, qty in rows.values_list("created_at", "price_fen_per_lot", "quantity").iterator():
        start = int(at.timestamp()) // seconds * seconds
        c = buckets.get(start)
        if c is None:
            buckets[start] = {"start": start, "open": price, "high": price, "low": price, "close": price, "volume": qty, "trades": 1}
        else:
            c["high"] = max(c["high"], price)
            c["low"] = min(c["low"], price)
            c["close"] = price
            c["volume"] += qty
            c["trades"] += 1
    return [buckets[k] for k in sorted(buckets)]
