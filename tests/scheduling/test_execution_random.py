"""Seeded random books that change between plan and execution: whatever happens, nothing is bought above a
child's planned limit, nothing from a data centre the demand excludes, nothing beyond the total cap, and every
planned instrument whose book moved is reported."""

import random

import pytest

from exchange.models import Contract, Trade
from scheduling.models import DemandChild


@pytest.mark.parametrize("seed", range(8))
def test_random_books_changing_between_plan_and_execution(api, sched, seed):
    s = sched
    rng = random.Random(seed)
    instruments = s["instruments"][:3]
    for inst in instruments:
        for _ in range(rng.randint(2, 4)):
            s["ask"](inst, f"{rng.randint(1380, 1560) / 100:.2f}", rng.randint(1, 8), rng.choice(["near", "near", "far"]))
    api.force_authenticate(s["buyer_user"])
    body = {"client_demand_id": f"r{seed}", "quantity": str(rng.randint(3, 12)), "earliest_start": instruments[0].delivery_start.isoformat(),
            "deadline": instruments[2].delivery_end.isoformat(), "max_latency_ms": "10", "max_total": "400.00",
            "objective": rng.choice(["cheapest", "lowest_carbon"]), "residual": rng.choice(["leave", "replan"])}
    demand = api.post("/api/v1/demands/", body, format="json").json()
    if demand["status"] == "infeasible":
        assert demand["plan"]["binding"]["message"]
        return
    # The books move: a rival lifts asks, new asks (some far, some cheaper) arrive ahead of or behind the plan.
    for inst in instruments:
        if rng.random() < 0.5:
            s["take"](inst, f"{rng.randint(1400, 1560) / 100:.2f}", rng.randint(1, 6))
        if rng.random() < 0.5:
            s["ask"](inst, f"{rng.randint(1380, 1560) / 100:.2f}", rng.randint(1, 6), rng.choice(["near", "far"]))
    moved = {a["instrument"] for a in demand["plan"]["allocations"] if a["book_seq"] != _seq(a["instrument"])}
    d = api.post(f"/api/v1/demands/{demand['id']}/execute/").json()
    assert d["status"] in ("filled", "partially_filled", "unfilled")
    children = {c.order_id: c for c in DemandChild.objects.filter(demand_id=demand["id"]) if c.order_id}
    trades = list(Trade.objects.filter(buyer=s["buyer"]))
    assert sum(t.quantity for t in trades) == sum(c.filled_lots for c in children.values())
    for t in trades:
        assert t.price_fen_per_lot <= children[t.taker_order_id].limit_fen_per_lot
    assert not Contract.objects.filter(buyer=s["buyer"], listing=s["listings"]["far"]).exists()
    assert sum(t.value_fen for t in trades) <= 40000
    assert moved == {c["instrument"] for c in d["execution"]["rounds"][0]["changes"]}


def _seq(instrument_id):
    from exchange.models import BookState

    state = BookState.objects.filter(instrument_id=instrument_id).first()
    return state.book_seq if state else 0
