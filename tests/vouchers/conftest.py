import datetime as dt

import pytest
from django.utils import timezone

from ledger import services as ledger
from ledger.models import Account, AccountKind
from tests.factories import UserFactory, member
from tests.metering.conftest import deal, event, post_events, trade  # noqa: F401  (fixtures and helpers reused)
from vouchers import services

DAY = dt.timedelta(days=1)


@pytest.fixture
def authority(db):
    return UserFactory(username="sh-data-bureau", platform_role="authority")


def programme(authority, code="p20", budget_fen=10_000_000, now=None, **rules):
    """A programme open from 30 days ago to a year ahead, funded with `budget_fen`."""
    now = now or timezone.now()
    values = {"rate_bps": 2000, "org_cap_per_year_fen": 200_000_000, "eligible_size_classes": ["micro", "small", "medium"]}
    values.update(rules)
    p = services.programme_create(user=authority, code=code, name=f"Programme {code}", valid_from=now - 30 * DAY,
                                  valid_until=now + 365 * DAY, **values)
    if budget_fen:
        services.programme_fund(user=authority, programme=p, amount_fen=budget_fen, idempotency_key="initial")
    return p


def voucher_for(authority, org, prog, amount_fen=1_000_000, *, admin=None, issued_at=None):
    """Apply as the organisation's admin and approve; issued (by default) a day ago so today's contracts count."""
    admin = admin or member(org, role="admin", username=f"{org.pk}-admin-{prog.code}")
    app, _ = services.application_submit(user=admin, programme=prog, organisation=org, credit_code=org.credit_code,
                                         declared_size_class=org.size_class, requested_fen=amount_fen,
                                         idempotency_key=f"apply-{prog.code}", now=issued_at or timezone.now() - DAY)
    return services.application_approve(user=authority, application_id=app.pk, now=issued_at or timezone.now() - DAY)


def more_contract(the_deal, api, lots: int = 10, tag: str = "2"):
    """Another contract between the deal's parties on the deal's instrument. The deal moved the instrument's
    window to around now (closed for trading), so it is reopened for the trade and then put back."""
    from exchange import selectors as exchange_selectors
    from marketplace.models import Instrument

    inst = Instrument.objects.get(pk=the_deal["instrument"].pk)
    saved = {f: getattr(inst, f) for f in ("status", "gate_closure", "delivery_start", "delivery_end")}
    now = timezone.now()
    Instrument.objects.filter(pk=inst.pk).update(status="open", gate_closure=now + dt.timedelta(hours=1),
                                                 delivery_start=now + dt.timedelta(hours=2), delivery_end=now + dt.timedelta(hours=26))
    exchange_selectors.caches_clear()
    try:
        return trade(api, the_deal["seller_user"], the_deal["buyer_user"], inst, lots, tag=tag)
    finally:
        Instrument.objects.filter(pk=inst.pk).update(**saved)
        exchange_selectors.caches_clear()


def balance(account) -> int:
    return Account.objects.get(pk=account.pk if hasattr(account, "pk") else account).balance_fen


def org_balances(org) -> dict[str, int]:
    return {k: ledger.account_for(organisation=org, kind=k).balance_fen for k in (AccountKind.AVAILABLE, AccountKind.ESCROW)}
