"""The order serializer builds its fields once per thread (common.api.ReusedFieldsMixin): each validation must
still see only its own input, errors and result, in one thread and across threads."""

import threading

import pytest

from exchange.api.serializers import OrderInSerializer

pytestmark = pytest.mark.django_db


def _body(instrument, **fields):
    return {"instrument": instrument.pk, "side": "buy", "price": "14.00", "quantity": 1, "client_order_id": "c1"} | fields


def test_one_after_another_each_validation_sees_only_its_own_input(market_setup):
    inst = market_setup["instrument"]
    bad = OrderInSerializer(data=_body(inst, quantity=0, colour="red"))
    assert not bad.is_valid() and bad.errors == {"colour": ["Unknown field."]}
    bad = OrderInSerializer(data=_body(inst, quantity=0))
    assert not bad.is_valid() and bad.errors == {"quantity": ["Ensure this value is greater than or equal to 1."]}
    good = OrderInSerializer(data=_body(inst, side="sell", time_in_force="IOC", client_order_id="c2"))
    assert good.is_valid(), good.errors
    assert (good.validated_data["side"], good.validated_data["time_in_force"], good.validated_data["quantity"]) == ("sell", "IOC", 1)
    assert good.validated_data["post_only"] is False and "expires_at" not in good.validated_data
    again = OrderInSerializer(data=_body(inst, client_order_id="bad id!"))
    assert not again.is_valid() and list(again.errors) == ["client_order_id"]
    assert good.validated_data["client_order_id"] == "c2"  # an earlier result is not touched by a later one
    assert OrderInSerializer().fields is OrderInSerializer().fields  # built once in this thread


def test_threads_validating_at_once_each_get_their_own_answer(market_setup):
    inst = market_setup["instrument"]
    assert OrderInSerializer(data=_body(inst)).is_valid()  # the instrument is in the process cache: no query in threads
    results: dict[int, object] = {}

    def work(i: int) -> None:
        out = []
        for j in range(200):
            s = OrderInSerializer(data=_body(inst, quantity=i * 1000 + j if j % 3 else 0, client_order_id=f"t{i}-{j}"))
            out.append(s.validated_data["quantity"] if s.is_valid() else "invalid")
        results[i] = out

    threads = [threading.Thread(target=work, args=(i,)) for i in range(1, 5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(1, 5):
        assert results[i] == [i * 1000 + j if j % 3 else "invalid" for j in range(200)]
