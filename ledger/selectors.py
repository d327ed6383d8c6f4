"""Ledger reads."""

from __future__ import annotations

from django.db.models import QuerySet, Sum

from ledger.models import ORGANISATION_KINDS, Account, Posting
from marketplace.models import Organisation, User
from marketplace.selectors import organisation_ids_for_user


def can_see_all(user: User) -> bool:
    return user.is_authenticated and (user.is_regulator or user.is_operator)


def account_list_for_user(user: User) -> QuerySet[Account]:
    """An organisation's members see its accounts; regulators and operators see every account."""
    qs = Account.objects.select_related("organisation")
    if can_see_all(user):
        return qs
    return qs.filter(organisation_id__in=organisation_ids_for_user(user))


def balances_get(*, organisation: Organisation) -> dict[str, int]:
    """The organisation's balance per account kind, in fen (0 for an account not yet opened)."""
    rows = dict(Account.objects.filter(organisation=organisation).values_list("kind", "balance_fen"))
    return {kind.value: rows.get(kind.value, 0) for kind in ORGANISATION_KINDS}


def posting_list_for_accounts(accounts: QuerySet[Account]) -> QuerySet[Posting]:
    return Posting.objects.filter(account__in=accounts).select_related("entry", "account__organisation").order_by("-id")


def postings_by_account_sum() -> dict[int, int]:
    return dict(Posting.objects.values("account_id").annotate(total=Sum("amount_fen")).values_list("account_id", "total"))
