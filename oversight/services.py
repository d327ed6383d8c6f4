"""Oversight writes: the regulator's alert reviews, and suppliers' data-deletion attestations."""

from __future__ import annotations

from django.db import IntegrityError, transaction
from django.utils import timezone

from common.errors import ServiceError
from exchange.models import Contract
from marketplace.models import MemberRole, User
from marketplace.selectors import organisation_ids_for_user
from oversight.models import Alert, AlertReview, AlertStatus, DeletionAttestation

# open -> under_review -> closed; a closed alert may be reopened for review when new evidence arrives.
TRANSITIONS = {
    AlertStatus.OPEN: (AlertStatus.UNDER_REVIEW, AlertStatus.CLOSED),
    AlertStatus.UNDER_REVIEW: (AlertStatus.CLOSED,),
    AlertStatus.CLOSED: (AlertStatus.UNDER_REVIEW,),
}


@transaction.atomic
def alert_review(*, alert_id: int, actor: User, to_status: str, note: str = "") -> AlertReview:
    """Move an alert one step (locks the alert row). Closing needs a note. Each step is an AlertReview
    row, which the audit job appends to the chain."""
    if not actor.is_regulator:
        raise ServiceError("Only regulators review alerts.", status_code=403)
    alert = Alert.objects.select_for_update().filter(pk=alert_id).first()
    if alert is None:
        raise ServiceError("No such alert.", field="alert", status_code=404)
    if to_status not in TRANSITIONS.get(alert.status, ()):
        allowed = ", ".join(TRANSITIONS.get(alert.status, ())) or "nothing"
        raise ServiceError(f"An alert that is {alert.status} can move to {allowed}.", field="status", status_code=409)
    if to_status == AlertStatus.CLOSED and not note.strip():
        raise ServiceError("Say why the alert is closed.", field="note")
    review = AlertReview.objects.create(alert=alert, actor=actor, from_status=alert.status, to_status=to_status, note=note.strip())
    alert.status = to_status
    alert.save(update_fields=["status", "updated_at"])
    return review


ATTESTING_ROLES = (MemberRole.ADMIN, MemberRole.TRADER)


@transaction.atomic
def attestation_create(*, contract_id: int, actor: User, method: str, note: str = "") -> DeletionAttestation:
    """The supplier of an ended contract attests that the buyer's data was deleted or returned. Other
    organisations' contracts are 404; a second attestation is 409."""
    contract = Contract.objects.select_related("instrument").filter(
        pk=contract_id, seller_id__in=organisation_ids_for_user(actor, ATTESTING_ROLES)).first()
    if contract is None:
        raise ServiceError("No such contract among your organisations' sales.", field="contract", status_code=404)
    if contract.instrument.delivery_end > timezone.now():
        raise ServiceError("The contract has not ended: attest after its delivery window.", field="contract")
    try:
        with transaction.atomic():
            return DeletionAttestation.objects.create(contract=contract, supplier_id=contract.seller_id, method=method,
                                                      note=note, attested_by=actor)
    except IntegrityError:
        raise ServiceError("This contract's data lifecycle is already attested.", field="contract", status_code=409) from None
