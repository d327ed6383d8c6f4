"""Demo market: resting bids and asks around the reference price on the next open window of each product, so
the order books, the portal's market pages and the websocket streams show something at once. Placed through
the normal order path (holds, capacity, the matcher) once the seed's transaction has committed; client order
ids are fixed, so a second run places nothing new.

The matcher is the only writer of the books: with the embedded thread matcher, seed before starting the
server (as `make run` does), not while it runs; with MATCHER_TRANSPORT=redis the orders go to the running
`runmatcher` processes (none running: they wait in the queue)."""

from __future__ import annotations

from django.db import transaction

from common.demo import SeedContext, step
from exchange import services, transport
from exchange.models import Order
from marketplace.models import Instrument, InstrumentStatus, Listing, MemberRole, Membership

LEVELS = (1, 2, 3)  # ticks away from the reference price
LOTS = (4, 8, 12)


def _trader(organisation_id: int):
    membership = Membership.objects.filter(organisation_id=organisation_id, role__in=[MemberRole.TRADER, MemberRole.ADMIN]).select_related("user", "organisation").order_by("role", "pk").first()
    return (membership.user, membership.organisation) if membership else (None, None)


@step(order=30)
def resting_orders(ctx: SeedContext) -> None:
    commands = []
    seen_products = set()
    for inst in Instrument.objects.filter(status=InstrumentStatus.OPEN).select_related("product").order_by("delivery_start", "pk"):
        if inst.product_id in seen_products:
            continue
        seen_products.add(inst.product_id)
        listing = Listing.objects.filter(
            product_id=inst.product_id, is_active=True, available_from__lte=inst.delivery_start, available_until__gte=inst.delivery_end,
        ).order_by("pk").first()
        buyer_membership = Membership.objects.filter(organisation__kind="buyer", role__in=[MemberRole.TRADER, MemberRole.ADMIN]).order_by("organisation_id").first()
        if listing is None or buyer_membership is None:
            continue
        seller, supplier = _trader(listing.supplier_id)
        buyer, buyer_org = _trader(buyer_membership.organisation_id)
        if seller is None or buyer is None:
            continue
        for ticks, lots in zip(LEVELS, LOTS, strict=True):
            for side, user, org, sign in (("sell", seller, supplier, 1), ("buy", buyer, buyer_org, -1)):
                cid = f"demo-{inst.code}-{side}-{ticks}"
                if Order.objects.filter(organisation=org, client_order_id=cid).exists():
                    continue
                request = services.OrderRequest(
                    instrument=inst, side=side, quantity=lots, client_order_id=cid,
                    price=inst.reference_price + sign * ticks * inst.tick_size * 5, listing=listing if side == "sell" else None,
                )
                try:
                    commands.append(services.order_command(user=user, organisation=org, request=request))
                except services.OrderError as exc:
                    ctx.notes.append(f"demo order {cid} skipped: {exc}")
    if commands:
        transaction.on_commit(lambda: _send(commands, ctx))


def _send(commands: list[dict], ctx: SeedContext) -> None:
    replies = transport.send(commands, timeout=30)
    if replies is None:
        ctx.notes.append(f"Demo market: {len(commands)} resting orders queued; no matcher answered yet.")
        return
    placed = sum(1 for r in replies if r.get("created"))
    refused = [r["error"]["message"] if isinstance(r["error"], dict) else r["error"] for r in replies if r.get("error")]
    ctx.created += placed
    ctx.notes.append(f"Demo market: {placed} resting orders placed" + (f"; refused: {refused[0]}" if refused else "") + ".")
