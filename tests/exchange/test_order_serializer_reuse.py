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


def _variants(inst) -> list[dict]:
    """Orders as clients send them, plain and otherwise: every field's usual forms and its edge cases."""
    base = _body(inst)
    changes = [
        {}, {"side": "sell"}, {"side": "SELL"}, {"side": 1}, {"side": None},
        {"type": "market"}, {"type": "market", "price": None}, {"type": "stop"}, {"type": None},
        {"price": "14"}, {"price": "14.5"}, {"price": "14.1234"}, {"price": "14.12345"}, {"price": "0.0001"}, {"price": "0"},
        {"price": "1234567890.1234"}, {"price": "12345678901"}, {"price": "0000000014.00"}, {"price": " 14.00 "}, {"price": "-14.00"},
        {"price": "1e3"}, {"price": "NaN"}, {"price": "Infinity"}, {"price": 14}, {"price": 14.5}, {"price": None}, {"price": ""},
        {"price": "14,00"}, {"price": True}, {"price": "14.00\n"},
        {"quantity": 1}, {"quantity": 2**40}, {"quantity": 0}, {"quantity": -3}, {"quantity": "5"}, {"quantity": 5.0}, {"quantity": 5.5},
        {"quantity": True}, {"quantity": None},
        {"time_in_force": "IOC"}, {"time_in_force": "FOK"}, {"time_in_force": "GTD"}, {"time_in_force": "ioc"}, {"time_in_force": 3},
        {"post_only": True}, {"post_only": "true"}, {"post_only": 1}, {"post_only": None},
        {"min_quantity": 0}, {"min_quantity": 1}, {"min_quantity": -1}, {"min_quantity": "1"}, {"min_quantity": False},
        {"stp": "cancel_oldest"}, {"stp": "cancel_both"}, {"stp": "decrement"}, {"stp": ""},
        {"client_order_id": "a" * 64}, {"client_order_id": "a" * 65}, {"client_order_id": "x.y_z:1-2"}, {"client_order_id": "bad id"},
        {"client_order_id": ""}, {"client_order_id": 42}, {"client_order_id": " c1 "}, {"client_order_id": "c1\n"}, {"client_order_id": None},
        {"organisation": 5}, {"organisation": "5"}, {"organisation": True}, {"organisation": None},
        {"instrument": 999_999}, {"instrument": str(inst.pk)}, {"instrument": True}, {"instrument": 0}, {"instrument": -1}, {"instrument": 2**64},
        {"expires_at": "2030-01-01T00:00:00Z"}, {"listing": None}, {"colour": "red"},
    ]
    out = [base | c for c in changes]
    out += [{k: v for k, v in base.items() if k != name} for name in base]  # each field missing
    return out


def test_plain_orders_are_validated_as_the_serializer_validates_them(market_setup):
    """order_in_validated takes a short way for orders in their plain form: for each of many orders, plain
    and not, it gives exactly the serializer's validated data, or the serializer's field-level errors."""
    from rest_framework.exceptions import ValidationError

    from exchange.api.serializers import _plain_order, order_in_validated

    inst = market_setup["instrument"]
    plain = 0
    for body in _variants(inst):
        serializer = OrderInSerializer(data=body)
        valid = serializer.is_valid()
        short = _plain_order(body)
        if short is not None:
            plain += 1
            assert valid, (body, serializer.errors)
            assert short == dict(serializer.validated_data), body
            assert [type(v) for v in short.values()] == [type(serializer.validated_data[k]) for k in short], body
        if valid:
            assert order_in_validated(body) == dict(serializer.validated_data), body
        else:
            with pytest.raises(ValidationError) as refused:
                order_in_validated(body)
            assert refused.value.detail == serializer.errors, body
    assert plain >= 25  # the usual forms take the short way
