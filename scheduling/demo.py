"""Demo demand: buyer1 asks for compute over the coming week, cheapest, within 10 ms of Shanghai, so the API
(and the portal page to come) shows a plan at once. Planned (a quote, nothing bought) after the seed's
transaction has committed and the demo market's resting orders are placed; idempotent on client_demand_id."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

from django.db import transaction
from django.utils import timezone

from common.demo import SeedContext, step
from marketplace.models import InstrumentStatus, MemberRole, Membership, Organisation
from scheduling import services
from scheduling.models import Demand

CLIENT_DEMAND_ID = "demo-week-cheapest"


@step(order=80)
def demo_demand(ctx: SeedContext) -> None:
    membership = (Membership.objects.filter(user__username="buyer1", role__in=[MemberRole.ADMIN, MemberRole.TRADER])
                  .select_related("user", "organisation").first())
    if membership is None or Demand.objects.filter(organisation=membership.organisation, client_demand_id=CLIENT_DEMAND_ID).exists():
        return
    product = _first_product()
    if product is None:
        return
    now = timezone.now()
    fields = dict(client_demand_id=CLIENT_DEMAND_ID, unit=product.unit, quantity=Decimal("10"), earliest_start=now,
                  deadline=now + dt.timedelta(days=8), max_latency_ms=Decimal("10"), objective="cheapest")
    transaction.on_commit(lambda: _plan(membership.user, membership.organisation, fields, ctx))


def _first_product():
    from marketplace.models import Instrument

    inst = Instrument.objects.filter(status=InstrumentStatus.OPEN).select_related("product").order_by("delivery_start", "pk").first()
    return inst.product if inst else None


def _plan(user, organisation: Organisation, fields: dict, ctx: SeedContext) -> None:
    demand, created = services.demand_create(user=user, organisation=organisation, fields=fields)
    if created:
        ctx.created += 1
        ctx.notes.append(f"Demo demand {demand.pk} for {organisation}: {demand.status}"
                         + (f" ({demand.plan['binding']['message']})" if demand.plan.get("binding") else "") + ".")
