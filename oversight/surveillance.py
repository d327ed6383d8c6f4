"""Surveillance scans. Each scan reads a lookback window, finds pattern occurrences and raises one alert
per occurrence, keyed by a fingerprint (pattern, who, instrument, UTC day): a rescan updates the evidence
of the alert it raised before and never raises a second one.

Thresholds come from settings (SURVEILLANCE_*), with defaults below.
"""

from __future__ import annotations

import datetime as dt
import statistics
from collections import defaultdict
from decimal import Decimal

from django.conf import settings
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from exchange.models import Contract, OrderEvent, OrderEventKind, Trade
from marketplace.models import Instrument
from oversight.models import Alert, AlertKind, OwnershipGroup, Severity

DEFAULTS = {
    "LOOKBACK_HOURS": 48,
    "SPOOF_MIN_LOTS": 10,          # an order is "large" from this size ...
    "SPOOF_MEDIAN_FACTOR": 5,      # ... and from this many times the instrument's median order size
    "SPOOF_MAX_LIFETIME_SECONDS": 10,
    "SPOOF_MIN_COUNT": 3,          # "repeatedly": this many such cancels per organisation, instrument and day
    "SPOOF_NEAR_TOUCH_BPS": 100,   # within 1% of the last trade (or the reference before the first trade)
    "PRICE_DEVIATION_BPS": 500,    # trades more than 5% from the instrument's reference price
    "DELIVERY_RECENT_DAYS": 7,     # a supplier's delivery ratio over its contracts settled in the last week ...
    "DELIVERY_PRIOR_DAYS": 30,     # ... against the 30 days before
    "DELIVERY_DROP": "0.10",       # alert when it fell by more than 10 points ...
    "DELIVERY_FLOOR": "0.80",      # ... or, with no history, is below 80%
    "DELIVERY_MIN_CONTRACTS": 2,   # settled contracts needed in each period
    "ENERGY_MIN_RATIO": "0.25",    # metered IT energy below a quarter of rated power x device time: compute
    "ENERGY_MAX_RATIO": "1.30",    # without the power to run it; above 1.3x: energy the claimed devices cannot draw
}


def threshold(name: str):
    return getattr(settings, f"SURVEILLANCE_{name}", DEFAULTS[name])


def _day(at: dt.datetime) -> str:
    return at.astimezone(dt.UTC).date().isoformat()


@transaction.atomic
def alert_raise(*, kind: str, fingerprint: str, severity: str, summary: str, evidence: dict,
                organisation_id: int | None = None, instrument_id: int | None = None) -> tuple[Alert, bool]:
    """Create the alert for this occurrence, or refresh the evidence of the one already raised (its status
    and reviews stay as they are). Returns (alert, created)."""
    alert, created = Alert.objects.select_for_update().get_or_create(
        fingerprint=fingerprint,
        defaults={"kind": kind, "severity": severity, "summary": summary, "evidence": evidence,
                  "organisation_id": organisation_id, "instrument_id": instrument_id},
    )
    if not created and (alert.evidence != evidence or alert.summary != summary or alert.severity != severity):
        alert.evidence, alert.summary, alert.severity = evidence, summary, severity
        alert.save(update_fields=["evidence", "summary", "severity", "updated_at"])
    return alert, created


def owner_groups() -> dict[int, str]:
    return dict(OwnershipGroup.objects.values_list("organisation_id", "group"))


def scan_wash_trades(*, since: dt.datetime) -> int:
    """Trades whose buyer and seller share a beneficial owner (the same organisation, or organisations in
    the same ownership group)."""
    groups = owner_groups()
    linked = list(groups)
    qs = Trade.objects.filter(created_at__gte=since).filter(
        Q(buyer_id=F("seller_id")) | Q(buyer_id__in=linked, seller_id__in=linked)
    ).order_by("id").values_list("id", "instrument_id", "buyer_id", "seller_id", "quantity", "value_fen", "created_at")
    occurrences: dict[tuple[str, int, str], list] = defaultdict(list)
    for row in qs.iterator(chunk_size=2000):
        _, instrument_id, buyer, seller, _, _, at = row
        group = groups.get(buyer, f"org:{buyer}")
        if group != groups.get(seller, f"org:{seller}"):
            continue
        occurrences[(group, instrument_id, _day(at))].append(row)
    raised = 0
    for (group, instrument_id, day), rows in occurrences.items():
        orgs = sorted({r[2] for r in rows} | {r[3] for r in rows})
        evidence = {
            "beneficial_owner": group, "organisations": orgs, "day": day, "trades": [r[0] for r in rows],
            "quantity": sum(r[4] for r in rows), "value_fen": sum(r[5] for r in rows),
        }
        _, created = alert_raise(
            kind=AlertKind.WASH_TRADE, fingerprint=f"wash:{group}:{instrument_id}:{day}", severity=Severity.HIGH,
            summary=f"{len(rows)} trade(s) with the same beneficial owner ({group}) on both sides",
            evidence=evidence, organisation_id=orgs[0], instrument_id=instrument_id,
        )
        raised += created
    return raised


