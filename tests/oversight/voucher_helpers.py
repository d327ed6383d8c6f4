"""A voucher programme and an approved voucher, made through the vouchers services."""

import datetime as dt

from django.utils import timezone

from tests.factories import UserFactory
from vouchers import services as vouchers


def authority():
    return UserFactory(username="authority", platform_role="authority")


def open_programme(by):
    now = timezone.now()
    programme = vouchers.programme_create(user=by, code="p20", name="Programme", valid_from=now - dt.timedelta(days=30),
                                          valid_until=now + dt.timedelta(days=365), rate_bps=2000, org_cap_per_year_fen=200_000_000,
                                          eligible_size_classes=["micro", "small", "medium"])
    vouchers.programme_fund(user=by, programme=programme, amount_fen=10_000_000, idempotency_key="fund")
    return programme


def apply(programme, buyer, admin, key="apply"):
    application, _ = vouchers.application_submit(user=admin, programme=programme, organisation=buyer, credit_code=buyer.credit_code,
                                                 declared_size_class=buyer.size_class, requested_fen=1_000_000, idempotency_key=key,
                                                 now=timezone.now() - dt.timedelta(days=1))
    return application


def approved_voucher(buyer, admin):
    """A funded programme and an approved voucher for the buyer, issued a day ago."""
    by = authority()
    application = apply(open_programme(by), buyer, admin)
    return vouchers.application_approve(user=by, application_id=application.pk, now=timezone.now() - dt.timedelta(days=1))
