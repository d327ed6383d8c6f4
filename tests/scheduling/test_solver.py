"""The routing solver against brute force on small random instances, and its rules on hand-made books."""

import random
from fractions import Fraction

from hypothesis import given, settings
from hypothesis import strategies as st

from scheduling import solver
from scheduling.solver import Offer, Segment, Spec
from scheduling.synthetic import small_instance

DAY = 86_400


@settings(max_examples=300, deadline=None, derandomize=True)
@given(seed=st.integers(min_value=0, max_value=2**32 - 1))
def test_plan_equals_the_brute_force_optimum_and_breaks_no_constraint(seed):
    spec, offers = small_instance(random.Random(seed))
    result = solver.solve(spec, offers)
    best = solver.brute_force(spec, offers)
    if best is None:
        assert result.status == "infeasible" and result.takes == [] and result.binding["message"]
        return
    assert result.status == "optimal"
    assert abs(result.objective - best) <= 1e-6 * max(1.0, abs(best))
    assert solver.takes_violations(spec, result.takes) == []
    for take in result.takes:  # never a lot above the price cap, nor above the child's own limit
        for seg, n in zip(take.offer.segments, take.per_segment, strict=True):
            assert not n or (spec.price_ok(take.offer, seg) and seg.price_fen_per_lot <= take.limit_fen_per_lot)
    if spec.max_total_fen is not None:
        assert sum(t.cost_fen for t in result.takes) <= spec.max_total_fen
    alt = result.alternative
    if alt is not None:  # the single-instrument alternative is itself a valid plan, and never better
        assert solver.takes_violations(spec, [alt]) == []
        assert solver.plan_score(spec, [alt]) >= result.objective - 1e-6


def seg(price, lots, carbon=100.0, latency=2.0, **kw):
    return Segment(price, lots, carbon, 1.0, latency, **kw)


def test_an_ineligible_ask_blocks_the_queue_behind_it():
    offers = [Offer(1, (0, DAY), 1_000_000, [seg(100, 5, latency=30.0), seg(101, 10)]),
              Offer(2, (0, DAY), 1_000_000, [seg(120, 10)])]
    spec = Spec(units_micro=8_000_000, earliest_start=0, deadline=DAY, max_latency_ms=10.0)
    result = solver.solve(spec, offers)
    assert [(t.offer.instrument_id, t.lots, t.cost_fen) for t in result.takes] == [(2, 8, 960)]


def test_lowest_carbon_takes_a_dirty_level_only_when_it_must_to_reach_a_clean_one():
    # Instrument 1: 2 dirty lots ahead of 10 clean ones; instrument 2: 10 middling lots.
    offers = [Offer(1, (0, DAY), 1_000_000, [seg(100, 2, carbon=500.0), seg(101, 10, carbon=10.0)]),
              Offer(2, (0, DAY), 1_000_000, [seg(90, 10, carbon=200.0)])]
    spec = Spec(units_micro=10_000_000, earliest_start=0, deadline=DAY, objective=solver.LOWEST_CARBON)
    result = solver.solve(spec, offers)
    # 2 dirty + 8 clean = 1080 g beats 10 middling = 2000 g; the plan fills the queue in order.
    assert [(t.offer.instrument_id, t.per_segment) for t in result.takes] == [(1, [2, 8])]
    assert result.objective == solver.brute_force(spec, offers)


def test_weighted_objective_prices_carbon_in_yuan_per_kg():
    offers = [Offer(1, (0, DAY), 1_000_000, [seg(1000, 10, carbon=1000.0)]),
              Offer(2, (0, DAY), 1_000_000, [seg(1040, 10, carbon=100.0)])]
    spec = lambda yuan_per_kg: Spec(units_micro=5_000_000, earliest_start=0, deadline=DAY, objective=solver.WEIGHTED, fen_per_g_co2=yuan_per_kg / 10)  # noqa: E731
    # 900 g saved per lot costs 40 fen: worth it above 40/900 fen per g = 0.44 yuan per kg.
    assert solver.solve(spec(0.4), offers).takes[0].offer.instrument_id == 1
    assert solver.solve(spec(0.5), offers).takes[0].offer.instrument_id == 2


def test_binding_constraint_is_named_with_numbers():
    offers = [Offer(i, (0, DAY), 1_000_000, [seg(100, 20, latency=5.0 if i < 3 else 25.0)]) for i in range(1, 5)]
    spec = Spec(units_micro=64_000_000, earliest_start=0, deadline=DAY, max_latency_ms=10.0)
    result = solver.solve(spec, offers)
    assert result.status == "infeasible"
    assert result.binding["message"] == "only 40 of 64 lots within 10 ms of shanghai before the deadline"
    spec = Spec(units_micro=64_000_000, earliest_start=0, deadline=DAY, max_total_fen=6000)
    assert solver.solve(spec, offers).binding["constraint"] == "max_total"
    spec = Spec(units_micro=64_000_000, earliest_start=0, deadline=DAY, max_price_fen_per_unit=Fraction(99))
    assert solver.solve(spec, offers).binding["message"] == "only 0 of 64 lots at or below the price cap per unit before the deadline"


def test_order_size_limits_are_kept():
    offers = [Offer(1, (0, DAY), 1_000_000, [seg(100, 50)], min_lots=5, max_lots=6),
              Offer(2, (0, DAY), 1_000_000, [seg(110, 50)])]
    spec = Spec(units_micro=8_000_000, earliest_start=0, deadline=DAY)
    result = solver.solve(spec, offers)
    assert [(t.offer.instrument_id, t.lots) for t in result.takes] == [(1, 6), (2, 2)]
    spec = Spec(units_micro=3_000_000, earliest_start=0, deadline=DAY)
    assert [(t.offer.instrument_id, t.lots) for t in solver.solve(spec, offers).takes] == [(2, 3)]
