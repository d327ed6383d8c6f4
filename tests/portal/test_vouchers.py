"""The voucher desk: an SME admin applies, the authority approves or rejects, the SME sees its voucher."""

import datetime as dt

import pytest
from django.test import Client
from django.utils import timezone

from tests.factories import UserFactory
from vouchers import services
from vouchers.models import Application, Voucher


@pytest.fixture
def programme(world):
    authority = UserFactory(username="authority", platform_role="authority")
    now = timezone.now()
    p = services.programme_create(user=authority, code="sh-2026", name="Shanghai compute vouchers", valid_from=now - dt.timedelta(days=1),
                                  valid_until=now + dt.timedelta(days=300), rate_bps=3000, org_cap_per_year_fen=50_000_000)
    services.programme_fund(user=authority, programme=p, amount_fen=100_000_000, idempotency_key="initial")
    world["authority"] = authority
    return p


def login(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_sme_applies_and_the_authority_approves(world, programme):
    buyer = world["buyer"]
    admin = world["multi"]  # admin of the buyer
    client = login(admin)
    client.post("/organisation/", {"organisation": buyer.pk})
    # A wrong credit code is refused next to its field; nothing is written.
    bad = client.post("/vouchers/", {"programme": programme.pk, "credit_code": "91310000MA1XXXXXXX", "size_class": buyer.size_class,
                                     "requested": "5000", "idempotency_key": "a0"})
    assert bad.status_code == 400 and 'id="v-code-err"' in bad.content.decode()
    assert not Application.objects.exists()
    ok = client.post("/vouchers/", {"programme": programme.pk, "credit_code": buyer.credit_code, "size_class": buyer.size_class,
                                    "industry": "biotech", "requested": "5000.00", "idempotency_key": "a1"})
    assert ok.status_code == 302
    application = Application.objects.get()
    assert (application.requested_fen, application.status, application.organisation) == (500_000, "pending", buyer)
    # A trader may read the desk but not apply; another organisation sees none of it.
    assert "Only an organisation" in login(world["buyer_user"]).get("/vouchers/").content.decode()
    assert "sh-2026</td>" not in login(world["other_user"]).get("/vouchers/").content.decode()

    # Members may not review; the regulator reads without deciding; the authority decides.
    assert login(world["buyer_user"]).get("/vouchers/review/").status_code == 403
    reg_page = login(world["regulator"]).get("/vouchers/review/").content.decode()
    assert "Moyuan AI" in reg_page and 'value="approve"' not in reg_page
    assert login(world["regulator"]).post("/vouchers/review/", {"application": application.pk, "decision": "approve"}).status_code == 403
    authority = login(world["authority"])
    assert 'value="approve"' in authority.get("/vouchers/review/").content.decode()
    response = authority.post("/vouchers/review/", {"application": application.pk, "decision": "approve", "amount": "4000"})
    assert response.status_code == 302
    voucher = Voucher.objects.get()
    assert (voucher.amount_fen, voucher.organisation) == (400_000, buyer)
    again = authority.post("/vouchers/review/", {"application": application.pk, "decision": "reject", "reason": "late"})
    assert again.status_code == 400 and "already approved" in again.content.decode()
    assert Voucher.objects.count() == 1
    desk = client.get("/vouchers/").content.decode()
    assert "¥4000.00" in desk and "sh-2026" in desk  # the voucher's balance
    assert "¥4000.00" in authority.get("/vouchers/review/").content.decode()  # issued, in the utilisation


def test_rejection_needs_a_reason(world, programme):
    buyer = world["buyer"]
    client = login(world["multi"])
    client.post("/organisation/", {"organisation": buyer.pk})
    client.post("/vouchers/", {"programme": programme.pk, "credit_code": buyer.credit_code, "size_class": buyer.size_class,
                               "requested": "100", "idempotency_key": "a1"})
    application = Application.objects.get()
    authority = login(world["authority"])
    no_reason = authority.post("/vouchers/review/", {"application": application.pk, "decision": "reject", "reason": " "})
    assert no_reason.status_code == 400 and "Give the applicant a reason." in no_reason.content.decode()
    authority.post("/vouchers/review/", {"application": application.pk, "decision": "reject", "reason": "Not an SME"})
    application.refresh_from_db()
    assert (application.status, application.reason) == ("rejected", "Not an SME")
    assert "Not an SME" in client.get("/vouchers/").content.decode()
