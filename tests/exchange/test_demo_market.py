"""The demo seed leaves a two-sided market on the next window of every product, placed through the matcher."""

import pytest
from django.core.management import call_command

from exchange.models import Order
from ledger.verify import ledger_verify
from marketplace.models import Product

pytestmark = pytest.mark.django_db


def test_seed_demo_places_resting_bids_and_asks_once(django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        call_command("seed_demo", stdout=open("/dev/null", "w"))
    orders = Order.objects.filter(client_order_id__startswith="demo-")
    assert set(orders.values_list("status", flat=True)) == {"open"}
    for product in Product.objects.filter(listings__is_active=True).distinct():
        sides = set(orders.filter(instrument__product=product).values_list("side", flat=True))
        assert sides == {"buy", "sell"}, product.code
    best_bid = max(orders.filter(side="buy").values_list("price_fen_per_lot", flat=True))
    assert best_bid > 0
    count = orders.count()
    with django_capture_on_commit_callbacks(execute=True):
        call_command("seed_demo", stdout=open("/dev/null", "w"))
    assert Order.objects.filter(client_order_id__startswith="demo-").count() == count
    assert ledger_verify().ok
