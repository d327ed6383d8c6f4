"""Catalogue reads."""

from __future__ import annotations

from collections import defaultdict
from decimal import Decimal

from django.db.models import QuerySet

from common.api import id_of
from common.errors import ServiceError
from marketplace.models import DataCentre, DeviceInventory, Listing, Organisation, User
from marketplace.regions import is_shanghai
from marketplace.units import ComputeUnit

INVENTORY_GROUPS = ("region", "supplier", "chip_class", "domestic", "device_model", "data_centre")
_SHARE_PLACES = Decimal("0.01")
_PFLOPS_PLACES = Decimal("0.001")


def organisation_ids_for_user(user: User, roles: tuple[str, ...] | None = None) -> set[int]:
    if not user.is_authenticated:
        return set()
    qs = user.memberships.all()
    if roles:
        qs = qs.filter(role__in=roles)
    return set(qs.values_list("organisation_id", flat=True))


def data_centre_list() -> QuerySet[DataCentre]:
    return DataCentre.objects.select_related("owner").prefetch_related("latencies", "devices__device_model")


def listing_list_for_user(user: User) -> QuerySet[Listing]:
    """Listings are a supplier's commercial data: its members, operators and regulators see them."""
    qs = Listing.objects.select_related("supplier", "data_centre", "product", "device_model")
    if user.is_authenticated and (user.is_operator or user.is_regulator):
        return qs
    return qs.filter(supplier_id__in=organisation_ids_for_user(user))


def _group_key(row: DeviceInventory, group_by: str) -> tuple[str, str]:
    dc = row.data_centre
    model = row.device_model
    if group_by == "region":
        return dc.region, dc.get_region_display()
    if group_by == "supplier":
        return str(dc.owner_id), dc.owner.name
    if group_by == "chip_class":
        return model.chip_class, model.get_chip_class_display()
    if group_by == "domestic":
        return ("domestic", "domestic chips") if model.is_domestic else ("imported", "imported chips")
    if group_by == "device_model":
        return str(model.pk), str(model)
    return str(dc.pk), dc.name


def inventory_report(*, group_by: str = "region", supplier: Organisation | None = None) -> dict:
    """The compute list (算力清单): installed capacity in standard units, grouped.

    Capacity is PFLOPS at each precision (so PFLOPS-hours per hour). Domestic share is the share of FP16
    capacity on domestic chips; green share is FP16 capacity weighted by each data centre's renewable share.
    Both are percentages to two places.
    """
    if group_by not in INVENTORY_GROUPS:
        raise ValueError(group_by)
    rows = DeviceInventory.objects.filter(data_centre__is_active=True).select_related("data_centre__owner", "device_model")
    if supplier is not None:
        rows = rows.filter(data_centre__owner=supplier)
    units = list(ComputeUnit)

    def empty() -> dict:
        return {"devices": 0, "data_centres": set(), "pflops": defaultdict(Decimal), "domestic": Decimal(0), "green": Decimal(0), "shanghai": Decimal(0)}

    groups: dict[tuple[str, str], dict] = defaultdict(empty)
    total = empty()
    for row in rows:
        for acc in (groups[_group_key(row, group_by)], total):
            acc["devices"] += row.count
            acc["data_centres"].add(row.data_centre_id)
            for unit in units:
                acc["pflops"][unit] += row.count * row.device_model.pflops(unit)
            fp16 = row.count * row.device_model.pflops(ComputeUnit.FP16_PFLOPS_HOUR)
            if row.device_model.is_domestic:
                acc["domestic"] += fp16
            acc["green"] += fp16 * row.data_centre.renewable_share / 100
            if is_shanghai(row.data_centre.region):
                acc["shanghai"] += fp16

    def render(acc: dict) -> dict:
        fp16 = acc["pflops"][ComputeUnit.FP16_PFLOPS_HOUR]

        def share(part: Decimal) -> str:
            return str((part * 100 / fp16).quantize(_SHARE_PLACES)) if fp16 else "0.00"

        return {
            "devices": acc["devices"],
            "data_centres": len(acc["data_centres"]),
            "pflops": {unit.value: str(acc["pflops"][unit].quantize(_PFLOPS_PLACES)) for unit in units},
            "domestic_share": share(acc["domestic"]),
            "green_share": share(acc["green"]),
            "shanghai_share": share(acc["shanghai"]),
        }

    return {
        "group_by": group_by,
        "groups": [
            {"key": key, "label": label, **render(acc)}
            for (key, label), acc in sorted(groups.items(), key=lambda kv: -kv[1]["pflops"][ComputeUnit.FP16_PFLOPS_HOUR])
        ],
        "total": render(total),
    }


class NotAMember(ServiceError):
    """The user is not a member (in a required role) of the organisation asked for (404, so ids of other
    organisations do not leak), or belongs to several and must name one (400)."""

    status_code = 404
    field = "organisation"

    def __init__(self, message: str, *, ambiguous: bool = False):
        super().__init__(message, status_code=400 if ambiguous else 404)


def acting_organisation(user: User, organisation_id: int | str | None, roles: tuple[str, ...] | None = None) -> Organisation:
    """The organisation a request acts for: the one named (the user must be a member in one of `roles`),
    or the user's only qualifying organisation when none is named."""
    memberships = user.memberships.select_related("organisation") if user.is_authenticated else None
    if memberships is None:
        raise NotAMember("Sign in first.")
    if roles:
        memberships = memberships.filter(role__in=roles)
    if organisation_id in (None, ""):
        orgs = [m.organisation for m in memberships]
        if len(orgs) == 1:
            return orgs[0]
        if not orgs:
            raise NotAMember("You are not a member of an organisation that may do this.")
        raise NotAMember("You belong to several organisations: say which with `organisation`.", ambiguous=True)
    pk = id_of(organisation_id)
    if pk is None:
        raise NotAMember("`organisation` must be an organisation id.", ambiguous=True)
    membership = memberships.filter(organisation_id=pk).first()
    if membership is None:
        raise NotAMember("No such organisation among yours.")
    return membership.organisation
