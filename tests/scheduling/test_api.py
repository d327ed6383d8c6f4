"""Demands through the REST API on real books (inline matcher): plan, infeasible, execute, book changes."""

from decimal import Decimal

from exchange.models import Order, Trade
from scheduling.models import Demand, DemandChild
from tests.factories import OrganisationFactory, member


def body(s, **fields):
    inst = s["instruments"]
    return {
        "client_demand_id": "d1", "quantity": "15", "earliest_start": inst[0].delivery_start.isoformat(),
        "deadline": inst[2].delivery_end.isoformat(), "max_latency_ms": "10",
    } | fields


def books(s):
    """inst0: a far ask (30 ms) at 13.60 ahead of a near one at 14.00; inst1: near at 14.20; inst2: near at 15.00."""
    i0, i1, i2 = s["instruments"][:3]
    s["ask"](i0, "13.60", 5, "far")
    s["ask"](i0, "14.00", 10)
    s["ask"](i1, "14.20", 10)
    s["ask"](i2, "15.00", 20)


def post(api, s, **fields):
    api.force_authenticate(s["buyer_user"])
    return api.post("/api/v1/demands/", body(s, **fields), format="json")


def test_plan_skips_a_queue_blocked_by_a_far_ask_and_quotes_the_single_instrument_alternative(api, sched):
    s = sched
    books(s)
    orders_before = Order.objects.count()
    r = post(api, s)
    assert r.status_code == 201, r.json()
    plan = r.json()["plan"]
    assert r.json()["status"] == "planned" and plan["status"] == "optimal"
    got = [(a["instrument"], a["lots"], a["limit_price"], a["cost_fen"]) for a in plan["allocations"]]
    i1, i2 = s["instruments"][1], s["instruments"][2]
    # inst0's cheap asks sit behind a 30 ms ask an IOC cannot skip: 10 at 14.20 on inst1, 5 at 15.00 on inst2.
    assert got == [(i1.pk, 10, "14.20", 14200), (i2.pk, 5, "15.00", 7500)]
    assert plan["totals"]["cost_fen"] == 21700 and plan["totals"]["units"] == "15" and plan["totals"]["latency_ms_max"] == 2.0
    assert plan["totals"]["windows"] == 2 and plan["allocations"][0]["data_centres"][0]["id"] == s["near"].pk
    # H100: 0.7 kW per 0.989 PFLOPS; x PUE 1.15 x 500 g/kWh x 20% non-renewable, 15 lots.
    energy = Decimal(15) * 700 / Decimal("989") * Decimal("1.15")
    assert plan["totals"]["energy_kwh"] == float(round(energy, 3))
    assert plan["totals"]["carbon_kg"] == float(round(energy * 500 * Decimal("0.2") / 1000, 3))
    alt = plan["single_instrument_alternative"]
    assert (alt["instrument"], alt["lots"], alt["totals"]["cost_fen"]) == (i2.pk, 15, 22500)
    assert Order.objects.count() == orders_before  # a quote: nothing placed


def test_without_the_latency_limit_the_far_queue_is_cheapest(api, sched):
    s = sched
    books(s)
    plan = post(api, s, max_latency_ms=None).json()["plan"]
    assert [(a["instrument"], a["lots"], a["cost_fen"]) for a in plan["allocations"]] == [(s["instruments"][0].pk, 15, 6800 + 14000)]
    assert plan["totals"]["latency_ms_max"] == 30.0


def test_lowest_carbon_pays_more_for_the_green_data_centre(api, sched):
    s = sched
    books(s)
    plan = post(api, s, max_latency_ms=None, objective="lowest_carbon").json()["plan"]
    assert all(dc["id"] == s["near"].pk for a in plan["allocations"] for dc in a["data_centres"])
    assert plan["totals"]["cost_fen"] == 21700


def test_infeasible_demand_names_the_binding_constraint_with_numbers(api, sched):
    s = sched
    books(s)
    r = post(api, s, quantity="40")
    assert r.status_code == 201
    assert r.json()["status"] == "infeasible"
    binding = r.json()["plan"]["binding"]
    assert binding["constraint"] == "max_latency_ms"
    assert binding["message"] == "only 30 of 40 lots within 10 ms of shanghai before the deadline"
    api.force_authenticate(s["buyer_user"])
    r = api.post(f"/api/v1/demands/{r.json()['id']}/execute/")
    assert r.status_code == 409 and "only 30 of 40 lots" in r.json()["plan"][0]


