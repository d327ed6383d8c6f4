"""Scheduling reads: the live books of the instruments a demand may use, turned into the solver's offers, and
the demands an organisation may see."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from fractions import Fraction

from django.db import connection
from django.db.models import Prefetch, QuerySet
from django.utils import timezone

from exchange.models import Order, OrderStatus, Side
from exchange.selectors import book_depths_get
from marketplace.models import DataCentre, DataCentreLatency, DeviceModel, Instrument, InstrumentStatus, Listing, User
from marketplace.selectors import organisation_ids_for_user
from marketplace.units import rating_tflops
from scheduling import solver
from scheduling.models import Demand

MICRO = Decimal(1_000_000)


def demand_list_for_user(user: User) -> QuerySet[Demand]:
    """The user's organisations' demands; every demand for regulators and operators (they read everything)."""
    qs = Demand.objects.select_related("organisation")
    if user.is_authenticated and (user.is_regulator or user.is_operator):
        return qs
    return qs.filter(organisation_id__in=organisation_ids_for_user(user))


def epoch(moment: dt.datetime) -> int:
    return int(moment.timestamp())


def demand_spec(demand: Demand, *, units: Decimal | None = None, max_total_fen: int | None = None) -> solver.Spec:
    """The solver's view of a demand (optionally for a residual quantity and what is left of the budget)."""
    total = max_total_fen if max_total_fen is not None else (None if demand.max_total is None else int(demand.max_total * 100))
    return solver.Spec(
        units_micro=int(((units if units is not None else demand.quantity) * MICRO).to_integral_value()),
        earliest_start=epoch(demand.earliest_start), deadline=epoch(demand.deadline),
        single_window=demand.single_window, chip_classes=tuple(demand.chip_classes or ()),
        domestic_only=demand.domestic_only, latency_metro=demand.latency_metro,
        max_latency_ms=None if demand.max_latency_ms is None else float(demand.max_latency_ms),
        min_renewable_share=None if demand.min_renewable_share is None else float(demand.min_renewable_share),
        max_pue=None if demand.max_pue is None else float(demand.max_pue),
        min_security_level=demand.min_security_level,
        max_price_fen_per_unit=None if demand.max_price is None else Fraction(demand.max_price) * 100,
        max_total_fen=total, objective=demand.objective,
        fen_per_g_co2=float(demand.yuan_per_kg_co2) / 10,  # yuan/kg = 100 fen / 1000 g; nosemgrep: float-near-money -- a weight in the MILP objective, not an amount
    )


def listing_figures(listing: Listing | None, unit: str, lot_size: Decimal, metro: str) -> dict:
    """What one lot from a listing costs in energy and carbon, and the data centre's grade figures, from the
    data centre as registered in marketplace (the source metering's metrics are computed from): facility
    energy = lot units x rated power / rated TFLOPS x PUE; carbon = energy x grid intensity x non-renewable
    share (metering's formula)."""
    if listing is None:  # a sell order without a listing: unknown figures, never eligible
        return dict(UNKNOWN_FIGURES)
    return capacity_figures(listing.data_centre, listing.device_model, unit, lot_size, metro)


UNKNOWN_FIGURES = {"carbon_g_per_lot": 0.0, "energy_kwh_per_lot": 0.0, "latency_ms": None, "chip_class": "", "domestic": False,
                   "renewable_share": 0.0, "pue": 99.0, "security_level": 0, "data_centres": ()}


def capacity_figures(dc: DataCentre, device: DeviceModel, unit: str, lot_size: Decimal, metro: str) -> dict:
    """listing_figures for a data centre and device model (the latencies prefetched or not)."""
    rating = rating_tflops(device, unit) or Decimal(0)
    it_kwh = lot_size * device.power_w / rating if rating else Decimal(0)
    energy = it_kwh * dc.pue
    carbon = energy * dc.carbon_intensity * (100 - dc.renewable_share) / 100
    rtt = next((link.rtt_ms for link in dc.latencies.all() if link.metro == metro), None)
    return {
        "carbon_g_per_lot": float(carbon), "energy_kwh_per_lot": float(energy),
        "latency_ms": None if rtt is None else float(rtt), "chip_class": device.chip_class, "domestic": device.is_domestic,
        "renewable_share": float(dc.renewable_share), "pue": float(dc.pue), "security_level": dc.security_level,
        "data_centres": (dc.pk,),
    }


