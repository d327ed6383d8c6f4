"""exchange.selectors.book_depths_get: the committed books of many instruments in one statement, equal to
book_depth_get per instrument, and (on PostgreSQL) never levels from another moment than the sequence number."""

from __future__ import annotations

import random
import threading

import pytest
from django.db import connection, connections, transaction
from django.db.models import F

from exchange import selectors
from exchange.models import BookState, Order, OrderStatus, Side
from marketplace import services as market
from marketplace.models import Instrument
from tests.factories import OrganisationFactory, ProductFactory, member


def _books(n_instruments: int, seed: int = 7) -> list[Instrument]:
    ProductFactory(code="AI-TRAIN")
    market.instruments_roll()
    instruments = list(Instrument.objects.order_by("pk")[:n_instruments])
    org = OrganisationFactory(kind="both")
    user = member(org, role="trader")
    rng = random.Random(seed)
    orders, n = [], 0
    for i, inst in enumerate(instruments):
        if i == 0:
            continue  # an empty book, with no book state row either
        BookState.objects.create(instrument=inst, book_seq=rng.randint(1, 10_000))
        for _ in range(rng.randint(1, 25)):
            n += 1
            qty = rng.randint(1, 9)
            status = rng.choice([OrderStatus.OPEN] * 4 + [OrderStatus.FILLED, OrderStatus.CANCELLED])
            orders.append(Order(instrument=inst, organisation=org, user=user, client_order_id=f"o{n}", side=rng.choice([Side.BUY, Side.SELL]),
                                price_fen_per_lot=rng.randint(1400, 1420), quantity=qty, open_quantity=qty if status == OrderStatus.OPEN else 0,
                                status=status))
    Order.objects.bulk_create(orders)
    return instruments


@pytest.mark.django_db
def test_bulk_depths_equal_the_single_reads(monkeypatch):
    instruments = _books(6)
    assert len(instruments) >= 3
    monkeypatch.setattr(selectors, "BULK_CHUNK", 2)  # several statements
    for depth in (None, 1, 3):
        bulk = selectors.book_depths_get(instrument_ids=[i.pk for i in instruments], depth=depth)
        assert set(bulk) == {i.pk for i in instruments}
        for inst in instruments:
            assert bulk[inst.pk] == selectors.book_depth_get(instrument=inst, depth=depth), inst.code
    empty = bulk[instruments[0].pk]
    assert empty == {"seq": 0, "bids": [], "asks": [], "checksum": selectors.checksum([], [])}
    assert any(bulk[i.pk]["asks"] and bulk[i.pk]["bids"] for i in instruments)
    assert selectors.book_depths_get(instrument_ids=[]) == {}


@pytest.mark.django_db
def test_bulk_depths_use_one_statement(django_assert_num_queries):
    instruments = _books(4)
    with django_assert_num_queries(1):
        selectors.book_depths_get(instrument_ids=[i.pk for i in instruments])


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_bulk_depths_never_mix_moments_under_a_writer():
    """A writer in the matcher's pattern (order rows and the book state in one transaction) takes one lot
    off the ask queue and adds one to the sequence number, over and over: every read must see asks + seq
    constant per instrument."""
    instruments = _books(4)
    books = [i for i in instruments if BookState.objects.filter(instrument=i).exists()]
    start = {i.pk: selectors.book_depth_get(instrument=i) for i in books}
    constant = {pk: sum(q for _, q in d["asks"]) + d["seq"] for pk, d in start.items()}
    asks = {i.pk: list(Order.objects.filter(instrument=i, side=Side.SELL, status=OrderStatus.OPEN).values_list("pk", flat=True)) for i in books}
    stop = threading.Event()
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            for _ in range(60):
                for pk in sorted(asks, reverse=True):  # the opposite order to the reader's
                    order_id = next((o for o in asks[pk] if Order.objects.filter(pk=o, open_quantity__gt=1).exists()), None)
                    if order_id is None:
                        continue
                    with transaction.atomic():
                        Order.objects.filter(pk=order_id).update(open_quantity=F("open_quantity") - 1)
                        BookState.objects.filter(instrument_id=pk).update(book_seq=F("book_seq") + 1)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)
        finally:
            stop.set()
            connections.close_all()

    thread = threading.Thread(target=writer)
    thread.start()
    reads = 0
    while not stop.is_set() or reads < 5:
        got = selectors.book_depths_get(instrument_ids=list(constant))
        reads += 1
        for pk, d in got.items():
            assert sum(q for _, q in d["asks"]) + d["seq"] == constant[pk], f"levels and seq from different moments (read {reads})"
    thread.join()
    assert not errors, errors
    end = selectors.book_depths_get(instrument_ids=list(constant))
    assert any(end[pk]["seq"] > start[pk]["seq"] for pk in constant), "the writer changed nothing"
    assert connection.vendor == "postgresql"

