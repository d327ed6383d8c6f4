"""Scheduling writes: a demand is planned (a quote: nothing is held or bought), then executed as IOC child
orders through the exchange's normal order path (exchange.services.order_place: the matcher holds the funds
and matches), never above the planned limits."""

from __future__ import annotations

import datetime as dt
import math
from decimal import Decimal

from django.db import IntegrityError, transaction
from django.utils import timezone

from common.errors import ServiceError
from exchange import services as exchange
from exchange.models import Order, OrderStatus, Side, TimeInForce
from marketplace.models import Organisation, User
from scheduling import selectors, solver
from scheduling.models import Demand, DemandChild, DemandStatus, ResidualPolicy

MAX_ROUNDS = 3
EXECUTION_LEASE = dt.timedelta(seconds=60)
FINAL = (DemandStatus.FILLED, DemandStatus.PARTIAL, DemandStatus.UNFILLED)


def _cny(fen: int | float) -> str:
    return f"{Decimal(int(fen)) / 100:.2f}"


def _take_payload(take: solver.Take, ctx: dict) -> dict:
    inst = ctx["instruments"][take.offer.instrument_id]
    lots_by_dc: dict[int, int] = {}
    for seg, n in zip(take.offer.segments, take.per_segment, strict=False):
        if n and seg.data_centres:  # a segment is one data centre's asks
            lots_by_dc[seg.data_centres[0]] = lots_by_dc.get(seg.data_centres[0], 0) + n
    dcs = sorted(lots_by_dc)
    dc_rows = ctx["data_centres"]
    return {
        "instrument": inst.pk, "instrument_code": inst.code, "product": inst.product.code,
        "delivery_start": inst.delivery_start.isoformat(), "delivery_end": inst.delivery_end.isoformat(),
        "lots": take.lots, "units": str(take.lots * inst.lot_size),
        "limit_fen_per_lot": take.limit_fen_per_lot, "limit_price": str(inst.fen_per_lot_to_price(take.limit_fen_per_lot)),
        "levels": [{"price_fen_per_lot": s.price_fen_per_lot, "lots": n} for s, n in zip(take.offer.segments, take.per_segment, strict=False) if n],
        "cost_fen": take.cost_fen, "cost_cny": _cny(take.cost_fen),
        "carbon_kg": round(take.carbon_g / 1000, 3), "energy_kwh": round(take.energy_kwh, 3), "latency_ms": take.latency_max(),
        "data_centres": [{"id": pk, "name": dc_rows[pk].name, "region": dc_rows[pk].region, "lots": lots_by_dc[pk]} for pk in dcs if pk in dc_rows],
        "book_seq": take.offer.book_seq,
    }


def _totals(takes: list[solver.Take], lot_fee_bps: dict[int, int]) -> dict:
    cost = sum(t.cost_fen for t in takes)
    units = sum(t.units_micro for t in takes)
    lat = [t.latency_max() for t in takes if t.latency_max() is not None]
    weighted = sum((t.latency_max() or 0) * t.units_micro for t in takes)
    fee = sum(math.ceil(t.cost_fen * lot_fee_bps.get(t.offer.instrument_id, 0) / 10000) for t in takes)
    return {
        "lots": sum(t.lots for t in takes), "units": str(Decimal(units) / selectors.MICRO), "cost_fen": cost, "cost_cny": _cny(cost),
        "taker_fee_estimate_fen": fee, "carbon_kg": round(sum(t.carbon_g for t in takes) / 1000, 3),
        "energy_kwh": round(sum(t.energy_kwh for t in takes), 3), "latency_ms_max": max(lat) if lat else None,
        "latency_ms_avg": round(weighted / units, 2) if units else None,
        "windows": len({t.offer.window for t in takes}), "instruments": len(takes),
    }


