"""Compute scheduling: how long planning a demand takes, and whether the plans are optimal.

1. Synthetic, in memory: 200 instruments x 50 ask levels (20 products x 10 day windows, each queue from two
   or three of twelve data centres), a demand for 3,000 units within 10 ms of Shanghai at PUE <= 1.3,
   (2,000 for one window) planned by scheduling.solver.solve, the function the API's plan_compute calls. `plan_ms` is the median
   over --reps fresh instances with the cheapest objective, the plans spread over windows; the other
   objectives and the single-window variant are reported beside it.
2. Brute force: --checks small random instances (scheduling.synthetic.small_instance), each solved and
   enumerated exhaustively; the objectives must agree and no plan may break a constraint.
3. Through the real selectors (--db, default on): the same size of book stored in a scratch SQLite file
   (migrated, rows bulk-created) and planned with scheduling.services.plan_compute, reads included.

    .venv/bin/python bench/routing_bench.py [--reps 15] [--checks 300] [--no-db]

The last line is JSON: plan_ms (median, synthetic cheapest), instances_checked, mismatches, and the rest. Each
figure is also given in CPU time of this process (`*_cpu_ms`): on a shared, loaded machine wall time mostly
measures the wait for a core.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scheduling import solver  # noqa: E402
from scheduling.synthetic import large_instance, small_instance  # noqa: E402


def synthetic(reps: int, objective: str, single_window: bool, seed: int) -> dict:
    times, cpu, variables, binaries, statuses = [], [], [], [], []
    for r in range(reps):
        # one window holds about 3,000 eligible lots: ask for 2,000 there
        spec, offers = large_instance(random.Random(seed + r), objective=objective, single_window=single_window, units=2000 if single_window else 3000)
        started, cpu_started = time.perf_counter(), time.process_time()
        result = solver.solve(spec, offers)
        times.append((time.perf_counter() - started) * 1000)
        cpu.append((time.process_time() - cpu_started) * 1000)
        variables.append(result.variables)
        binaries.append(result.binaries)
        statuses.append(result.status)
        assert result.status == "infeasible" or not solver.takes_violations(spec, result.takes), "a plan broke the demand"
    return {"median_ms": round(statistics.median(times), 1), "cpu_median_ms": round(statistics.median(cpu), 1), "min_ms": round(min(times), 1), "max_ms": round(max(times), 1),
            "variables_median": statistics.median(variables), "binaries_median": statistics.median(binaries),
            "not_optimal": sum(s != "optimal" for s in statuses), "infeasible": statuses.count("infeasible")}


def brute(checks: int, seed: int) -> tuple[int, int, int]:
    mismatches = feasible = 0
    for i in range(checks):
        spec, offers = small_instance(random.Random(seed + i))
        result = solver.solve(spec, offers)
        best = solver.brute_force(spec, offers)
        if best is None:
            ok = result.status == "infeasible"
        else:
            feasible += 1
            ok = result.objective is not None and abs(result.objective - best) <= 1e-6 * max(1.0, abs(best))
            ok = ok and not solver.takes_violations(spec, result.takes)
        mismatches += not ok
    return checks, feasible, mismatches


def through_selectors(reps: int, seed: int) -> dict:
    """Store a 200 x 50 book in a scratch SQLite file and plan through scheduling.services.plan_compute."""
    path = Path("/tmp/suanli_routing_bench.sqlite3")
    path.unlink(missing_ok=True)
    os.environ.update(DJANGO_SETTINGS_MODULE="config.settings", SUANLI_SQLITE_PATH=str(path), MATCHER_TRANSPORT="inline", LOG_LEVEL="WARNING")
    os.environ.pop("DATABASE_URL", None)
    os.environ.pop("REDIS_URL", None)
    import django

    django.setup()
    import datetime as dt
    from decimal import Decimal

    from django.core.management import call_command
    from django.utils import timezone

    from exchange.models import Order, OrderStatus, Side
    from marketplace.models import (
        DataCentre,
        DataCentreLatency,
        DeviceModel,
        Instrument,
        Listing,
        Organisation,
        Product,
        User,
    )
    from scheduling import services
    from scheduling.models import Demand

    call_command("migrate", verbosity=0)
    rng = random.Random(seed)
    supplier = Organisation.objects.create(name="Bench Supplier", credit_code="91310115MA1K00000X", kind="both", size_class="small",
                                           founded_on=dt.date(2020, 1, 1), registration_region="Shanghai")
    buyer = Organisation.objects.create(name="Bench Buyer", credit_code="91310115MA1K00001X", kind="buyer", size_class="small",
                                        founded_on=dt.date(2020, 1, 1), registration_region="Shanghai")
    user = User.objects.create(username="bench")
    h100 = DeviceModel.objects.create(vendor="NVIDIA", name="H100 SXM", chip_class="training", is_domestic=False, fp16_tflops=Decimal("989"),
                                      fp32_tflops=Decimal("67"), fp64_tflops=Decimal("34"), memory_gb=80, power_w=700)
    dcs = []
    for d in range(12):
        dc = DataCentre.objects.create(owner=supplier, name=f"DC{d}", region="qingpu", pue=Decimal(rng.choice(["1.15", "1.25"] if d % 2 == 0 else ["1.15", "1.35"])),
                                       renewable_share=Decimal(rng.choice([10, 25, 40, 80])), carbon_intensity=Decimal("560"),
                                       security_level=rng.choice([3, 3, 4]), interconnect_gbps=400)
        DataCentreLatency.objects.create(data_centre=dc, metro="shanghai", rtt_ms=Decimal(str(rng.choice([1.5, 2.0, 3.5, 6.0, 28.0, 35.0]))))
        dcs.append(dc)
    start = timezone.now().replace(hour=0, minute=0, second=0, microsecond=0) + dt.timedelta(days=1)
    instruments = []
    for p in range(20):
        product = Product.objects.create(code=f"B{p}", name=f"Bench {p}", unit="FP16_PFH", lot_size=Decimal("1"), tick_size=Decimal("0.01"),
                                         reference_price=Decimal("15.00"), price_band_bps=5000)
        listings = Listing.objects.bulk_create([
            Listing(supplier=supplier, data_centre=dc, product=product, device_model=h100, device_count=100,
                    available_from=start, available_until=start + dt.timedelta(days=11)) for dc in dcs
        ])
        for day in range(10):
            ds = start + dt.timedelta(days=day)
            inst = Instrument.objects.create(
                product=product, code=f"B{p}-{day}", status="open", delivery_start=ds, delivery_end=ds + dt.timedelta(days=1),
                opens_at=start - dt.timedelta(days=1), gate_closure=ds - dt.timedelta(hours=1), tick_size=product.tick_size,
                lot_size=product.lot_size, min_order_lots=1, max_order_lots=100000, reference_price=product.reference_price,
                price_band_bps=5000, maker_fee_bps=5, taker_fee_bps=10)
            instruments.append((inst, rng.sample(listings, rng.choice([2, 3]))))
    orders, n = [], 0
    for inst, own in instruments:
        price = rng.randint(1300, 1600)
        for _ in range(50):
            price += rng.randint(1, 6)
            qty = rng.randint(1, 20)
            n += 1
            orders.append(Order(instrument=inst, organisation=supplier, user=user, client_order_id=f"a{n}", side=Side.SELL, price_fen_per_lot=price,
                                quantity=qty, open_quantity=qty, status=OrderStatus.OPEN, listing=rng.choice(own)))
    Order.objects.bulk_create(orders, batch_size=2000)
    demand = Demand(organisation=buyer, user=user, client_demand_id="bench", unit="FP16_PFH", quantity=Decimal("3000"),
                    earliest_start=start, deadline=start + dt.timedelta(days=10), max_latency_ms=Decimal("10"), max_pue=Decimal("1.30"),
                    min_security_level=3)
    times, cpu, solve_times = [], [], []
    for _ in range(reps):
        started, cpu_started = time.perf_counter(), time.process_time()
        plan = services.plan_compute(demand=demand)
        times.append((time.perf_counter() - started) * 1000)
        cpu.append((time.process_time() - cpu_started) * 1000)
        solve_times.append(plan["solver"]["solve_ms"])
    path.unlink(missing_ok=True)
    return {"instruments": len(instruments), "orders": len(orders), "plan_status": plan["status"], "lots": plan["totals"]["lots"] if plan["totals"] else 0,
            "median_ms": round(statistics.median(times), 1), "cpu_median_ms": round(statistics.median(cpu), 1), "solve_median_ms": round(statistics.median(solve_times), 1)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--other-reps", type=int, default=5, help="instances for the other objectives and single window")
    parser.add_argument("--checks", type=int, default=300)
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--no-db", action="store_true")
    args = parser.parse_args()

    out: dict = {}
    cheapest = synthetic(args.reps, solver.CHEAPEST, False, args.seed)
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs", flush=True)
    print(f"synthetic 200 x 50, cheapest, spread: median {cheapest['median_ms']} ms, CPU {cheapest['cpu_median_ms']} ms (min {cheapest['min_ms']}, max {cheapest['max_ms']}), "
          f"{cheapest['variables_median']} variables after pruning, {cheapest['binaries_median']} binaries", flush=True)
    variants = {}
    for objective in solver.OBJECTIVES:
        for single in (False, True):
            if objective == solver.CHEAPEST and not single:
                continue
            key = f"{objective}{'_single_window' if single else ''}"
            variants[key] = synthetic(args.other_reps, objective, single, args.seed + 1000)
            v = variants[key]
            print(f"synthetic 200 x 50, {key}: median {v['median_ms']} ms, CPU {v['cpu_median_ms']} ms (min {v['min_ms']}, max {v['max_ms']}), "
                  f"{v['variables_median']} variables, {v['binaries_median']} binaries, {v['not_optimal']} not optimal ({v['infeasible']} infeasible)", flush=True)
    checked, feasible, mismatches = brute(args.checks, args.seed)
    print(f"brute force: {checked} small instances ({feasible} feasible), {mismatches} mismatches", flush=True)
    out.update(plan_ms=cheapest["median_ms"], plan_cpu_ms=cheapest["cpu_median_ms"], load_average=round(os.getloadavg()[0], 1), instances_checked=checked, mismatches=mismatches, feasible_checked=feasible,
               synthetic_cheapest=cheapest, variants={k: v["median_ms"] for k, v in variants.items()},
               variants_cpu={k: v["cpu_median_ms"] for k, v in variants.items()})
    if not args.no_db:
        db = through_selectors(max(3, args.other_reps), args.seed)
        print(f"through the selectors (SQLite, {db['instruments']} instruments, {db['orders']} asks): plan_compute median {db['median_ms']} ms, "
              f"CPU {db['cpu_median_ms']} ms "
              f"(solver {db['solve_median_ms']} ms), {db['plan_status']}, {db['lots']} lots", flush=True)
        out["db_plan_ms"] = db["median_ms"]
        out["db_plan_cpu_ms"] = db["cpu_median_ms"]
        out["db_solve_ms"] = db["solve_median_ms"]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
