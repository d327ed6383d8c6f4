"""Property: for any rate, caps, voucher size, deliveries (in any batches, with the commit before or in the
middle of them), an operator's dispute adjustment up or down, and the refund at settlement, the subsidy paid is rate x delivered value within the caps, the
rest of the commitment returns to the voucher, the supplier gets the full released value, and the ledger
balances."""

import datetime as dt
from decimal import Decimal

import pytest
from django.db import transaction
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger.verify import ledger_verify
from metering import services as metering
from metering.models import ContractDelivery
from tests.factories import UserFactory
from tests.vouchers.conftest import balance, event, org_balances, programme, voucher_for
from vouchers import services
from vouchers.models import Redemption

VALUE = 15_000  # the deal's contract


@pytest.mark.django_db
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(
    rate=st.integers(1, 10_000), contract_cap=st.none() | st.integers(1, 20_000), org_cap=st.integers(1, 20_000),
    amount=st.integers(1, 20_000), cut=st.integers(0, 30), disputed=st.none() | st.integers(0, 10_000_000),
    events=st.lists(st.tuples(st.integers(1, 10), st.integers(1, 180), st.integers(0, 1200)), max_size=25),
)
def test_subsidy_is_rate_times_delivered_value_within_caps(deal, authority, rate, contract_cap, org_cap, amount, cut, events, disputed):
    contract, buyer, supplier = deal["contract"], deal["buyer"], deal["supplier"]
    with transaction.atomic():
        operator = UserFactory(username="op", platform_role="operator")
        prog = programme(authority, rate_bps=rate, contract_cap_fen=contract_cap, org_cap_per_year_fen=org_cap)
        v = voucher_for(authority, buyer, prog, amount_fen=amount)
        b0, s0 = org_balances(buyer), org_balances(supplier)
        bodies = [event(deal, i, devices=n, hours=m / 60, offset_minutes=o) for i, (n, m, o) in enumerate(events)]
        cut = min(cut, len(bodies))
        metering.usage_batch_ingest(supplier_ids={supplier.pk}, events=bodies[:cut], now=deal["now"])
        r = services.redemption_commit(contract_id=contract.pk)
        share = min(VALUE * rate // 10_000, org_cap, amount, *([contract_cap] if contract_cap else []))
        assert (r.status, r.committed_fen) == ("committed", share)
        metering.usage_batch_ingest(supplier_ids={supplier.pk}, events=bodies[cut:], now=deal["now"])
        d = ContractDelivery.objects.get(pk=contract.pk)
        r.refresh_from_db()
        assert r.paid_fen == share * d.released_fen // VALUE
        if disputed is not None:  # an operator sets the delivered quantity, up or down
            dispute = metering.dispute_open(contract_id=contract.pk, user=deal["buyer_user"], reason="metering disputed")
            metering.dispute_resolve(dispute_id=dispute.pk, user=operator, delivered_units=Decimal(disputed) / 1_000_000, resolution="set")
            r.refresh_from_db()
            d.refresh_from_db()
            assert d.delivered_micro == disputed and r.paid_fen == share * d.released_fen // VALUE
        metering.deliveries_settle_due(now=deal["window_start"] + dt.timedelta(days=1) + metering.grace_period())
        d.refresh_from_db()
        r = Redemption.objects.get(pk=r.pk)
        assert d.status == "settled" and d.released_fen + d.refunded_fen == VALUE
        assert r.status == "settled"
        assert r.paid_fen == share * d.released_fen // VALUE  # rate x delivered value, within the caps
        assert r.paid_fen + r.released_fen == share
        assert balance(v.account) == amount - r.paid_fen and balance(v.committed_account) == 0
        b, s = org_balances(buyer), org_balances(supplier)
        assert b["escrow"] == b0["escrow"] - VALUE
        assert VALUE - (b["available"] - b0["available"]) == d.released_fen - r.paid_fen  # the buyer pays only its part
        assert s["available"] - s0["available"] == d.released_fen - d.fee_fen  # the supplier gets the full price
        assert ledger_verify().ok
        transaction.set_rollback(True)
