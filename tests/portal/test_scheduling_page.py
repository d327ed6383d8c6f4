"""The compute demands page: a buyer states a demand, reads the plan and its chart, confirms it once (even when
the form is posted twice) and reads the execution report; viewers read, others get 404, regulators only read."""

from __future__ import annotations

import datetime as dt
import re
from decimal import Decimal

import pytest
from django.test import Client
from django.utils import timezone

from exchange import services as exchange
from exchange.models import Order, Trade
from marketplace import services as market
from marketplace.models import Instrument
from scheduling.models import Demand, DemandChild
from tests.factories import data_centre


def asks_build(w: dict) -> dict:
    """Three instruments of the world's product, asks from two data centres of the supplier:
    i0 5 lots at 14.00 (Qingpu Xicen, 2 ms), i1 6 lots at 14.50 (Zhongwei North, 30 ms), i2 20 lots at 15.00 (Qingpu).
    The cheapest 12 units: 5 on i0, 6 on i1, 1 on i2 = 172.00 CNY; on one instrument: 12 on i2 = 180.00."""
    instruments = list(Instrument.objects.filter(product=w["product"], status="open", gate_closure__gt=timezone.now() + dt.timedelta(hours=1))
                       .order_by("delivery_start")[:3])
    assert len(instruments) == 3
    far = data_centre(w["supplier"], {w["listing"].device_model: 100}, latency_ms="30.0", name="Zhongwei North", region="ningxia_zhongwei")
    start = timezone.localtime().replace(hour=0, minute=0, second=0, microsecond=0)
    far_listing = market.listing_create(data_centre=far, product=w["product"], device_model=w["listing"].device_model, device_count=10,
                                        available_from=start, available_until=start + dt.timedelta(days=14))
    for n, (inst, price, qty, listing) in enumerate([(instruments[0], "14.00", 5, w["listing"]), (instruments[1], "14.50", 6, far_listing),
                                                     (instruments[2], "15.00", 20, w["listing"])]):
        exchange.order_place(user=w["seller_user"], organisation=w["supplier"], request=exchange.OrderRequest(
            instrument=inst, side="sell", quantity=qty, client_order_id=f"sched-ask-{n}", price=Decimal(price), listing=listing))
    w.update(sched_instruments=instruments, near=w["listing"].data_centre, far=far)
    return w


def form(w: dict, **fields) -> dict:
    inst = w["sched_instruments"]
    fmt = "%Y-%m-%dT%H:%M"
    return {
        "client_demand_id": "portal-test-1", "quantity": "12", "unit": "FP16_PFH",
        "earliest_start": timezone.localtime(inst[0].delivery_start).strftime(fmt), "deadline": timezone.localtime(inst[2].delivery_end).strftime(fmt),
        "windows": "spread", "latency_metro": "shanghai", "objective": "cheapest", "residual": "leave",
    } | fields