def _fen_per_lot(instrument: Instrument, price: Decimal) -> int:
    return int(price * instrument.lot_size * 100)


def scan_spoofing(*, since: dt.datetime) -> int:
    """Large orders cancelled within seconds without a fill, near the touch, repeatedly by one organisation
    on one instrument in a day. Several price levels among them makes it layering (high severity).
    "Near the touch" is measured against the last trade before the order (the reference price before the
    first trade): the committed book at that instant is not kept."""
    max_life = dt.timedelta(seconds=threshold("SPOOF_MAX_LIFETIME_SECONDS"))
    cancels = (
        OrderEvent.objects.filter(kind=OrderEventKind.CANCELLED, created_at__gte=since, order__filled_quantity=0)
        .order_by("id")
        .values_list("order_id", "order__organisation_id", "order__instrument_id", "order__side", "order__quantity",
                     "order__price_fen_per_lot", "order__created_at", "created_at")
    )
    candidates = [c for c in cancels.iterator(chunk_size=2000) if c[7] - c[6] <= max_life and c[5] is not None]
    if not candidates:
        return 0
    instruments = {i.pk: i for i in Instrument.objects.filter(pk__in={c[2] for c in candidates})}
    large: dict[int, int] = {}
    for instrument_id in instruments:
        sizes = list(OrderEvent.objects.filter(kind=OrderEventKind.ACCEPTED, order__instrument_id=instrument_id, created_at__gte=since).values_list("order__quantity", flat=True))
        median = statistics.median(sizes) if sizes else 0
        large[instrument_id] = max(threshold("SPOOF_MIN_LOTS"), threshold("SPOOF_MEDIAN_FACTOR") * median)
    near_bps = threshold("SPOOF_NEAR_TOUCH_BPS")
    occurrences: dict[tuple[int, int, str], list] = defaultdict(list)
    for c in candidates:
        order_id, org, instrument_id, side, qty, price, created, cancelled = c
        if qty < large[instrument_id]:
            continue
        instrument = instruments[instrument_id]
        touch = (Trade.objects.filter(instrument_id=instrument_id, created_at__lte=created).order_by("-id")
                 .values_list("price_fen_per_lot", flat=True).first()) or _fen_per_lot(instrument, instrument.reference_price)
        if abs(price - touch) * 10000 > near_bps * touch:
            continue
        occurrences[(org, instrument_id, _day(created))].append(
            {"order": order_id, "side": side, "quantity": qty, "price_fen_per_lot": price, "touch_fen_per_lot": touch,
             "lifetime_ms": int((cancelled - created).total_seconds() * 1000)})
    raised = 0
    for (org, instrument_id, day), orders in occurrences.items():
        if len(orders) < threshold("SPOOF_MIN_COUNT"):
            continue
        levels = sorted({o["price_fen_per_lot"] for o in orders})
        layering = len(levels) >= 3
        _, created = alert_raise(
            kind=AlertKind.SPOOFING, fingerprint=f"spoof:{org}:{instrument_id}:{day}",
            severity=Severity.HIGH if layering or len(orders) >= 2 * threshold("SPOOF_MIN_COUNT") else Severity.MEDIUM,
            summary=f"{len(orders)} large orders cancelled within {max_life.seconds} s without a fill, near the touch"
                    + (f", at {len(levels)} price levels (layering)" if layering else ""),
            evidence={"day": day, "orders": orders, "price_levels": levels, "large_from_lots": large[instrument_id]},
            organisation_id=org, instrument_id=instrument_id,
        )
        raised += created
    return raised


