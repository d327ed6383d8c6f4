"""Instruments: product x delivery window, listed ahead, opened, closed at gate closure, halted by operators."""

import datetime as dt
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest

from marketplace import services
from marketplace.models import Instrument, PlatformRole
from tests.factories import ProductFactory, UserFactory

pytestmark = pytest.mark.django_db
SH = ZoneInfo("Asia/Shanghai")


def at(*args) -> dt.datetime:
    return dt.datetime(*args, tzinfo=SH)


def test_day_product_lists_the_next_seven_windows_with_gate_closure():
    ProductFactory(code="AI-TRAIN", window="day", list_ahead_days=7, gate_closure_minutes=60)
    now = at(2026, 11, 29, 10, 30)
    result = services.instruments_roll(now=now)
    instruments = list(Instrument.objects.order_by("delivery_start"))
    # Today's window started already; tomorrow's through the 7th day ahead are listed.
    assert [i.code for i in instruments] == [f"AI-TRAIN-202611{d}" for d in range(30, 31)] + [f"AI-TRAIN-202612{d:02d}" for d in range(1, 7)]
    first = instruments[0]
    assert first.delivery_start == at(2026, 11, 30) and first.delivery_end == at(2026, 12, 1)
    assert first.gate_closure == at(2026, 11, 29, 23, 0)
    assert first.status == "open"
    assert (first.tick_size, first.lot_size, first.reference_price) == (Decimal("0.01"), Decimal("1"), Decimal("15.00"))
    assert result == {"listed": 7, "opened": 7, "closed": 0}


def test_rolling_is_idempotent_and_closes_at_gate_closure():
    ProductFactory(code="AI-TRAIN", window="day", list_ahead_days=3, gate_closure_minutes=60)
    services.instruments_roll(now=at(2026, 11, 29, 10, 0))
    assert services.instruments_roll(now=at(2026, 11, 29, 10, 1)) == {"listed": 0, "opened": 0, "closed": 0}
    # Just past the first gate closure (23:00), a new day is listed and the first closes.
    result = services.instruments_roll(now=at(2026, 11, 29, 23, 0, 1))
    assert result == {"listed": 1, "opened": 1, "closed": 1}
    assert Instrument.objects.get(code="AI-TRAIN-20261130").status == "closed"
    assert Instrument.objects.filter(status="open").count() == 3


def test_hour_product_lists_hourly_windows_after_its_gate():
    ProductFactory(code="EDGE", window="hour", list_ahead_days=1, gate_closure_minutes=15)
    services.instruments_roll(now=at(2026, 11, 29, 10, 50))
    codes = list(Instrument.objects.order_by("delivery_start").values_list("code", flat=True))
    # 11:00 closes at 10:45, already past: the first tradable window is 12:00.
    assert codes[0] == "EDGE-2026112912"
    assert codes[-1] == "EDGE-2026113011"
    assert len(codes) == 24


def test_instrument_api_filters_by_product_and_status(api):
    a = ProductFactory(code="AI-TRAIN", list_ahead_days=3)
    ProductFactory(code="GEN-FP32", unit="FP32_PFH", chip_class="", list_ahead_days=3)
    services.instruments_roll(now=at(2026, 11, 29, 10, 0))
    Instrument.objects.filter(code="AI-TRAIN-20261201").update(status="halted")

    body = api.get("/api/v1/instruments/", {"product": a.pk, "ordering": "delivery_start"}).json()
    assert [i["code"] for i in body["results"]] == ["AI-TRAIN-20261130", "AI-TRAIN-20261201", "AI-TRAIN-20261202"]
    row = body["results"][0]
    for field in ("product", "status", "tick_size", "lot_size", "delivery_start", "delivery_end", "gate_closure"):
        assert field in row
    assert row["delivery_start"] == "2026-11-30T00:00:00+08:00"
    body = api.get("/api/v1/instruments/", {"status": "halted"}).json()
    assert [i["code"] for i in body["results"]] == ["AI-TRAIN-20261201"]
    body = api.get("/api/v1/instruments/", {"product_code": "GEN-FP32", "status": ["open", "halted"]}).json()
    assert body["count"] == 3
    assert api.get("/api/v1/instruments/", {"status": "bogus"}).status_code == 400


def test_operator_halts_and_resumes_others_cannot(api):
    ProductFactory(code="AI-TRAIN", list_ahead_days=2)
    services.instruments_roll()
    instrument = Instrument.objects.filter(status="open").first()
    url = f"/api/v1/instruments/{instrument.pk}"
    api.force_authenticate(UserFactory(platform_role=PlatformRole.REGULATOR))
    assert api.post(f"{url}/halt/").status_code == 403
    api.force_authenticate(UserFactory(platform_role=PlatformRole.OPERATOR))
    assert api.post(f"{url}/halt/").json()["status"] == "halted"
    assert api.post(f"{url}/halt/").json() == {"status": ["Cannot halt an instrument that is halted."]}
    assert api.post(f"{url}/resume/").json()["status"] == "open"
    instrument.refresh_from_db()
    assert instrument.status == "open"


def test_instrument_copies_rules_so_product_changes_do_not_move_live_instruments():
    product = ProductFactory(code="AI-TRAIN", list_ahead_days=2)
    services.instruments_roll()
    product.tick_size = Decimal("0.05")
    product.save()
    assert set(Instrument.objects.values_list("tick_size", flat=True)) == {Decimal("0.01")}