def login(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def books(world):
    return asks_build(world)


def field_error(html: str, name: str) -> str:
    m = re.search(rf'<span class="error" id="[^"]*" role="alert" data-field="{name}">([^<]*)</span>', html)
    assert m, f"no error slot for {name}"
    return m.group(1)


def test_form_errors_are_shown_next_to_their_fields_and_nothing_is_stored(books):
    client = login(books["buyer_user"])
    page = client.get("/demands/")
    assert page.status_code == 200 and 'name="csrfmiddlewaretoken"' in page.content.decode() and 'data-testid="demand-form"' in page.content.decode()
    bad = client.post("/demands/", form(books, quantity="-1", deadline=form(books)["earliest_start"], objective="weighted", max_pue="0.8",
                                        min_security_level="9"))
    html = bad.content.decode()
    assert bad.status_code == 400
    assert "greater than or equal to 1E-6" in field_error(html, "quantity") or "0.000001" in field_error(html, "quantity")
    assert field_error(html, "deadline") == "The deadline must be after the earliest start."
    assert "positive price of carbon" in field_error(html, "yuan_per_kg_co2")
    assert field_error(html, "max_pue") and field_error(html, "min_security_level")
    assert field_error(html, "earliest_start") == ""
    assert 'aria-invalid="true"' in html
    assert not Demand.objects.exists()


def test_a_plan_is_shown_with_its_chart_and_alternative_and_buys_nothing(books):
    client = login(books["buyer_user"])
    orders = Order.objects.count()
    r = client.post("/demands/", form(books))
    assert r.status_code == 302, r.content.decode()[:2000]
    demand = Demand.objects.get()
    assert r["Location"] == f"/demands/{demand.pk}/"
    again = client.post("/demands/", form(books))  # the same form posted twice: the same demand
    assert again["Location"] == r["Location"] and Demand.objects.count() == 1
    html = client.get(r["Location"]).content.decode()
    i0, i1, i2 = books["sched_instruments"]
    assert demand.status == "planned" and Order.objects.count() == orders
    assert "¥172.00" in html  # the plan's cost
    rows = re.findall(r"<tr><td>([^<]+)</td><td>[^<]*</td><td>([^<]*)</td>\s*<td class=\"num\">(\d+)</td>", html)
    assert rows == [(i0.code, "Qingpu Xicen (5)", "5"), (i1.code, "Zhongwei North (6)", "6"), (i2.code, "Qingpu Xicen (1)", "1")]
    alt = re.search(r'data-testid="alternative">(.*?)</p>', html, re.S).group(1)
    assert i2.code in alt and "¥180.00" in alt and "the plan saves ¥8.00" in alt
    # The chart: a row per data centre, a bar per allocation and data centre, sized by units, placed by window.
    svg = re.search(r'<svg class="schedule".*?</svg>', html, re.S).group(0)
    labels = re.findall(r'<text class="dc-label"[^>]*><tspan[^>]*>([^<]+)</tspan><tspan[^>]*>([^<]+)</tspan>', svg)
    assert labels == [("Qingpu Xicen", "Qingpu"), ("Zhongwei North", "Ningxia hub")]
    bars = re.findall(r'<rect class="plan-bar" x="([\d.]+)" y="([\d.]+)" width="([\d.]+)" height="([\d.]+)" data-instrument="([^"]+)" data-dc="(\d+)" data-units="([^"]+)"', svg)
    got = {(b[4], int(b[5]), b[6]) for b in bars}
    assert got == {(i0.code, books["near"].pk, "5"), (i1.code, books["far"].pk, "6"), (i2.code, books["near"].pk, "1")}
    by_inst = {b[4]: (float(b[0]), float(b[1]), float(b[2]), float(b[3])) for b in bars}
    assert by_inst[i1.code][3] > by_inst[i0.code][3] > by_inst[i2.code][3]  # heights follow units 6 > 5 > 1
    assert by_inst[i1.code][3] / by_inst[i0.code][3] == pytest.approx(6 / 5, rel=0.02)
    assert by_inst[i0.code][0] < by_inst[i1.code][0] < by_inst[i2.code][0]  # later windows further right
    assert by_inst[i0.code][1] < by_inst[i1.code][1]  # Qingpu's row above Zhongwei's
    assert 'data-testid="confirm-form"' in html and 'name="confirm_key"' in html


def test_an_infeasible_demand_names_the_binding_constraint(books):
    client = login(books["buyer_user"])
    r = client.post("/demands/", form(books, quantity="40", max_latency_ms="10"))
    html = client.get(r["Location"]).content.decode()
    assert Demand.objects.get().status == "infeasible"
    binding = re.search(r'data-testid="binding">(.*?)</section>', html, re.S).group(1)
    assert 'data-constraint="deadline"' in binding or 'data-constraint="max_latency_ms"' in binding
    assert "only" in binding and 'data-testid="confirm-form"' not in html and 'data-testid="schedule-chart"' not in html


def test_confirming_twice_buys_once_and_the_report_shows_the_fills(books):
    client = login(books["buyer_user"])
    location = client.post("/demands/", form(books))["Location"]
    html = client.get(location).content.decode()
    key = re.search(r'name="confirm_key" value="([0-9a-f]+)"', html).group(1)
    demand = Demand.objects.get()
    trades = Trade.objects.count()
    first = client.post(f"/demands/{demand.pk}/execute/", {"confirm_key": key})
    assert first.status_code == 302
    second = client.post(f"/demands/{demand.pk}/execute/", {"confirm_key": key})  # a double submit
    assert second.status_code == 302
    demand.refresh_from_db()
    assert demand.status == "filled"
    assert DemandChild.objects.filter(demand=demand).count() == 3
    assert Order.objects.filter(organisation=books["buyer"], side="buy").count() == 3
    assert Trade.objects.count() == trades + 3
    report = client.get(location).content.decode()
    assert "already" in report  # the second submit said so
    assert re.search(r'data-testid="filled-units">12(\.0+)?<', report)
    assert report.count('<tr data-status="filled">') == 3
    assert "12 of 12 planned lots filled" in report
    assert report.count('data-filled="100"') == 3 and 'class="fill-bar"' in report
    assert 'data-testid="confirm-form"' not in report


def test_a_page_showing_an_older_plan_cannot_confirm_the_new_one(books):
    client = login(books["buyer_user"])
    location = client.post("/demands/", form(books))["Location"]
    key = re.search(r'name="confirm_key" value="([0-9a-f]+)"', client.get(location).content.decode()).group(1)
    demand = Demand.objects.get()
    assert client.post(f"/demands/{demand.pk}/plan/").status_code == 302  # re-planned (in another tab)
    stale = client.post(f"/demands/{demand.pk}/execute/", {"confirm_key": key})
    assert stale.status_code == 409 and "The plan changed" in stale.content.decode()
    assert not DemandChild.objects.exists()


def test_viewers_read_others_get_404_and_regulators_only_read(books, client):
    owner = login(books["buyer_user"])
    location = owner.post("/demands/", form(books))["Location"]
    demand = Demand.objects.get()
    key = re.search(r'name="confirm_key" value="([0-9a-f]+)"', owner.get(location).content.decode()).group(1)
    assert owner.post(location).status_code == 405  # the page itself is read-only; forms post to plan/ and execute/

    viewer = login(books["viewer"])
    listing = viewer.get("/demands/").content.decode()
    assert f'href="/demands/{demand.pk}/"' in listing and 'data-testid="demand-form"' not in listing
    page = viewer.get(location)
    assert page.status_code == 200 and 'data-testid="schedule-chart"' in page.content.decode() and "confirm_key" not in page.content.decode()
    assert viewer.post("/demands/", form(books, client_demand_id="v1")).status_code == 403
    assert viewer.post(f"/demands/{demand.pk}/execute/", {"confirm_key": key}).status_code == 403
    assert viewer.post(f"/demands/{demand.pk}/plan/").status_code == 403

    other = login(books["other_user"])
    assert f'href="/demands/{demand.pk}/"' not in other.get("/demands/").content.decode()
    assert other.get(location).status_code == 404
    assert other.post(f"/demands/{demand.pk}/execute/", {"confirm_key": key}).status_code == 404

    regulator = login(books["regulator"])
    assert f'href="/demands/{demand.pk}/"' in regulator.get("/demands/").content.decode()
    page = regulator.get(location).content.decode()
    assert "¥172.00" in page and "confirm_key" not in page
    assert regulator.post("/demands/", form(books, client_demand_id="r1")).status_code == 403
    assert regulator.post(f"/demands/{demand.pk}/execute/", {"confirm_key": key}).status_code == 403

    assert client.get("/demands/")["Location"].startswith("/accounts/login/")
    assert DemandChild.objects.count() == 0 and Demand.objects.count() == 1


def test_the_page_is_in_chinese_for_a_chinese_browser(books):
    client = Client(HTTP_ACCEPT_LANGUAGE="zh-hans")
    client.force_login(books["buyer_user"])
    form_page = client.get("/demands/").content.decode()
    assert "算力需求" in form_page and "数量（标准单位）" in form_page
    bad = client.post("/demands/", form(books, deadline=form(books)["earliest_start"])).content.decode()
    assert "截止时间必须晚于最早开始时间。" in bad
    html = client.get(client.post("/demands/", form(books))["Location"]).content.decode()
    assert "确认并买入（约 ¥172.00，另加手续费）" in html and "本方案节省 ¥8.00" in html and "排程图" in html