def plan_compute(*, demand: Demand, units: Decimal | None = None, max_total_fen: int | None = None, now: dt.datetime | None = None) -> dict:
    """The optimal plan for the demand on the live books now, as stored in Demand.plan (JSON)."""
    offers, ctx = selectors.offers_get(demand=demand, now=now)
    spec = selectors.demand_spec(demand, units=units, max_total_fen=max_total_fen)
    result = solver.solve(spec, offers)
    fees = {pk: inst.taker_fee_bps for pk, inst in ctx["instruments"].items()}
    plan = {
        "status": result.status, "planned_at": (now or timezone.now()).isoformat(), "objective": demand.objective,
        "units_required": str(Decimal(spec.units_micro) / selectors.MICRO), "unit": demand.unit,
        "max_total_fen": spec.max_total_fen,
        "allocations": [_take_payload(t, ctx) for t in result.takes],
        "totals": _totals(result.takes, fees) if result.takes else None,
        "single_instrument_alternative": None, "binding": result.binding,
        "book_seqs": {str(o.instrument_id): o.book_seq for o in offers},
        "solver": {"instruments": len(offers), "variables": result.variables, "binaries": result.binaries, "solve_ms": round(result.solve_ms, 1)},
    }
    if result.alternative is not None:
        plan["single_instrument_alternative"] = {**_take_payload(result.alternative, ctx), "totals": _totals([result.alternative], fees)}
    return plan


def demand_create(*, user: User, organisation: Organisation, fields: dict, now: dt.datetime | None = None) -> tuple[Demand, bool]:
    """Store a demand and plan it. Idempotent on (organisation, client_demand_id): a retry returns the stored
    demand (created False)."""
    existing = Demand.objects.filter(organisation=organisation, client_demand_id=fields["client_demand_id"]).first()
    if existing is not None:
        return existing, False
    demand = Demand(organisation=organisation, user=user, **fields)
    demand.plan = plan_compute(demand=demand, now=now)
    demand.status = DemandStatus.PLANNED if demand.plan["allocations"] else DemandStatus.INFEASIBLE
    try:
        with transaction.atomic():
            demand.save()
    except IntegrityError:  # a concurrent retry stored it first
        return Demand.objects.get(organisation=organisation, client_demand_id=fields["client_demand_id"]), False
    return demand, True


def demand_replan(*, demand: Demand, now: dt.datetime | None = None) -> Demand:
    """A fresh quote on the books as they are now (before execution only)."""
    with transaction.atomic():
        demand = Demand.objects.select_for_update().get(pk=demand.pk)
        if demand.status not in (DemandStatus.PLANNED, DemandStatus.INFEASIBLE):
            raise ServiceError(f"The demand is {demand.status}; only a demand not yet executed can be re-planned.", field="status", status_code=409)
        demand.plan = plan_compute(demand=demand, now=now)
        demand.status = DemandStatus.PLANNED if demand.plan["allocations"] else DemandStatus.INFEASIBLE
        demand.save(update_fields=["plan", "status", "updated_at"])
    return demand


def _book_changes(demand: Demand, plan: dict, now: dt.datetime) -> tuple[list[dict], dict[int, int]]:
    """Compare each planned allocation with the book now: what an IOC at the planned limit would get from the
    eligible queue. Returns the changes (for the report) and the lots to send per instrument."""
    ids = [a["instrument"] for a in plan["allocations"]]
    offers, _ = selectors.offers_get(demand=demand, now=now, instrument_ids=ids)
    by_id = {o.instrument_id: o for o in offers}
    spec = selectors.demand_spec(demand)
    changes, send = [], {}
    for a in plan["allocations"]:
        offer = by_id.get(a["instrument"])
        planned = a["lots"]
        if offer is None:
            changes.append({"instrument": a["instrument"], "instrument_code": a["instrument_code"], "planned_lots": planned,
                            "available_lots": 0, "note": "the instrument is no longer open for trading"})
            send[a["instrument"]] = 0
            continue
        usable = [s for s in solver.usable_prefix(spec, offer) if s.price_fen_per_lot <= a["limit_fen_per_lot"]]
        available = min(sum(s.lots for s in usable), offer.max_lots)
        lots = min(planned, available)
        now_cost = solver.prefix_fill(offer, usable, lots).cost_fen if lots else 0
        planned_cost = a["cost_fen"]
        send[a["instrument"]] = lots if lots >= offer.min_lots else 0
        if offer.book_seq != a["book_seq"] or lots != planned or now_cost != planned_cost:
            note = []
            if lots < planned:
                note.append(f"only {available} of the planned {planned} lots are offered at or below the limit by eligible asks ahead in the queue")
            if lots and now_cost != planned_cost:
                note.append(f"cost of {lots} lots now {_cny(now_cost)} CNY (planned {_cny(planned_cost)} CNY for {planned})")
            if not note:
                note.append("the book moved (sequence changed) but the planned lots are still there at the planned prices")
            changes.append({"instrument": a["instrument"], "instrument_code": a["instrument_code"], "book_seq_planned": a["book_seq"],
                            "book_seq_now": offer.book_seq, "planned_lots": planned, "available_lots": available,
                            "planned_cost_fen": planned_cost, "cost_now_fen": now_cost, "note": "; ".join(note)})
    return changes, send


