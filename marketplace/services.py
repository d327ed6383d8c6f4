"""Catalogue writes. Each service validates fully before writing and runs in one transaction, so a rejected
call changes nothing."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass
from zoneinfo import ZoneInfo

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Sum
from django.utils import timezone

from marketplace.models import (
    DataCentre,
    DataCentreLatency,
    DeviceInventory,
    DeviceModel,
    Instrument,
    InstrumentStatus,
    Listing,
    MemberRole,
    Membership,
    Organisation,
    Product,
    User,
    WindowKind,
)
from marketplace.signals import instrument_trading_changed


def _full_clean(instance, *, exclude: Iterable[str] | None = None) -> None:
    instance.full_clean(exclude=list(exclude or []), validate_unique=True)


@transaction.atomic
def organisation_create(*, user: User, **fields) -> Organisation:
    """Register an organisation; the registering user becomes its admin."""
    org = Organisation(**fields)
    _full_clean(org)
    org.save()
    Membership.objects.create(user=user, organisation=org, role=MemberRole.ADMIN)
    return org


@transaction.atomic
def organisation_update(*, organisation: Organisation, **fields) -> Organisation:
    for name, value in fields.items():
        setattr(organisation, name, value)
    _full_clean(organisation)
    organisation.save()
    return organisation


@dataclass(frozen=True)
class DeviceLine:
    device_model: DeviceModel
    count: int


def _check_unique(items: Iterable[object], key, field: str, what: str) -> None:
    seen = set()
    for item in items:
        k = key(item)
        if k in seen:
            raise ValidationError({field: [f"{what} {k} appears twice."]})
        seen.add(k)


@transaction.atomic
def data_centre_save(
    *,
    data_centre: DataCentre | None = None,
    fields: dict,
    latencies: list[dict] | None = None,
    devices: list[DeviceLine] | None = None,
) -> DataCentre:
    """Create or update a data centre with its latency table and device counts (each replaced whole when
    given). Device counts may not drop below what active listings have offered."""
    dc = data_centre or DataCentre()
    if data_centre is not None:
        # Lock the row: listings check capacity under the same lock.
        dc = DataCentre.objects.select_for_update().get(pk=data_centre.pk)
    for name, value in fields.items():
        setattr(dc, name, value)
    _full_clean(dc)
    if latencies is not None:
        _check_unique(latencies, lambda item: item["metro"], "latencies", "Metro area")
    if devices is not None:
        _check_unique(devices, lambda line: str(line.device_model), "devices", "Device model")
        if dc.pk:
            for line in devices:
                committed = _peak_listed_devices(dc, line.device_model)
                if line.count < committed:
                    raise ValidationError(
                        {"devices": [f"{line.device_model}: active listings offer {committed} devices; the count cannot go below that."]}
                    )
            kept = {line.device_model.pk for line in devices}
            dropped = Listing.objects.filter(data_centre=dc, is_active=True).exclude(device_model_id__in=kept)
            if dropped.exists():
                raise ValidationError({"devices": ["A device model with active listings cannot be removed."]})
    dc.save()
    if latencies is not None:
        dc.latencies.all().delete()
        rows = [DataCentreLatency(data_centre=dc, **item) for item in latencies]
        for row in rows:
            _full_clean(row, exclude=["data_centre"])
        DataCentreLatency.objects.bulk_create(rows)
    if devices is not None:
        dc.devices.all().delete()
        DeviceInventory.objects.bulk_create(
            [DeviceInventory(data_centre=dc, device_model=line.device_model, count=line.count) for line in devices]
        )
    return dc


def _overlapping_listings(dc: DataCentre, device_model: DeviceModel, start: dt.datetime, end: dt.datetime, exclude_pk=None):
    qs = Listing.objects.filter(
        data_centre=dc, device_model=device_model, is_active=True, available_from__lt=end, available_until__gt=start
    )
    return qs.exclude(pk=exclude_pk) if exclude_pk else qs


def _peak_listed_devices(dc: DataCentre, device_model: DeviceModel, start=None, end=None, exclude_pk=None) -> int:
    """Most devices of one model that active listings offer at any single moment in [start, end)."""
    start = start or dt.datetime.min.replace(tzinfo=dt.UTC)
    end = end or dt.datetime.max.replace(tzinfo=dt.UTC)
    listings = list(_overlapping_listings(dc, device_model, start, end, exclude_pk).values_list("available_from", "available_until", "device_count"))
    # Sweep over interval boundaries; at equal times an end comes before a start (ranges are half-open).
    points = sorted([(max(a, start), 1, n) for a, _, n in listings] + [(min(b, end), 0, -n) for _, b, n in listings])
    peak = current = 0
    for _, _, delta in points:
        current += delta
        peak = max(peak, current)
    return peak


@transaction.atomic
def listing_create(
    *,
    data_centre: DataCentre,
    product: Product,
    device_model: DeviceModel,
    device_count: int,
    available_from: dt.datetime,
    available_until: dt.datetime,
) -> Listing:
    """Offer devices to a product. The data centre must meet the product's grade, the device model must
    be able to deliver it, and the devices must not be offered twice at any moment: the data centre row
    is locked, so concurrent listings cannot together exceed its capacity."""
    dc = DataCentre.objects.select_for_update().get(pk=data_centre.pk)
    listing = Listing(
        supplier_id=dc.owner_id, data_centre=dc, product=product, device_model=device_model,
        device_count=device_count, available_from=available_from, available_until=available_until,
    )
    _full_clean(listing)
    errors: dict[str, list[str]] = {}
    if not dc.is_active:
        errors.setdefault("data_centre", []).append("The data centre is not active.")
    if not product.is_active:
        errors.setdefault("product", []).append("The product is not open for listings.")
    grade = product.grade_failures(dc)
    if grade:
        errors.setdefault("data_centre", []).append("Below the product's grade: " + "; ".join(grade) + ".")
    device = product.device_failures(device_model)
    if device:
        errors.setdefault("device_model", []).append("; ".join(device) + ".")
    if not errors:
        installed = DeviceInventory.objects.filter(data_centre=dc, device_model=device_model).aggregate(n=Sum("count"))["n"] or 0
        listed = _peak_listed_devices(dc, device_model, available_from, available_until)
        free = installed - listed
        if device_count > free:
            errors["device_count"] = [
                f"Capacity exceeded: {dc.name} has {installed} x {device_model}, {listed} already listed in this period, "
                f"so at most {max(free, 0)} can be offered."
            ]
    if errors:
        raise ValidationError(errors)
    listing.save()
    return listing


@transaction.atomic
def listing_withdraw(*, listing: Listing) -> Listing:
    listing.is_active = False
    listing.save(update_fields=["is_active"])
    return listing


# --- Instruments: listing ahead, opening, gate closure -------------------------------------------------

def _local_tz() -> ZoneInfo:
    return ZoneInfo(settings.TIME_ZONE)


def instrument_windows(product: Product, now: dt.datetime) -> list[tuple[dt.datetime, dt.datetime]]:
    """Delivery windows to have listed: `list_ahead_days` worth of windows, aligned to local hours or
    days, starting with the first whose gate has not closed (so a day product always has that many
    tradable days)."""
    local_now = now.astimezone(_local_tz())
    if product.window == WindowKind.DAY:
        step = dt.timedelta(days=1)
        start = local_now.replace(hour=0, minute=0, second=0, microsecond=0)
    else:
        step = dt.timedelta(hours=1)
        start = local_now.replace(minute=0, second=0, microsecond=0)
    gate = dt.timedelta(minutes=product.gate_closure_minutes)
    while start - gate <= now:
        start = (start + step).astimezone(_local_tz())
    horizon = start + dt.timedelta(days=product.list_ahead_days)
    windows = []
    while start < horizon:
        end = (start + step).astimezone(_local_tz())
        windows.append((start, end))
        start = end
    return windows


def _instrument_code(product: Product, start: dt.datetime) -> str:
    local = start.astimezone(_local_tz())
    return f"{product.code}-{local:%Y%m%d}" if product.window == WindowKind.DAY else f"{product.code}-{local:%Y%m%d%H}"


@transaction.atomic
def instruments_list_ahead(*, now: dt.datetime | None = None, products: Iterable[Product] | None = None) -> list[Instrument]:
    """Create the instruments each active product should have listed; idempotent."""
    now = now or timezone.now()
    created = []
    for product in products if products is not None else Product.objects.filter(is_active=True):
        existing = set(
            Instrument.objects.filter(product=product, delivery_start__gte=now).values_list("delivery_start", flat=True)
        )
        new = []
        for start, end in instrument_windows(product, now):
            if start in existing:
                continue
            new.append(
                Instrument(
                    product=product, code=_instrument_code(product, start), delivery_start=start, delivery_end=end,
                    opens_at=now, gate_closure=start - dt.timedelta(minutes=product.gate_closure_minutes),
                    tick_size=product.tick_size, lot_size=product.lot_size, min_order_lots=product.min_order_lots,
                    max_order_lots=product.max_order_lots, reference_price=product.reference_price,
                    price_band_bps=product.price_band_bps, maker_fee_bps=product.maker_fee_bps,
                    taker_fee_bps=product.taker_fee_bps,
                )
            )
        created += Instrument.objects.bulk_create(new, ignore_conflicts=True)
    return created


@transaction.atomic
def instruments_roll(*, now: dt.datetime | None = None) -> dict[str, int]:
    """The listing schedule's heartbeat: list ahead, open what is due, close at gate closure."""
    now = now or timezone.now()
    listed = len(instruments_list_ahead(now=now))
    opened = Instrument.objects.filter(status=InstrumentStatus.SCHEDULED, opens_at__lte=now, gate_closure__gt=now).update(status=InstrumentStatus.OPEN)
    closed = Instrument.objects.filter(
        status__in=[InstrumentStatus.SCHEDULED, InstrumentStatus.OPEN, InstrumentStatus.HALTED], gate_closure__lte=now
    ).update(status=InstrumentStatus.CLOSED)
    return {"listed": listed, "opened": opened, "closed": closed}


_TRANSITIONS = {
    "halt": ({InstrumentStatus.OPEN}, InstrumentStatus.HALTED),
    "resume": ({InstrumentStatus.HALTED}, InstrumentStatus.OPEN),
}


@transaction.atomic
def instrument_set_trading(*, instrument: Instrument, action: str, now: dt.datetime | None = None) -> Instrument:
    """Halt or resume trading in one instrument (operators)."""
    now = now or timezone.now()
    instrument = Instrument.objects.select_for_update().get(pk=instrument.pk)
    allowed, target = _TRANSITIONS[action]
    if instrument.status not in allowed:
        raise ValidationError({"status": [f"Cannot {action} an instrument that is {instrument.status}."]})
    if action == "resume" and instrument.gate_closure <= now:
        raise ValidationError({"status": ["Gate closure has passed; the instrument cannot resume."]})
    instrument.status = target
    instrument.save(update_fields=["status"])
    transaction.on_commit(
        lambda: instrument_trading_changed.send(sender=Instrument, instrument_id=instrument.pk, action=action)
    )
    return instrument