def scan_off_reference_prices(*, since: dt.datetime) -> int:
    """Trades more than PRICE_DEVIATION_BPS from the instrument's reference price, per instrument and day."""
    bps = threshold("PRICE_DEVIATION_BPS")
    instrument_ids = Trade.objects.filter(created_at__gte=since).values_list("instrument_id", flat=True).distinct()
    raised = 0
    for instrument in Instrument.objects.filter(pk__in=list(instrument_ids)):
        ref = _fen_per_lot(instrument, instrument.reference_price)
        # |p - ref| * 10000 > bps * ref, kept in integers.
        lo = ref - (bps * ref) // 10000
        hi = ref + (bps * ref) // 10000
        rows = (Trade.objects.filter(instrument=instrument, created_at__gte=since).filter(Q(price_fen_per_lot__lt=lo) | Q(price_fen_per_lot__gt=hi))
                .order_by("id").values_list("id", "price_fen_per_lot", "buyer_id", "seller_id", "created_at"))
        by_day: dict[str, list] = defaultdict(list)
        for row in rows:
            by_day[_day(row[4])].append(row)
        for day, trades in by_day.items():
            worst = max(abs(t[1] - ref) * 10000 // ref for t in trades)
            _, created = alert_raise(
                kind=AlertKind.OFF_REFERENCE_PRICE, fingerprint=f"price:{instrument.pk}:{day}",
                severity=Severity.HIGH if worst > 2 * bps else Severity.MEDIUM,
                summary=f"{len(trades)} trade(s) more than {bps / 100:g}% from the reference price (worst {worst / 100:g}%)",
                evidence={"day": day, "reference_fen_per_lot": ref, "worst_bps": worst,
                          "trades": [{"trade": t[0], "price_fen_per_lot": t[1], "buyer": t[2], "seller": t[3]} for t in trades]},
                instrument_id=instrument.pk,
            )
            raised += created
    return raised


def _ratio(released: int | None, value: int | None) -> Decimal | None:
    return (Decimal(released) / Decimal(value)).quantize(Decimal("0.0001")) if value else None


def scan_delivery_ratios(*, now: dt.datetime) -> int:
    """Suppliers whose delivery ratio (released over value of contracts settled, as metering computes its
    reputation) fell: the last DELIVERY_RECENT_DAYS against the DELIVERY_PRIOR_DAYS before. One alert per
    supplier per ISO week."""
    from django.db.models import Count, Sum

    from metering.models import ContractDelivery, DeliveryStatus

    recent_from = now - dt.timedelta(days=threshold("DELIVERY_RECENT_DAYS"))
    prior_from = recent_from - dt.timedelta(days=threshold("DELIVERY_PRIOR_DAYS"))
    settled = ContractDelivery.objects.filter(status=DeliveryStatus.SETTLED, settled_at__gte=prior_from, settled_at__lte=now)

    def per_supplier(qs) -> dict[int, tuple]:
        rows = qs.values("contract__seller_id").annotate(released=Sum("released_fen"), value=Sum("value_fen"), n=Count("pk"))
        return {r["contract__seller_id"]: (_ratio(r["released"], r["value"]), r["n"]) for r in rows}

    recent = per_supplier(settled.filter(settled_at__gte=recent_from))
    prior = per_supplier(settled.filter(settled_at__lt=recent_from))
    drop, floor, minimum = Decimal(threshold("DELIVERY_DROP")), Decimal(threshold("DELIVERY_FLOOR")), threshold("DELIVERY_MIN_CONTRACTS")
    year, week, _ = now.isocalendar()
    raised = 0
    for supplier, (ratio, n) in recent.items():
        if ratio is None or n < minimum:
            continue
        before, before_n = prior.get(supplier, (None, 0))
        has_history = before is not None and before_n >= minimum
        if not (has_history and ratio < before - drop) and not (not has_history and ratio < floor):
            continue
        _, created = alert_raise(
            kind=AlertKind.DELIVERY_RATIO, fingerprint=f"delivery:{supplier}:{year}-W{week:02d}",
            severity=Severity.HIGH if ratio < Decimal("0.5") else Severity.MEDIUM,
            summary=(f"delivery ratio fell from {before:.1%} to {ratio:.1%}" if has_history else f"delivery ratio {ratio:.1%}, below {floor:.0%}"),
            evidence={"recent_ratio": str(ratio), "recent_contracts": n, "prior_ratio": None if before is None else str(before),
                      "prior_contracts": before_n, "recent_from": recent_from.isoformat(), "prior_from": prior_from.isoformat()},
            organisation_id=supplier,
        )
        raised += created
    return raised


def scan_usage_energy(*, since: dt.datetime) -> int:
    """Contracts whose metered IT energy does not add up to the compute claimed: energy over rated power x
    device time outside [ENERGY_MIN_RATIO, ENERGY_MAX_RATIO]. Estimated energy (none metered) is skipped.
    One alert per contract."""
    from metering.models import UsageEvent

    rows = (UsageEvent.objects.filter(received_at__gte=since, energy_estimated=False)
            .values_list("contract_id", "supplier_id", "device_seconds", "energy_kwh", "device_model__power_w", "id"))
    per_contract: dict[int, dict] = {}
    for contract_id, supplier, device_seconds, kwh, power_w, event_id in rows.iterator(chunk_size=2000):
        c = per_contract.setdefault(contract_id, {"supplier": supplier, "expected": Decimal(0), "metered": Decimal(0), "events": []})
        c["expected"] += Decimal(device_seconds * power_w) / 3_600_000
        c["metered"] += kwh
        c["events"].append(event_id)
    low, high = Decimal(threshold("ENERGY_MIN_RATIO")), Decimal(threshold("ENERGY_MAX_RATIO"))
    raised = 0
    for contract_id, c in per_contract.items():
        if not c["expected"]:
            continue
        ratio = (c["metered"] / c["expected"]).quantize(Decimal("0.001"))
        if low <= ratio <= high:
            continue
        _, created = alert_raise(
            kind=AlertKind.USAGE_MISMATCH, fingerprint=f"usage:{contract_id}",
            severity=Severity.HIGH if ratio < low / 2 or ratio > high * 2 else Severity.MEDIUM,
            summary=f"metered energy is {ratio}x what the claimed device time draws at rated power",
            evidence={"contract": contract_id, "energy_ratio": str(ratio), "metered_kwh": str(c["metered"]),
                      "expected_kwh": str(c["expected"].quantize(Decimal("0.001"))), "usage_events": c["events"][:100],
                      "usage_event_count": len(c["events"])},
            organisation_id=c["supplier"],
        )
        raised += created
    return raised


FARMING_REASONS = ("round_trip", "related_party", "self_trade")


def scan_voucher_farming(*, since: dt.datetime) -> int:
    """Vouchers farmed by round trips. Two patterns:
    - a subsidised contract followed by the reverse trade (the supplier buying back from the buyer) within
      the programme's round-trip window: the vouchers app blocks a claim when the reverse came *first*, so
      this order slips through, and the subsidy paid on it should be clawed back (one alert per claim);
    - claims the vouchers app blocked as round trips, related parties or self-trades: attempts, one alert
      per buyer and day."""
    from vouchers.models import Redemption, RedemptionStatus

    raised = 0
    claims = (Redemption.objects.filter(created_at__gte=since).exclude(status=RedemptionStatus.BLOCKED)
              .select_related("contract", "voucher__programme").order_by("id"))
    for claim in claims.iterator(chunk_size=500):
        contract, window = claim.contract, dt.timedelta(days=claim.voucher.programme.round_trip_days)
        back = list(Contract.objects.filter(buyer_id=contract.seller_id, seller_id=contract.buyer_id, created_at__gte=contract.created_at,
                                            created_at__lte=contract.created_at + window).order_by("id").values_list("id", "value_fen")[:20])
        if not back:
            continue
        _, created = alert_raise(
            kind=AlertKind.VOUCHER_FARMING, fingerprint=f"voucher:{claim.pk}", severity=Severity.HIGH,
            summary=f"subsidised contract {contract.pk} was traded back within {window.days} days",
            evidence={"redemption": claim.pk, "contract": contract.pk, "committed_fen": claim.committed_fen, "paid_fen": claim.paid_fen,
                      "reverse_contracts": [b[0] for b in back], "reverse_value_fen": sum(b[1] for b in back)},
            organisation_id=contract.buyer_id, instrument_id=contract.instrument_id,
        )
        raised += created
    blocked = (Redemption.objects.filter(created_at__gte=since, status=RedemptionStatus.BLOCKED, reason__in=FARMING_REASONS)
               .order_by("id").values_list("id", "contract__buyer_id", "contract_id", "reason", "detail", "created_at"))
    attempts: dict[tuple[int, str], list] = defaultdict(list)
    for row in blocked:
        attempts[(row[1], _day(row[5]))].append(row)
    for (buyer, day), rows in attempts.items():
        _, created = alert_raise(
            kind=AlertKind.VOUCHER_FARMING, fingerprint=f"voucher-blocked:{buyer}:{day}", severity=Severity.MEDIUM,
            summary=f"{len(rows)} voucher claim(s) blocked as {', '.join(sorted({r[3] for r in rows}))}",
            evidence={"day": day, "claims": [{"redemption": r[0], "contract": r[2], "reason": r[3], "detail": r[4]} for r in rows]},
            organisation_id=buyer,
        )
        raised += created
    return raised


def surveillance_scan(*, now: dt.datetime | None = None) -> dict[str, int]:
    """Every scan over the lookback window; returns the number of new alerts per pattern."""
    now = now or timezone.now()
    since = now - dt.timedelta(hours=threshold("LOOKBACK_HOURS"))
    return {
        AlertKind.WASH_TRADE: scan_wash_trades(since=since),
        AlertKind.SPOOFING: scan_spoofing(since=since),
        AlertKind.OFF_REFERENCE_PRICE: scan_off_reference_prices(since=since),
        AlertKind.DELIVERY_RATIO: scan_delivery_ratios(now=now),
        AlertKind.USAGE_MISMATCH: scan_usage_energy(since=since),
        AlertKind.VOUCHER_FARMING: scan_voucher_farming(since=since),
    }