def _place_round(*, user: User, demand: Demand, round_no: int, plan: dict, now: dt.datetime) -> dict:
    changes, send = _book_changes(demand, plan, now)
    with transaction.atomic():
        for index, a in enumerate(plan["allocations"]):
            DemandChild.objects.get_or_create(
                demand=demand, round=round_no, index=index,
                defaults=dict(
                    instrument_id=a["instrument"], client_order_id=f"dmd-{demand.pk}-{round_no}-{index}",
                    planned_lots=a["lots"], lots=send[a["instrument"]], limit_fen_per_lot=a["limit_fen_per_lot"],
                    planned_cost_fen=a["cost_fen"], status="new" if send[a["instrument"]] else "skipped",
                    note="" if send[a["instrument"]] else "nothing eligible left at or below the planned limit",
                ),
            )
    for child in DemandChild.objects.filter(demand=demand, round=round_no, status="new").select_related("instrument"):
        _child_send(user=user, demand=demand, child=child)
    return {"round": round_no, "planned_at": plan["planned_at"], "changes": changes}


def _child_send(*, user: User, demand: Demand, child: DemandChild) -> None:
    inst = child.instrument
    price = inst.fen_per_lot_to_price(child.limit_fen_per_lot)
    request = exchange.OrderRequest(instrument=inst, side=Side.BUY, quantity=child.lots, client_order_id=child.client_order_id,
                                    price=price, time_in_force=TimeInForce.IOC)
    try:
        placed = exchange.order_place(user=user, organisation=demand.organisation, request=request)
    except ServiceError as exc:
        child.status, child.note = "rejected", str(exc)[:300]
        child.save(update_fields=["status", "note"])
        return
    if placed.state is None:
        child.status = "pending"
        child.save(update_fields=["status"])
        return
    _child_from_state(child, placed.state)


def _child_from_state(child: DemandChild, state: dict) -> None:
    child.order_id = state["id"]
    child.status = state["status"]
    child.filled_lots = state["filled_quantity"]
    child.filled_cost_fen = sum(f["price_fen_per_lot"] * f["quantity"] for f in state["fills"])
    child.save(update_fields=["order", "status", "filled_lots", "filled_cost_fen"])


def children_refresh(*, demand: Demand) -> None:
    """Children whose matcher answer was late: read their orders by client_order_id."""
    for child in demand.children.filter(status__in=("pending", OrderStatus.OPEN, OrderStatus.PENDING)):
        order = Order.objects.filter(organisation_id=demand.organisation_id, client_order_id=child.client_order_id).first()
        if order is None:
            continue
        fills = [{"price_fen_per_lot": t.price_fen_per_lot, "quantity": t.quantity} for t in order.taker_trades.all()]
        _child_from_state(child, {"id": order.pk, "status": order.status, "filled_quantity": order.filled_quantity, "fills": fills})


def _filled(demand: Demand) -> tuple[int, int]:
    """Units (millionths) and fen bought so far."""
    units = cost = 0
    for child in demand.children.select_related("instrument"):
        units += child.filled_lots * int(child.instrument.lot_size * selectors.MICRO)
        cost += child.filled_cost_fen
    return units, cost


