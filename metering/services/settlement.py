"""Window-end settlement, supplier reputation, and disputes."""

from __future__ import annotations

import datetime as dt
import logging
from decimal import ROUND_DOWN, Decimal

from django.db import transaction
from django.db.models import Count, Q, Sum
from django.utils import timezone

from common.errors import ServiceError
from exchange.models import Contract
from ledger import services as ledger
from ledger.models import EntryKind
from marketplace.models import MemberRole, Organisation, User
from marketplace.selectors import organisation_ids_for_user
from metering import funding
from metering.models import MICRO, ContractDelivery, DeliveryStatus, Dispute, DisputeStatus
from metering.services.ingest import _units, contracts_status_sync, deliveries_ensure, grace_period
from metering.services.money import fee_for, movement_request, parties_for, released_for

log = logging.getLogger(__name__)
REPUTATION_DAYS = 90
_RATIO = Decimal("0.0001")


class MeteringError(ServiceError):
    pass


def _delivery_locked(contract: Contract) -> ContractDelivery:
    deliveries_ensure([contract])
    return ContractDelivery.objects.select_for_update().get(pk=contract.pk)


def _contract(contract_id: int) -> Contract:
    return Contract.objects.select_related("instrument", "trade").get(pk=contract_id)


def settle_due_at(contract: Contract) -> dt.datetime:
    return contract.instrument.delivery_end + grace_period()


@transaction.atomic
def delivery_settle(*, contract_id: int, now: dt.datetime | None = None) -> ContractDelivery:
    """Settle a contract after its window and grace: refund the undelivered value to the buyer and record
    the delivery ratio. Idempotent (a settled delivery is returned as it is); a disputed one waits for its
    resolution. Locks the delivery row."""
    now = now or timezone.now()
    contract = _contract(contract_id)
    d = _delivery_locked(contract)
    if d.status in (DeliveryStatus.SETTLED, DeliveryStatus.DISPUTED):
        return d
    if now < settle_due_at(contract):
        raise MeteringError("The contract's window and grace period are not over yet.", field="contract")
    parties = parties_for({(contract.buyer_id, contract.seller_id)})[(contract.buyer_id, contract.seller_id)]
    requests = []
    # Releases happen as events are rated; this catches up anything not yet released (e.g. after a dispute).
    released = released_for(value_fen=d.value_fen, quantity_micro=d.quantity_micro, delivered_micro=d.delivered_micro)
    fee = fee_for(seller_fee_fen=d.seller_fee_fen, value_fen=d.value_fen, released_fen=released)
    catch_up = movement_request(
        contract_id=d.pk, parties=parties, released_from=d.released_fen, released_to=released, fee_from=d.fee_fen,
        fee_to=fee, key=f"delivery:{d.pk}:settle-release", memo=f"delivery of contract {d.pk} at settlement",
    )
    if catch_up is not None:
        requests.append(catch_up)
    refund = d.value_fen - released
    if refund:
        requests.append(ledger.EntryRequest(
            idempotency_key=f"delivery:{d.pk}:refund", kind=EntryKind.REFUND,
            postings=[(parties.buyer_escrow, -refund), (parties.buyer_available, refund)],
            memo=f"undelivered part of contract {d.pk}: {_units(d.quantity_micro - d.delivered_micro)} units",
            reference=f"contract:{d.pk}",
        ))
    requests.extend(funding.requests_for([funding.EscrowMove(
        d.pk, d.value_fen, d.released_fen, released, refund, parties.buyer_escrow, parties.buyer_available, f"delivery:{d.pk}:settle", final=True,
    )]))
    if requests:
        ledger.entries_post(requests, returning=False)
    d.released_fen, d.fee_fen, d.refunded_fen = released, fee, refund
    d.status = DeliveryStatus.SETTLED
    d.delivery_ratio = (Decimal(d.delivered_micro) / Decimal(d.quantity_micro)).quantize(_RATIO, ROUND_DOWN) if d.quantity_micro else Decimal(1)
    d.settled_at = now
    d.save()
    contracts_status_sync([d])
    return d


def deliveries_settle_due(*, now: dt.datetime | None = None, limit: int = 500) -> dict[str, int]:
    """Settle every contract whose window and grace are over (not disputed), then refresh the reputation
    of their suppliers. Each contract settles in its own transaction, so one failure stops no other."""
    now = now or timezone.now()
    due = list(
        Contract.objects.filter(instrument__delivery_end__lte=now - grace_period())
        .filter(Q(delivery__isnull=True) | Q(delivery__status__in=[DeliveryStatus.OPEN, DeliveryStatus.DELIVERING]))
        .order_by("pk").values_list("pk", "seller_id")[:limit]
    )
    settled, failed, suppliers = 0, 0, set()
    for pk, seller_id in due:
        try:
            delivery_settle(contract_id=pk, now=now)
        except Exception:  # e.g. a ledger refusal: logged, retried at the next run, the others go on
            log.exception("settlement of contract %s failed", pk)
            failed += 1
            continue
        settled += 1
        suppliers.add(seller_id)
    for seller_id in sorted(suppliers):
        supplier_reputation_update(organisation_id=seller_id, now=now)
    out = {"settled": settled, "suppliers": len(suppliers)}
    if failed:
        out["failed"] = failed
    return out


