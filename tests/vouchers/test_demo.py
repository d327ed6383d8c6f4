"""The demo step: programmes, declarations and applications in each state, once."""

import pytest

from common.demo import SeedContext
from ledger.verify import ledger_verify
from marketplace.demo import seed_catalogue
from vouchers.demo import seed_vouchers
from vouchers.models import Application, Programme, Voucher

pytestmark = pytest.mark.django_db


def test_demo_programmes_and_applications_once():
    seed_catalogue(SeedContext(password=None))
    seed_vouchers(SeedContext(password=None))
    assert sorted(Programme.objects.values_list("code", "rate_bps", "domestic_rate_bps", "startup_rate_bps")) == [
        ("bj-style-20", 2000, None, None), ("hz-style-domestic", 2000, 3000, None), ("sz-style-startup", 2000, None, 5000)]
    assert sorted(Application.objects.values_list("status", flat=True)) == ["approved"] * 4 + ["pending", "rejected"]
    assert sorted(Voucher.objects.values_list("amount_fen", flat=True)) == [100_000_000, 200_000_000, 300_000_000, 500_000_000]
    bj = Programme.objects.get(code="bj-style-20")
    assert bj.budget_account.balance_fen == 5_000_000_000 - 300_000_000
    again = SeedContext(password=None)
    seed_vouchers(again)
    assert again.created == 0 and Voucher.objects.count() == 4
    assert ledger_verify().ok
