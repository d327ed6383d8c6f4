"""The dynamic programme (non-convex objectives, one window, minimum order sizes) against the integer
programme on instances too large to enumerate: the same optimum, and the plan keeps every constraint."""

from __future__ import annotations

import dataclasses
import random

import pytest

from scheduling import solver
from scheduling.synthetic import large_instance


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("objective", [solver.LOWEST_CARBON, solver.WEIGHTED, solver.CHEAPEST])
def test_the_programme_finds_the_integer_programmes_optimum(objective, seed, monkeypatch):
    rng = random.Random(seed)
    single = seed % 2 == 1
    spec, offers = large_instance(rng, instruments=24, levels=12, windows=4, objective=objective, single_window=single, units=150 if single else 300)
    if seed % 3 == 2:  # minimum order sizes: the table skips 1..min-1 lots
        for o in offers:
            o.min_lots = 3
    used = []
    real = solver._dp_plan
    monkeypatch.setattr(solver, "_dp_plan", lambda *a: used.append(1) or real(*a))
    fast = solver.solve(spec, offers)
    # the cheapest plan spread over windows with single lots is a linear programme: no table needed
    assert bool(used) == (objective != solver.CHEAPEST or single or seed % 3 == 2)
    monkeypatch.setattr(solver, "_dp_plan", lambda *a: None)  # the integer programme alone
    slow = solver.solve(spec, offers, time_limit=60)
    assert slow.status == "optimal"
    assert fast.status == "optimal" and not solver.takes_violations(spec, fast.takes)
    assert fast.objective == pytest.approx(slow.objective, rel=1e-7, abs=1e-6)


def test_a_binding_total_cap_is_left_to_the_integer_programme():
    spec, offers = large_instance(random.Random(5), instruments=24, levels=12, windows=4, objective=solver.LOWEST_CARBON, units=300)
    free = solver.solve(spec, offers)
    cost = sum(t.cost_fen for t in free.takes)
    capped = dataclasses.replace(spec, max_total_fen=cost - 50)  # the cleanest plan no longer fits
    result = solver.solve(capped, offers)
    assert result.status == "infeasible" or (sum(t.cost_fen for t in result.takes) <= cost - 50 and not solver.takes_violations(capped, result.takes))
    assert result.status == "infeasible" or result.objective >= free.objective - 1e-6
