"""common.db.new: the matcher's fast constructor must leave an instance exactly as `Model(**values)` would, or
hand the call to `Model.__init__` when it cannot."""

import pytest
from django.db.models import signals

from common.db import new
from exchange.models import CapacityHold, Order, OrderStatus, OrderType
from ledger.models import Hold, HoldStatus
from vouchers.models import Programme

ORDER = dict(
    instrument_id=1, organisation_id=2, user_id=3, client_order_id="c-1", side="buy", price_fen_per_lot=1200,
    quantity=5, open_quantity=5, hold_id=7, listing_id=None, expires_at=None,
)


def without_init(monkeypatch, model):
    """The fast way or none: Model.__init__ refuses to run."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"{model.__name__}.__init__ called")
    monkeypatch.setattr(model, "__init__", refuse)


def attributes(obj) -> dict:
    return {k: v for k, v in vars(obj).items() if k != "_state"}


@pytest.mark.parametrize(("model", "values"), [
    (Order, ORDER),
    (Order, {}),
    (Hold, dict(organisation_id=4, reference="order:4:c-1", amount_fen=10_000)),
    (Hold, dict(id=9, organisation_id=4, reference="r", amount_fen=1, captured_fen=1, released_fen=0, status=HoldStatus.CLOSED)),
    (CapacityHold, dict(listing_id=1, order_id=2, instrument_id=3, lots=4)),
])
def test_an_instance_made_by_new_equals_one_made_by_the_model(model, values, monkeypatch):
    slow = model(**values)
    without_init(monkeypatch, model)
    fast = new(model, **values)
    assert type(fast) is model
    assert attributes(fast) == attributes(slow)
    assert fast._state.adding and fast._state.db is None and not fast._state.fields_cache


def test_defaults_are_the_models_and_given_values_win():
    order = new(Order, **ORDER)
    assert order.pk is None
    assert (order.type, order.status, order.filled_quantity, order.reason) == (OrderType.LIMIT, OrderStatus.PENDING, 0, "")
    assert (order.price_fen_per_lot, order.hold_id) == (1200, 7)
    order.pk = 11
    assert order.id == 11


def test_computed_defaults_are_computed_for_each_instance(monkeypatch):
    without_init(monkeypatch, Programme)
    a, b = new(Programme, name="A"), new(Programme, name="B")
    assert a.eligible_regions == [] and b.eligible_regions == []
    a.eligible_regions.append("Shanghai")
    assert b.eligible_regions == []


def test_a_keyword_that_is_not_a_field_is_refused_as_the_model_refuses_it():
    with pytest.raises(TypeError, match="unexpected keyword"):
        new(Order, colour="red")


def test_models_with_init_receivers_get_their_receivers_called():
    seen = []

    def receiver(sender, instance, **kwargs):
        seen.append(instance)

    signals.post_init.connect(receiver, sender=CapacityHold)
    try:
        obj = new(CapacityHold, lots=1)
    finally:
        signals.post_init.disconnect(receiver, sender=CapacityHold)
    assert seen == [obj]