def supplier_reputation_update(*, organisation_id: int, now: dt.datetime | None = None) -> Decimal | None:
    """Delivery ratio over the supplier's contracts settled in the last REPUTATION_DAYS, weighted by
    value: released / value. Stored on the organisation for marketplace to show."""
    now = now or timezone.now()
    agg = ContractDelivery.objects.filter(
        contract__seller_id=organisation_id, status=DeliveryStatus.SETTLED, settled_at__gte=now - dt.timedelta(days=REPUTATION_DAYS)
    ).aggregate(released=Sum("released_fen"), value=Sum("value_fen"), n=Count("pk"))
    ratio = None
    if agg["value"]:
        ratio = (Decimal(agg["released"]) / Decimal(agg["value"])).quantize(_RATIO, ROUND_DOWN)
    Organisation.objects.filter(pk=organisation_id).update(delivery_ratio=ratio, delivery_contracts=agg["n"] or 0)
    return ratio


# --- Disputes --------------------------------------------------------------------------------------------

@transaction.atomic
def dispute_open(*, contract_id: int, user: User, reason: str, now: dt.datetime | None = None) -> Dispute:
    """A buyer's trader or admin disputes the metering of a contract before its grace period ends. Its
    escrow stops moving until an operator resolves it. Locks the delivery row."""
    now = now or timezone.now()
    buyer_orgs = organisation_ids_for_user(user, (MemberRole.ADMIN, MemberRole.TRADER))
    contract = Contract.objects.select_related("instrument", "trade").filter(pk=contract_id, buyer_id__in=buyer_orgs).first()
    if contract is None:
        raise MeteringError("No such contract among your organisation's purchases.", field="contract", status_code=404)
    reason = (reason or "").strip()
    if not reason:
        raise MeteringError("Say what is wrong with the metering.", field="reason")
    d = _delivery_locked(contract)
    if d.status == DeliveryStatus.DISPUTED:
        raise MeteringError("The contract is already disputed.", field="contract", status_code=409)
    if d.status == DeliveryStatus.SETTLED or now > settle_due_at(contract):
        raise MeteringError("The grace period for disputes is over.", field="contract")
    dispute = Dispute.objects.create(contract=contract, reason=reason[:4000], opened_by=user, delivered_before_micro=d.delivered_micro)
    d.status = DeliveryStatus.DISPUTED
    d.save(update_fields=["status", "updated_at"])
    contracts_status_sync([d])
    return dispute


@transaction.atomic
def dispute_resolve(*, dispute_id: int, user: User, delivered_units: Decimal, resolution: str, now: dt.datetime | None = None) -> Dispute:
    """An operator sets the contract's delivered quantity; one adjustment entry moves escrow to the
    supplier (more delivered) or back from the supplier and fees (less), then the delivery resumes, or
    settles if its grace period is over. Locks the delivery row, then the dispute."""
    now = now or timezone.now()
    if not user.is_operator:
        raise MeteringError("Only an operator resolves disputes.", status_code=403)
    contract_id = Dispute.objects.filter(pk=dispute_id).values_list("contract_id", flat=True).first()
    if contract_id is None:
        raise MeteringError("No such dispute.", field="dispute", status_code=404)
    contract = _contract(contract_id)
    d = _delivery_locked(contract)
    dispute = Dispute.objects.select_for_update().get(pk=dispute_id)
    if dispute.status != DisputeStatus.OPEN:
        raise MeteringError("The dispute is already resolved.", field="dispute", status_code=409)
    micro = delivered_units * MICRO
    if micro != micro.to_integral_value() or micro < 0 or micro > d.quantity_micro:
        raise MeteringError(f"From 0 to {_units(d.quantity_micro)} units, at most six decimals.", field="delivered_units")
    delivered = int(micro)
    released = released_for(value_fen=d.value_fen, quantity_micro=d.quantity_micro, delivered_micro=delivered)
    fee = fee_for(seller_fee_fen=d.seller_fee_fen, value_fen=d.value_fen, released_fen=released)
    parties = parties_for({(contract.buyer_id, contract.seller_id)})[(contract.buyer_id, contract.seller_id)]
    request = movement_request(
        contract_id=d.pk, parties=parties, released_from=d.released_fen, released_to=released, fee_from=d.fee_fen, fee_to=fee,
        key=f"dispute:{dispute.pk}:adjust", memo=f"dispute {dispute.pk} on contract {d.pk}: delivered set to {_units(delivered)} units",
        created_by_id=user.pk,
    )
    entry = None
    if request is not None:
        extra = funding.requests_for([funding.EscrowMove(
            d.pk, d.value_fen, d.released_fen, released, 0, parties.buyer_escrow, parties.buyer_available, request.idempotency_key,
        )])
        entry = ledger.entries_post([request, *extra])[0]
    d.delivered_micro, d.released_fen, d.fee_fen = delivered, released, fee
    d.status = DeliveryStatus.DELIVERING
    d.save()
    contracts_status_sync([d])
    dispute.status = DisputeStatus.RESOLVED
    dispute.delivered_after_micro = delivered
    dispute.resolution = (resolution or "").strip()[:4000]
    dispute.resolved_by = user
    dispute.resolved_at = now
    dispute.entry = entry
    dispute.save()
    if now >= settle_due_at(contract):
        delivery_settle(contract_id=d.pk, now=now)
        supplier_reputation_update(organisation_id=contract.seller_id, now=now)
    return dispute
