"""Policy metrics against the city's targets (Shanghai guidance on unified scheduling of computing power,
2023; ../shared/DOMAIN.md), at platform, region or supplier level.

Capacity is PFLOPS at each precision. Installed: every active data centre's devices. Listed
(dispatchable through the exchange): active listings covering now. Traded: PFLOPS-hours in contracts made in
the period; delivered: PFLOPS-hours metering credited to them (when metering is installed). Efficiency
figures are FP16-capacity-weighted over installed devices: PUE, renewable share, and carbon per
PFLOPS-hour = rated power x PUE x grid intensity x (1 - renewable share) / FP16 PFLOPS.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from decimal import Decimal

from django.apps import apps
from django.utils import timezone
from rest_framework.exceptions import ValidationError

from exchange.models import Contract
from marketplace.models import DataCentre, DeviceInventory, Listing
from marketplace.units import ComputeUnit

LEVELS = ("platform", "region", "supplier")
FP16, FP32, FP64 = ComputeUnit.FP16_PFLOPS_HOUR.value, ComputeUnit.FP32_PFLOPS_HOUR.value, ComputeUnit.FP64_PFLOPS_HOUR.value
LATENCY_CLASSES = ((Decimal("1"), "le_1ms"), (Decimal("5"), "le_5ms"), (Decimal("20"), "le_20ms"))
Q3 = Decimal("0.001")
Q2 = Decimal("0.01")

TARGETS = {
    "connected_data_centres": {"op": ">=", "value": 4, "text": "at least 4 computing infrastructures connected (2023)"},
    "listed_fp16_pflops": {"op": ">=", "value": 1000, "text": "at least 1,000 PFLOPS FP16 schedulable (2023)"},
    "installed_fp32_pflops": {"op": ">=", "value": 18000, "text": "over 18,000 PFLOPS FP32 data-centre computing power (2025)"},
    "renewable_share_pct": {"op": ">", "value": 10, "text": "green share over 10% (2025)"},
    "data_centres_above_pue_1_25": {"op": "<=", "value": 0, "text": "new large data centres PUE at most 1.25 (2025)"},
}


def period(since: str | None, until: str | None) -> tuple[dt.datetime, dt.datetime]:
    def parse(name: str, raw: str | None, default: dt.datetime) -> dt.datetime:
        if not raw:
            return default
        try:
            value = dt.datetime.fromisoformat(raw)
        except ValueError:
            raise ValidationError({name: ["An ISO 8601 date-time."]}) from None
        return value if value.tzinfo else timezone.make_aware(value)

    end = parse("until", until, timezone.now())
    return parse("since", since, end - dt.timedelta(days=30)), end


def _key(dc: DataCentre, level: str) -> tuple[str, str]:
    if level == "region":
        return dc.region, dc.get_region_display()
    if level == "supplier":
        return str(dc.owner_id), dc.owner.name
    return "platform", "Platform"


def _empty() -> dict:
    return {
        "dcs": set(), "suppliers": set(), "installed": defaultdict(Decimal), "listed": defaultdict(Decimal),
        "traded": defaultdict(Decimal), "delivered": defaultdict(Decimal), "fp16_weight": Decimal(0), "pue": Decimal(0),
        "green": Decimal(0), "carbon_g": Decimal(0), "domestic": Decimal(0), "latency": defaultdict(int), "above_pue": set(),
        "voucher_paid": 0,
    }


def policy_metrics(*, level: str = "platform", since: dt.datetime, until: dt.datetime) -> dict:
    if level not in LEVELS:
        raise ValidationError({"level": [f"One of {', '.join(LEVELS)}."]})
    now = timezone.now()
    groups: dict[tuple[str, str], dict] = defaultdict(_empty)
    dcs = {dc.pk: dc for dc in DataCentre.objects.filter(is_active=True).select_related("owner").prefetch_related("latencies")}
    for dc in dcs.values():
        g = groups[_key(dc, level)]
        g["dcs"].add(dc.pk)
        g["suppliers"].add(dc.owner_id)
        rtt = dc.latency_to("shanghai")
        g["latency"][next((name for limit, name in LATENCY_CLASSES if rtt is not None and rtt <= limit), "above_20ms" if rtt is not None else "unmeasured")] += 1
        if dc.pue > Decimal("1.25"):
            g["above_pue"].add(dc.pk)
    for row in DeviceInventory.objects.filter(data_centre__in=list(dcs)).select_related("device_model"):
        dc, model = dcs[row.data_centre_id], row.device_model
        g = groups[_key(dc, level)]
        for unit in ComputeUnit:
            g["installed"][unit.value] += row.count * model.pflops(unit)
        fp16 = row.count * model.pflops(FP16)
        g["fp16_weight"] += fp16
        g["pue"] += fp16 * dc.pue
        g["green"] += fp16 * dc.renewable_share / 100
        # kWh per hour at the facility, times the grid's non-renewable carbon.
        g["carbon_g"] += Decimal(row.count * model.power_w) / 1000 * dc.pue * dc.carbon_intensity * (1 - dc.renewable_share / 100)
        if model.is_domestic:
            g["domestic"] += fp16
    listings = Listing.objects.filter(is_active=True, available_from__lte=now, available_until__gt=now, data_centre__in=list(dcs)).select_related("device_model", "product")
    for listing in listings:
        groups[_key(dcs[listing.data_centre_id], level)]["listed"][listing.product.unit] += listing.units_per_hour
    contracts = Contract.objects.filter(created_at__gte=since, created_at__lt=until).select_related("instrument__product", "listing")
    delivered = _delivered_micro(contracts)
    subsidy = _voucher_paid_fen(contracts)
    for c in contracts:
        dc = dcs.get(c.listing.data_centre_id)
        if dc is None:
            continue
        g = groups[_key(dc, level)]
        unit = c.instrument.product.unit
        g["traded"][unit] += c.quantity * c.instrument.lot_size
        if delivered is not None and c.pk in delivered:
            g["delivered"][unit] += Decimal(delivered[c.pk]) / 1_000_000
        if subsidy is not None:
            g["voucher_paid"] += subsidy.get(c.pk, 0)
    rendered = [
        _render(key, label, g, level, metering=delivered is not None, vouchers=subsidy is not None)
        for (key, label), g in sorted(groups.items())
    ]
    return {
        "level": level, "since": since.isoformat(), "until": until.isoformat(), "metering": _metering_model() is not None,
        "targets": TARGETS, "groups": rendered,
    }


def _metering_model():
    try:
        return apps.get_model("metering", "ContractDelivery")
    except LookupError:
        return None


def _delivered_micro(contracts) -> dict[int, int] | None:
    model = _metering_model()
    if model is None:
        return None
    return dict(model.objects.filter(contract__in=contracts.values("pk")).values_list("contract_id", "delivered_micro"))


def _voucher_paid_fen(contracts) -> dict[int, int] | None:
    """Subsidy paid to suppliers per contract (vouchers' redemptions), or None without the vouchers app."""
    try:
        model = apps.get_model("vouchers", "Redemption")
    except LookupError:
        return None
    return dict(model.objects.filter(contract__in=contracts.values("pk"), paid_fen__gt=0).values_list("contract_id", "paid_fen"))


def _render(key: str, label: str, g: dict, level: str, *, metering: bool, vouchers: bool = False) -> dict:
    weight = g["fp16_weight"]

    def weighted(total: Decimal, places: Decimal) -> str | None:
        return str((total / weight).quantize(places)) if weight else None

    traded_fp16 = g["traded"][FP16]
    m = {
        "connected_data_centres": len(g["dcs"]),
        "connected_suppliers": len(g["suppliers"]),
        "installed_fp16_pflops": str(g["installed"][FP16].quantize(Q3)),
        "installed_fp32_pflops": str(g["installed"][FP32].quantize(Q3)),
        "installed_fp64_pflops": str(g["installed"][FP64].quantize(Q3)),
        "listed_fp16_pflops": str(g["listed"][FP16].quantize(Q3)),
        "listed_fp32_pflops": str(g["listed"][FP32].quantize(Q3)),
        "traded_fp16_pflops_hours": str(traded_fp16.quantize(Q3)),
        "traded_fp32_pflops_hours": str(g["traded"][FP32].quantize(Q3)),
        "delivered_fp16_pflops_hours": str(g["delivered"][FP16].quantize(Q3)) if metering else None,
        "delivered_fp32_pflops_hours": str(g["delivered"][FP32].quantize(Q3)) if metering else None,
        "delivery_utilisation_pct": str((g["delivered"][FP16] * 100 / traded_fp16).quantize(Q2)) if metering and traded_fp16 else None,
        "pue_weighted": weighted(g["pue"], Q2),
        "renewable_share_pct": weighted(g["green"] * 100, Q2),
        "carbon_g_per_pflops_hour": weighted(g["carbon_g"], Q2),
        "domestic_chip_share_pct": weighted(g["domestic"] * 100, Q2),
        "data_centres_above_pue_1_25": len(g["above_pue"]),
        **{f"latency_{name}": g["latency"].get(name, 0) for name in ("le_1ms", "le_5ms", "le_20ms", "above_20ms", "unmeasured")},
        # Subsidy paid out of vouchers for delivered compute on the period's contracts, by the supplier's side.
        "voucher_spend_fen": g["voucher_paid"] if vouchers else None,
    }
    out = {"key": key, "label": label, "metrics": m}
    if level == "platform":
        out["meets_targets"] = {name: _meets(m[name], t) for name, t in TARGETS.items()}
    return out


def _meets(value, target: dict) -> bool | None:
    if value is None:
        return None
    v, t = Decimal(str(value)), Decimal(target["value"])
    return {">=": v >= t, ">": v > t, "<=": v <= t}[target["op"]]
