"""PostgreSQL: concurrent retries of one order place it once and hold its funds once."""

import threading

import pytest
from django.db import connections

from exchange import services
from exchange.models import Order
from ledger.models import Hold
from ledger.selectors import balances_get

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


def test_concurrent_retries_of_one_client_order_id_place_one_order(market_setup):
    m = market_setup
    barrier = threading.Barrier(6)
    ids, errors = [], []

    def attempt(side: str) -> None:
        org, user = (m["buyer"], m["buyer_user"]) if side == "buy" else (m["supplier"], m["seller_user"])
        req = services.OrderRequest(instrument=m["instrument"], side=side, quantity=3, client_order_id=f"same-{side}",
                                    price=m["instrument"].reference_price + (m["instrument"].tick_size if side == "sell" else 0))  # no cross
        barrier.wait()
        try:
            placed = services.order_place(user=user, organisation=org, request=req)
            ids.append((side, placed.state["id"]))
        except Exception as exc:  # pragma: no cover - reported by the assertion below
            errors.append(repr(exc))
        finally:
            connections.close_all()

    threads = [threading.Thread(target=attempt, args=(side,)) for side in ["buy"] * 3 + ["sell"] * 3]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len({pk for side, pk in ids if side == "buy"}) == 1 and len({pk for side, pk in ids if side == "sell"}) == 1
    assert Order.objects.count() == 2 and Hold.objects.count() == 1
    assert balances_get(organisation=m["buyer"])["held"] == 4_506  # 45.00 + max fee (0.045 up to 0.05, +0.01), once
    assert Order.objects.get(side="sell").capacity_hold.lots == 3