def demand_execute(*, user: User, demand: Demand, now: dt.datetime | None = None) -> Demand:
    """Execute the plan: one IOC child per planned instrument at the planned limit, for the lots the book
    still offers there by eligible asks; then, if the buyer chose so, re-plan the residual and buy it in a
    further round (at most MAX_ROUNDS). Safe to retry: a child's client_order_id is fixed per (demand, round,
    index), so the exchange answers a resend with the stored order."""
    now = now or timezone.now()
    with transaction.atomic():
        demand = Demand.objects.select_for_update().get(pk=demand.pk)
        if demand.status in FINAL:
            return demand
        if demand.status == DemandStatus.INFEASIBLE:
            raise ServiceError(f"Nothing to execute: {demand.plan.get('binding', {}).get('message', 'the demand is infeasible')}.", field="plan", status_code=409)
        if demand.status == DemandStatus.EXECUTING and now - demand.updated_at < EXECUTION_LEASE:
            # Another request is executing it now; a crashed execution may be resumed once the lease is over.
            raise ServiceError("The demand is being executed; ask for its status.", field="status", status_code=409)
        if demand.status == DemandStatus.PLANNED:
            demand.status, demand.rounds = DemandStatus.EXECUTING, 1
            demand.execution = {"rounds": []}
        demand.save(update_fields=["status", "rounds", "execution", "updated_at"])  # takes (or renews) the lease
    required = int((demand.quantity * selectors.MICRO).to_integral_value())
    plan = demand.plan
    while True:
        round_no = demand.rounds
        if len(demand.execution["rounds"]) < round_no:
            report = _place_round(user=user, demand=demand, round_no=round_no, plan=plan, now=now)
            demand.execution["rounds"].append({**report, "plan": plan if round_no > 1 else None})
        else:  # a retry after a crash: send whatever this round did not send yet
            for child in demand.children.filter(round=round_no, status="new").select_related("instrument"):
                _child_send(user=user, demand=demand, child=child)
        units, cost = _filled(demand)
        residual = required - units
        if residual <= 0 or demand.residual != ResidualPolicy.REPLAN or round_no >= MAX_ROUNDS:
            break
        budget = None if demand.max_total is None else int(demand.max_total * 100) - cost
        plan = plan_compute(demand=demand, units=Decimal(residual) / selectors.MICRO, max_total_fen=budget, now=now)
        if not plan["allocations"]:
            demand.execution["residual_plan"] = {"binding": plan["binding"]}
            break
        demand.rounds = round_no + 1
        demand.save(update_fields=["rounds", "execution", "updated_at"])
    demand.execution.update(_progress(demand, required))
    demand.status = (DemandStatus.FILLED if units >= required else DemandStatus.PARTIAL if units else DemandStatus.UNFILLED)
    if demand.children.filter(status__in=("pending", OrderStatus.PENDING)).exists():
        demand.status = DemandStatus.EXECUTING
    demand.save(update_fields=["status", "rounds", "execution", "updated_at"])
    return demand


def _progress(demand: Demand, required: int) -> dict:
    units, cost = _filled(demand)
    plan_totals = demand.plan.get("totals") or {}
    return {
        "filled_units": str(Decimal(units) / selectors.MICRO), "residual_units": str(Decimal(max(required - units, 0)) / selectors.MICRO),
        "filled_cost_fen": cost, "filled_cost_cny": _cny(cost), "planned_cost_fen": plan_totals.get("cost_fen"),
    }


def demand_status_refresh(*, demand: Demand) -> Demand:
    """Bring late children up to date and the demand's status with them."""
    if demand.status != DemandStatus.EXECUTING:
        return demand
    children_refresh(demand=demand)
    required = int((demand.quantity * selectors.MICRO).to_integral_value())
    if not demand.children.filter(status__in=("pending", OrderStatus.PENDING, "new")).exists():
        units, _ = _filled(demand)
        demand.status = DemandStatus.FILLED if units >= required else DemandStatus.PARTIAL if units else DemandStatus.UNFILLED
    demand.execution.update(_progress(demand, required))
    demand.save(update_fields=["status", "execution", "updated_at"])
    return demand
