"""A voucher inside settlement: commit at the contract, pay with delivery, release at refund."""

import datetime as dt

import pytest

from ledger.verify import ledger_verify
from metering import services as metering
from metering.models import ContractDelivery
from tests.vouchers.conftest import balance, event, org_balances, post_events, programme, voucher_for
from vouchers import services
from vouchers.models import Redemption


def settle(deal):
    end = deal["window_start"] + dt.timedelta(days=1)
    return metering.delivery_settle(contract_id=deal["contract"].pk, now=end + metering.grace_period())


def test_partial_delivery_pays_the_share_and_returns_the_rest(deal, authority, api):
    contract, buyer, supplier = deal["contract"], deal["buyer"], deal["supplier"]
    prog = programme(authority)
    v = voucher_for(authority, buyer, prog, amount_fen=100_000)
    before_b, before_s = org_balances(buyer), org_balances(supplier)

    r = services.redemption_commit(contract_id=contract.pk)

    assert (r.status, r.rate_bps, r.committed_fen) == ("committed", 2000, 3000)  # 20% of 15000 fen
    assert balance(v.account) == 97_000 and balance(v.committed_account) == 3000
    after = org_balances(buyer)
    assert after["escrow"] == before_b["escrow"] - 3000 and after["available"] == before_b["available"] + 3000

    # Half a contract delivered: 5 x 1 H100-hour = 4.945 of 10 units.
    r1 = post_events(api, deal["seller_user"], [event(deal, i, offset_minutes=60 * i) for i in range(5)])
    assert r1.status_code == 200 and r1.json()["accepted"] == 5
    d = ContractDelivery.objects.get(pk=contract.pk)
    assert d.released_fen == 15000 * 4_945_000 // 10_000_000 == 7417
    r.refresh_from_db()
    assert r.paid_fen == 3000 * 7417 // 15000 == 1483
    assert balance(v.committed_account) == 3000 - 1483

    settle(deal)
    r.refresh_from_db()
    d.refresh_from_db()
    assert (r.status, r.paid_fen, r.released_fen) == ("settled", 1483, 1517)
    assert balance(v.committed_account) == 0 and balance(v.account) == 97_000 + 1517
    b = org_balances(buyer)
    # The buyer (15000 fen in escrow at the trade) paid the delivered value less the subsidy.
    assert 15000 - (b["available"] - before_b["available"]) == 7417 - 1483
    assert b["escrow"] == before_b["escrow"] - 15000
    # The supplier got the full released value (less its fee), whoever paid it.
    assert org_balances(supplier)["available"] - before_s["available"] == d.released_fen - d.fee_fen
    assert ledger_verify().ok



def test_full_delivery_pays_the_whole_commitment(deal, authority, api):
    buyer, supplier = deal["buyer"], deal["supplier"]
    v = voucher_for(authority, buyer, programme(authority), amount_fen=100_000)
    before_b, before_s = org_balances(buyer), org_balances(supplier)
    services.redemption_commit(contract_id=deal["contract"].pk)
    # 11 H100-hours = 10.879 units, capped at the contract's 10.
    assert post_events(api, deal["seller_user"], [event(deal, i, offset_minutes=60 * i) for i in range(11)]).status_code == 200
    d = settle(deal)
    r = Redemption.objects.get(contract=deal["contract"])
    assert (d.released_fen, d.refunded_fen) == (15000, 0)
    assert (r.status, r.paid_fen, r.released_fen) == ("settled", 3000, 0)
    assert balance(v.account) == 97_000 and balance(v.committed_account) == 0
    b = org_balances(buyer)
    assert 15000 - (b["available"] - before_b["available"]) == 12000  # 80% of the price
    assert org_balances(supplier)["available"] - before_s["available"] == 15000 - d.fee_fen  # the full price
    assert ledger_verify().ok


def test_commit_after_delivery_started_catches_up(deal, authority, api):
    v = voucher_for(authority, deal["buyer"], programme(authority), amount_fen=100_000)
    post_events(api, deal["seller_user"], [event(deal, i, offset_minutes=60 * i) for i in range(3)])
    released = ContractDelivery.objects.get(pk=deal["contract"].pk).released_fen
    assert released == 15000 * 2_967_000 // 10_000_000
    r = services.redemption_commit(contract_id=deal["contract"].pk)
    assert r.paid_fen == 3000 * released // 15000
    assert balance(v.committed_account) == 3000 - r.paid_fen
    post_events(api, deal["seller_user"], [event(deal, i, offset_minutes=60 * i) for i in range(3, 11)])
    settle(deal)
    r.refresh_from_db()
    assert (r.paid_fen, r.released_fen) == (3000, 0)
    assert ledger_verify().ok


def test_dispute_lowering_delivery_takes_the_share_back(deal, authority, api):
    from decimal import Decimal

    from tests.factories import UserFactory

    v = voucher_for(authority, deal["buyer"], programme(authority), amount_fen=100_000)
    services.redemption_commit(contract_id=deal["contract"].pk)
    post_events(api, deal["seller_user"], [event(deal, i, offset_minutes=60 * i) for i in range(6)])
    r = Redemption.objects.get(contract=deal["contract"])
    assert r.paid_fen == 3000 * (15000 * 5_934_000 // 10_000_000) // 15000
    dispute = metering.dispute_open(contract_id=deal["contract"].pk, user=deal["buyer_user"], reason="two hours were idle")
    operator = UserFactory(username="op", platform_role="operator")
    metering.dispute_resolve(dispute_id=dispute.pk, user=operator, delivered_units=Decimal("4"), resolution="agreed")
    r.refresh_from_db()
    assert r.paid_fen == 3000 * 6000 // 15000 == 1200
    assert balance(v.committed_account) == 1800
    settle(deal)
    r.refresh_from_db()
    assert (r.status, r.paid_fen, r.released_fen) == ("settled", 1200, 1800)
    assert balance(v.account) == 97_000 + 1800
    assert ledger_verify().ok


def test_buyers_without_vouchers_settle_as_before(deal, api):
    assert services.redemptions_commit_new() == {"committed": 0, "blocked": 0}
    post_events(api, deal["seller_user"], [event(deal, 1)])
    d = settle(deal)
    assert d.released_fen + d.refunded_fen == 15000
    assert not Redemption.objects.exists()



@pytest.mark.parametrize("kwh, flags", [
    ("0.2", ["energy_mismatch: metered 0.200 kWh against 0.700 kWh at rated power"]),
    ("0.7", []),
    ("1.2", ["energy_mismatch: metered 1.200 kWh against 0.700 kWh at rated power"]),
])
def test_energy_that_does_not_match_the_compute_is_flagged(deal, authority, api, kwh, flags):
    voucher_for(authority, deal["buyer"], programme(authority))
    services.redemption_commit(contract_id=deal["contract"].pk)
    # One H100 for an hour draws 0.7 kWh at rated power.
    post_events(api, deal["seller_user"], [event(deal, 1, energy_kwh=kwh)])
    settle(deal)
    r = Redemption.objects.get(contract=deal["contract"])
    assert r.flags == flags and r.status == "settled"  # flagged for the auditor, still paid
    assert r.paid_fen == 3000 * r.contract.delivery.released_fen // 15000
