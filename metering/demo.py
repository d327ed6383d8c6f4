"""Demo metering: usage for contracts whose delivery window has started, as a supplier's agent would send
it (hourly readings, deterministic ids, about 95% of the contracted quantity pro rata, the devices busy for
part of each hour when needed), then settlement of
what is due. Idempotent: rerunning sends the same ids (answered duplicate) and settles nothing twice.
The demo market's windows start tomorrow, so on a fresh seed this step has nothing to do yet; run
`seed_demo` again once trades' windows have begun (or let the agent do it: docs/metering.md)."""

from __future__ import annotations

import datetime as dt
import math

from django.utils import timezone

from common.demo import SeedContext, step
from exchange.models import Contract
from metering import services
from metering.models import DeliveryStatus

DELIVERY_SHARE = 0.95


def usage_for(contract: Contract, now: dt.datetime) -> list[dict]:
    inst, listing = contract.instrument, contract.listing
    per_device_hour = float(listing.device_model.pflops(inst.product.unit))
    hours = (inst.delivery_end - inst.delivery_start).total_seconds() / 3600
    if per_device_hour <= 0 or hours <= 0:
        return []
    quantity = float(contract.quantity * inst.lot_size)
    target = DELIVERY_SHARE * quantity / hours  # units per hour
    devices = min(listing.device_count, max(1, math.ceil(target / per_device_hour)))
    # Devices run part of each hour when a whole hour of them would deliver more than the target.
    busy = dt.timedelta(seconds=min(3600, int(3600 * target / (devices * per_device_hour))))
    events, t = [], inst.delivery_start
    end = min(inst.delivery_end, now)
    while t + dt.timedelta(hours=1) <= end:
        events.append({
            "event_id": f"demo-{contract.pk}-{int(t.timestamp())}", "contract": contract.pk,
            "data_centre": listing.data_centre_id, "device_model": listing.device_model_id, "start": t.isoformat(),
            "end": (t + busy).isoformat(), "device_count": devices, "utilisation_pct": 88 + contract.pk % 10,
        })
        t += dt.timedelta(hours=1)
    return events


@step(order=40)
def meter_started_contracts(ctx: SeedContext) -> None:
    now = timezone.now()
    started = (
        Contract.objects.filter(instrument__delivery_start__lte=now)
        .exclude(delivery__status__in=[DeliveryStatus.SETTLED, DeliveryStatus.DISPUTED])
        .select_related("instrument__product", "listing__device_model")
        .order_by("pk")
    )
    metered = 0
    for contract in started:
        events = usage_for(contract, now)
        for k in range(0, len(events), services.MAX_BATCH):
            result = services.usage_batch_ingest(supplier_ids={contract.seller_id}, events=events[k:k + services.MAX_BATCH], now=now)
            ctx.created += result.accepted
            metered += result.accepted
    settled = services.deliveries_settle_due(now=now)["settled"]
    ctx.notes.append(f"metering: {metered} usage events for started contracts, {settled} contracts settled")