def test_total_cap_and_price_cap_are_binding_when_they_bite(api, sched):
    s = sched
    books(s)
    r = post(api, s, max_total="200.00").json()
    assert r["plan"]["binding"]["constraint"] == "max_total"
    assert "217.00 CNY, above the total cap of 200.00 CNY" in r["plan"]["binding"]["message"]
    r = post(api, s, client_demand_id="d2", max_price="14.50").json()
    assert r["plan"]["binding"]["message"] == "only 10 of 15 lots within 10 ms of shanghai and at or below the price cap per unit before the deadline"


def test_single_window_buys_in_one_window(api, sched):
    s = sched
    books(s)
    plan = post(api, s, single_window=True).json()["plan"]
    assert [(a["instrument"], a["lots"]) for a in plan["allocations"]] == [(s["instruments"][2].pk, 15)]


def test_execute_buys_the_plan_never_above_the_limits_and_a_retry_places_nothing_new(api, sched):
    s = sched
    books(s)
    demand = post(api, s).json()
    r = api.post(f"/api/v1/demands/{demand['id']}/execute/")
    assert r.status_code == 200, r.json()
    d = r.json()
    assert d["status"] == "filled"
    assert d["execution"]["filled_units"] == "15" and d["execution"]["filled_cost_fen"] == 21700
    assert [(c["lots"], c["filled_lots"], c["status"]) for c in d["children"]] == [(10, 10, "filled"), (5, 5, "filled")]
    for child in DemandChild.objects.filter(demand_id=demand["id"]):
        order = Order.objects.get(pk=child.order_id)
        assert order.time_in_force == "IOC" and order.price_fen_per_lot == child.limit_fen_per_lot
        assert all(t.price_fen_per_lot <= child.limit_fen_per_lot for t in Trade.objects.filter(taker_order=order))
    assert d["execution"]["rounds"][0]["changes"] == []
    orders = Order.objects.count()
    again = api.post(f"/api/v1/demands/{demand['id']}/execute/")
    assert again.status_code == 200 and again.json()["children"] == d["children"] and Order.objects.count() == orders


def test_books_changing_after_the_plan_are_reported_and_the_residual_left(api, sched):
    s = sched
    books(s)
    demand = post(api, s).json()
    s["take"](s["instruments"][1], "14.20", 4)  # someone else takes 4 of the 10 planned lots on inst1
    d = api.post(f"/api/v1/demands/{demand['id']}/execute/").json()
    changes = d["execution"]["rounds"][0]["changes"]
    assert len(changes) == 1 and changes[0]["instrument"] == s["instruments"][1].pk
    assert (changes[0]["planned_lots"], changes[0]["available_lots"]) == (10, 6)
    assert "only 6 of the planned 10 lots" in changes[0]["note"]
    assert d["status"] == "partially_filled" and d["execution"]["residual_units"] == "4"
    assert [c["filled_lots"] for c in d["children"]] == [6, 5]


def test_residual_is_replanned_when_the_buyer_chose_so(api, sched):
    s = sched
    books(s)
    demand = post(api, s, residual="replan").json()
    s["take"](s["instruments"][1], "14.20", 4)
    d = api.post(f"/api/v1/demands/{demand['id']}/execute/").json()
    assert d["status"] == "filled" and d["rounds"] == 2
    assert [(c["round"], c["instrument"], c["filled_lots"]) for c in d["children"]] == [
        (1, s["instruments"][1].pk, 6), (1, s["instruments"][2].pk, 5), (2, s["instruments"][2].pk, 4)]
    assert d["execution"]["filled_cost_fen"] == 6 * 1420 + 9 * 1500


def test_nothing_is_bought_above_the_planned_limit_when_the_cheap_asks_are_gone(api, sched):
    s = sched
    books(s)
    demand = post(api, s).json()
    s["take"](s["instruments"][2], "15.00", 20)  # inst2's 15.00 asks are gone
    s["ask"](s["instruments"][2], "15.50", 20)  # and dearer ones came
    d = api.post(f"/api/v1/demands/{demand['id']}/execute/").json()
    child = [c for c in d["children"] if c["instrument"] == s["instruments"][2].pk][0]
    assert child["status"] == "skipped" and child["order"] is None and child["filled_lots"] == 0
    assert not Trade.objects.filter(buyer=s["buyer"], price_fen_per_lot__gt=1500).exists()
    change = [c for c in d["execution"]["rounds"][0]["changes"] if c["instrument"] == s["instruments"][2].pk][0]
    assert change["available_lots"] == 0
    assert d["status"] == "partially_filled"