def offers_get(*, demand: Demand, now: dt.datetime | None = None, instrument_ids: list[int] | None = None) -> tuple[list[solver.Offer], dict]:
    """Offers for every open instrument of the demand's unit delivering between its earliest start and its
    deadline: each instrument's ask queue in price-time order (committed book, exchange.selectors), split
    where the data centre behind the asks changes. Returns the offers and a context (instruments, data
    centres) for rendering the plan."""
    now = now or timezone.now()
    qs = Instrument.objects.select_related("product").filter(
        status=InstrumentStatus.OPEN, gate_closure__gt=now, product__unit=demand.unit,
        delivery_start__gte=demand.earliest_start, delivery_end__lte=demand.deadline,
    )
    if instrument_ids is not None:
        qs = qs.filter(pk__in=instrument_ids)
    instruments = {i.pk: i for i in qs}
    depth = book_depths_get(instrument_ids=list(instruments))  # one statement, not one transaction per book
    asks = (
        Order.objects.filter(instrument_id__in=list(instruments), side=Side.SELL, status=OrderStatus.OPEN, open_quantity__gt=0)
        .order_by("instrument_id", "price_fen_per_lot", "id")
        .values_list("instrument_id", "price_fen_per_lot", "open_quantity", "organisation_id", "listing_id")
    )
    with connection.cursor() as cur:  # 10,000s of plain tuples: the cursor's rows without the queryset's per-row work
        cur.execute(*asks.query.sql_with_params())
        rows = cur.fetchall()
    listing_rows = {pk: (dc, dev) for pk, dc, dev in Listing.objects.filter(pk__in={r[4] for r in rows if r[4]}).values_list("pk", "data_centre_id", "device_model_id")}
    data_centres = DataCentre.objects.prefetch_related(
        Prefetch("latencies", queryset=DataCentreLatency.objects.filter(metro=demand.latency_metro))
    ).in_bulk({dc for dc, _ in listing_rows.values()})
    devices = DeviceModel.objects.in_bulk({dev for _, dev in listing_rows.values()})
    figures: dict[tuple[int | None, Decimal], tuple[dict, tuple]] = {}
    runs: dict[int, list[list]] = {pk: [] for pk in instruments}  # per queue: [price, own, figures, figures key, lots]
    # The committed levels cap what the order rows say, in case the matcher committed between the reads.
    level_room = {pk: dict(d["asks"]) for pk, d in depth.items()}
    for inst_id, price, qty, org_id, listing_id in rows:
        room = level_room[inst_id].get(price, 0)
        qty = min(qty, room)
        if qty <= 0:
            continue
        level_room[inst_id][price] = room - qty
        inst = instruments[inst_id]
        capacity = listing_rows.get(listing_id)
        key = (capacity, inst.lot_size)
        if key not in figures:
            if capacity is None:  # a sell order without a listing: unknown figures, never eligible
                f = dict(UNKNOWN_FIGURES)
            else:
                f = capacity_figures(data_centres[capacity[0]], devices[capacity[1]], demand.unit, inst.lot_size, demand.latency_metro)
            figures[key] = (f, tuple(f.values()))  # equal figures from different capacity merge too
        f, f_key = figures[key]
        own = org_id == demand.organisation_id
        run = runs[inst_id]
        if run and run[-1][0] == price and run[-1][1] == own and run[-1][3] == f_key:
            run[-1][4] += qty
        else:
            run.append([price, own, f, f_key, qty])
    queues = {pk: [solver.Segment(price_fen_per_lot=price, lots=lots, own=own, **f) for price, own, f, _, lots in run] for pk, run in runs.items()}
    offers = [
        solver.Offer(
            instrument_id=pk, window=(epoch(inst.delivery_start), epoch(inst.delivery_end)),
            lot_micro=int(inst.lot_size * MICRO), segments=queues[pk], min_lots=inst.min_order_lots,
            max_lots=inst.max_order_lots, book_seq=depth[pk]["seq"], label=inst.code,
        )
        for pk, inst in instruments.items()
    ]
    return offers, {"instruments": instruments, "data_centres": data_centres}

