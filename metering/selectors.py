"""Metering reads: contracts' delivery for their parties, dispute lists, efficiency and carbon metrics."""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from decimal import Decimal

from django.db.models import F, Q, QuerySet, Sum

from exchange.models import Contract
from ledger.models import JournalEntry
from marketplace.models import DataCentre, DataCentreLatency, Organisation, Product, User
from marketplace.selectors import organisation_ids_for_user
from metering.models import MICRO, Dispute, UsageEvent

METRIC_GROUPS = ("contract", "data_centre", "supplier", "product")
_GROUP_FIELD = {
    "contract": "contract_id", "data_centre": "data_centre_id", "supplier": "supplier_id",
    "product": "contract__instrument__product_id",
}
# Latency classes on the round trip to Shanghai (ms): the policy asks for millisecond-level latency.
LATENCY_CLASSES = ((Decimal(1), "A"), (Decimal(5), "B"), (Decimal(20), "C"))


def _sees_all(user: User) -> bool:
    return user.is_authenticated and (user.is_operator or user.is_regulator)


def contract_list_for_user(user: User) -> QuerySet[Contract]:
    """Contracts where one of the user's organisations is buyer or seller (all for operators and regulators)."""
    qs = Contract.objects.select_related("delivery", "instrument__product", "buyer", "seller", "trade", "listing")
    if _sees_all(user):
        return qs
    orgs = organisation_ids_for_user(user)
    return qs.filter(Q(buyer_id__in=orgs) | Q(seller_id__in=orgs))


def dispute_list_for_user(user: User) -> QuerySet[Dispute]:
    qs = Dispute.objects.select_related("contract", "opened_by", "resolved_by")
    if _sees_all(user):
        return qs
    orgs = organisation_ids_for_user(user)
    return qs.filter(Q(contract__buyer_id__in=orgs) | Q(contract__seller_id__in=orgs))


def contract_history(contract: Contract) -> list[dict]:
    """The contract's money movements in the ledger (releases, refunds, dispute adjustments), oldest first."""
    entries = JournalEntry.objects.filter(reference=f"contract:{contract.pk}").prefetch_related("postings__account").order_by("pk")
    out = []
    for e in entries:
        out.append({
            "entry": e.pk, "kind": e.kind, "memo": e.memo, "created_at": e.created_at,
            "postings": [{"account": str(p.account), "amount_fen": p.amount_fen} for p in e.postings.all()],
        })
    return out


def latency_class(rtt_ms: Decimal | None) -> str | None:
    if rtt_ms is None:
        return None
    for bound, name in LATENCY_CLASSES:
        if rtt_ms <= bound:
            return name
    return "D"


def _ratio(num: Decimal, den: Decimal, places: str) -> Decimal | None:
    return (num / den).quantize(Decimal(places)) if den else None


def metrics_report(*, user: User, group_by: str = "data_centre", start: dt.datetime | None = None, end: dt.datetime | None = None) -> list[dict]:
    """Delivered PFLOPS-hours (standard units of each product), utilisation, energy and carbon per unit,
    and latency class, per group. Energy is IT energy as metered (or estimated from rated power) times
    the data centre's PUE; carbon is that energy times grid intensity times the non-renewable share.
    Utilisation is weighted by device-seconds over events that report it."""
    if group_by not in METRIC_GROUPS:
        raise ValueError(group_by)
    qs = UsageEvent.objects.all()
    if not _sees_all(user):
        orgs = organisation_ids_for_user(user)
        qs = qs.filter(Q(supplier_id__in=orgs) | Q(contract__buyer_id__in=orgs))
    if start:
        qs = qs.filter(started_at__gte=start)
    if end:
        qs = qs.filter(started_at__lt=end)
    key = _GROUP_FIELD[group_by]
    rows = qs.values(key, "data_centre_id").annotate(
        units=Sum("credited_micro"), sum_seconds=Sum("device_seconds"), energy=Sum("energy_kwh"),
        util_weighted=Sum(F("utilisation_pct") * F("device_seconds"), filter=Q(utilisation_pct__isnull=False)),
        util_seconds=Sum("device_seconds", filter=Q(utilisation_pct__isnull=False)),
    ).order_by(key, "data_centre_id")
    rows = list(rows)
    dcs = DataCentre.objects.in_bulk({r["data_centre_id"] for r in rows})
    rtt = dict(DataCentreLatency.objects.filter(data_centre_id__in=dcs, metro="shanghai").values_list("data_centre_id", "rtt_ms"))
    groups: dict[int, dict] = defaultdict(lambda: {
        "units": 0, "device_seconds": 0, "energy": Decimal(0), "facility": Decimal(0), "carbon_g": Decimal(0),
        "util_w": Decimal(0), "util_s": 0, "rtt_w": Decimal(0), "rtt_units": 0, "data_centres": set(),
    })
    for r in rows:
        g = groups[r[key]]
        dc = dcs.get(r["data_centre_id"])
        energy = Decimal(r["energy"] or 0)
        g["units"] += r["units"] or 0
        g["device_seconds"] += r["sum_seconds"] or 0
        g["energy"] += energy
        g["util_w"] += Decimal(r["util_weighted"] or 0)
        g["util_s"] += r["util_seconds"] or 0
        g["data_centres"].add(r["data_centre_id"])
        if dc is not None:
            facility = energy * dc.pue
            g["facility"] += facility
            g["carbon_g"] += facility * dc.carbon_intensity * (100 - dc.renewable_share) / 100
            if rtt.get(dc.pk) is not None:
                g["rtt_w"] += rtt[dc.pk] * (r["units"] or 0)
                g["rtt_units"] += r["units"] or 0
    names = _group_names(group_by, set(groups))
    out = []
    for gid in sorted(groups):
        g = groups[gid]
        units = Decimal(g["units"]) / MICRO
        mean_rtt = _ratio(g["rtt_w"], Decimal(g["rtt_units"]), "0.01")
        out.append({
            "key": gid, "name": names.get(gid, str(gid)), "data_centres": len(g["data_centres"]),
            "delivered_units": units.quantize(Decimal("0.000001")),
            "device_hours": (Decimal(g["device_seconds"]) / 3600).quantize(Decimal("0.01")),
            "utilisation_pct": _ratio(g["util_w"], Decimal(g["util_s"]), "0.01"),
            "it_energy_kwh": g["energy"].quantize(Decimal("0.001")),
            "facility_energy_kwh": g["facility"].quantize(Decimal("0.001")),
            "energy_kwh_per_unit": _ratio(g["facility"], units, "0.001"),
            "carbon_kg": (g["carbon_g"] / 1000).quantize(Decimal("0.001")),
            "carbon_kg_per_unit": _ratio(g["carbon_g"] / 1000, units, "0.001"),
            "latency_ms": mean_rtt,
            "latency_class": latency_class(mean_rtt),
        })
    return out


def _group_names(group_by: str, ids: set[int]) -> dict[int, str]:
    if group_by == "data_centre":
        return {pk: dc.name for pk, dc in DataCentre.objects.in_bulk(ids).items()}
    if group_by == "supplier":
        return dict(Organisation.objects.filter(pk__in=ids).values_list("pk", "name"))
    if group_by == "product":
        return dict(Product.objects.filter(pk__in=ids).values_list("pk", "code"))
    return dict(Contract.objects.filter(pk__in=ids).values_list("pk", "instrument__code"))
