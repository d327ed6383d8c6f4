"""Payment reads: members see their organisations' top-ups and payouts; regulators and operators see all."""

from __future__ import annotations

from django.db.models import QuerySet

from ledger.models import Payout, TopUp
from ledger.selectors import can_see_all
from marketplace.models import User
from marketplace.selectors import organisation_ids_for_user


def top_up_list_for_user(user: User) -> QuerySet[TopUp]:
    qs = TopUp.objects.select_related("organisation")
    if can_see_all(user):
        return qs
    return qs.filter(organisation_id__in=organisation_ids_for_user(user))


def payout_list_for_user(user: User) -> QuerySet[Payout]:
    qs = Payout.objects.select_related("organisation")
    if can_see_all(user):
        return qs
    return qs.filter(organisation_id__in=organisation_ids_for_user(user))
