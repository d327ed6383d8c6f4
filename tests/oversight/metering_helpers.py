"""Metering rows made directly (the scans read them; how metering makes them is metering's business)."""

import datetime as dt
from decimal import Decimal

from django.utils import timezone

from metering.models import ContractDelivery, UsageEvent


def deliver(contract, *, share: str, settled_days_ago: float):
    """A settled delivery of `share` of the contract, settled that many days ago."""
    quantity = contract.quantity * 1_000_000
    delivered = int(quantity * Decimal(share))
    released = contract.value_fen * delivered // quantity
    return ContractDelivery.objects.create(
        contract=contract, status="settled", quantity_micro=quantity, value_fen=contract.value_fen, seller_fee_fen=0,
        delivered_micro=delivered, events=1, released_fen=released, fee_fen=0, refunded_fen=contract.value_fen - released,
        delivery_ratio=Decimal(share), settled_at=timezone.now() - dt.timedelta(days=settled_days_ago))


def usage(contract, n, *, kwh, estimated=False, devices=10, hours=1):
    start = timezone.now() - dt.timedelta(hours=hours + 1)
    listing = contract.listing
    return UsageEvent.objects.create(
        supplier_id=contract.seller_id, event_id=f"e{contract.pk}-{n}", contract=contract, data_centre_id=listing.data_centre_id,
        device_model_id=listing.device_model_id, started_at=start, ended_at=start + dt.timedelta(hours=hours), device_count=devices,
        device_seconds=devices * hours * 3600, units_micro=devices * hours * 989_000, credited_micro=devices * hours * 989_000,
        energy_kwh=Decimal(kwh), energy_estimated=estimated, received_at=timezone.now())