def test_validation_errors_are_400_with_field_messages_and_nothing_stored(api, sched):
    s = sched
    cases = [
        ({"deadline": s["instruments"][0].delivery_start.isoformat(), "earliest_start": s["instruments"][1].delivery_start.isoformat()}, "deadline"),
        ({"quantity": "0"}, "quantity"),
        ({"chip_classes": ["quantum"]}, "chip_classes"),
        ({"objective": "weighted"}, "yuan_per_kg_co2"),
        ({"max_pue": "0.9"}, "max_pue"),
        ({"min_security_level": 7}, "min_security_level"),
        ({"colour": "blue"}, "colour"),
    ]
    for fields, field in cases:
        r = post(api, s, **fields)
        assert r.status_code == 400 and field in r.json(), (fields, r.json())
    assert Demand.objects.count() == 0


def test_create_is_idempotent_on_client_demand_id(api, sched):
    s = sched
    books(s)
    first = post(api, s)
    second = post(api, s)
    assert (first.status_code, second.status_code) == (201, 200) and first.json()["id"] == second.json()["id"]
    assert Demand.objects.count() == 1


def test_other_organisations_demands_are_404(api, sched):
    s = sched
    books(s)
    demand = post(api, s).json()
    other = OrganisationFactory(name="Other AI", kind="buyer")
    stranger = member(other, role="trader", username="stranger")
    api.force_authenticate(stranger)
    assert api.get(f"/api/v1/demands/{demand['id']}/").status_code == 404
    assert api.post(f"/api/v1/demands/{demand['id']}/execute/").status_code == 404
    assert api.post(f"/api/v1/demands/{demand['id']}/plan/").status_code == 404
    assert api.get("/api/v1/demands/").json()["results"] == []
    assert not DemandChild.objects.exists()


def test_replan_refreshes_the_quote_on_the_current_book(api, sched):
    s = sched
    books(s)
    demand = post(api, s).json()
    s["ask"](s["instruments"][1], "13.90", 15)
    r = api.post(f"/api/v1/demands/{demand['id']}/plan/")
    assert r.status_code == 200
    assert [(a["instrument"], a["lots"], a["cost_fen"]) for a in r.json()["plan"]["allocations"]] == [(s["instruments"][1].pk, 15, 15 * 1390)]


def test_viewers_read_demands_but_may_not_execute_them(api, sched):
    s = sched
    books(s)
    demand = post(api, s).json()
    viewer = member(s["buyer"], role="viewer", username="buyer-viewer")
    api.force_authenticate(viewer)
    assert api.get(f"/api/v1/demands/{demand['id']}/").status_code == 200
    r = api.post(f"/api/v1/demands/{demand['id']}/execute/")
    assert r.status_code == 403 and "organisation" in r.json()
    assert not DemandChild.objects.exists()


def test_an_execution_in_progress_is_not_started_twice(api, sched):
    s = sched
    books(s)
    demand = post(api, s).json()
    Demand.objects.filter(pk=demand["id"]).update(status="executing", execution={"rounds": []}, rounds=1)
    r = api.post(f"/api/v1/demands/{demand['id']}/execute/")
    assert r.status_code == 409 and "status" in r.json()
    assert not DemandChild.objects.exists()


def test_a_crashed_execution_resumes_after_the_lease_without_doubling_any_order(api, sched):
    import datetime as dt

    from django.utils import timezone

    s = sched
    books(s)
    demand = post(api, s).json()
    done = api.post(f"/api/v1/demands/{demand['id']}/execute/").json()
    orders = Order.objects.count()
    # As if the process died after sending the children but before recording their answers.
    DemandChild.objects.filter(demand_id=demand["id"]).update(status="new", filled_lots=0, filled_cost_fen=0, order=None)
    Demand.objects.filter(pk=demand["id"]).update(status="executing", updated_at=timezone.now() - dt.timedelta(minutes=5))
    again = api.post(f"/api/v1/demands/{demand['id']}/execute/")
    assert again.status_code == 200 and again.json()["status"] == "filled"
    assert Order.objects.count() == orders
    assert [(c["order"], c["filled_lots"]) for c in again.json()["children"]] == [(c["order"], c["filled_lots"]) for c in done["children"]]
