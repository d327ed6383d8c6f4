"""Properties: for any interleaving of events, delivered + refunded value equals the contract value, each
release pays the supplier a non-negative amount, and the ledger balances."""

import datetime as dt

import pytest
from django.db import transaction
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger.selectors import balances_get
from ledger.services import platform_account
from ledger.verify import ledger_verify
from metering import services
from metering.models import ContractDelivery, UsageEvent
from metering.services.money import fee_for, released_for
from tests.metering.conftest import event


@given(
    value=st.integers(1, 10**12), fee_share=st.integers(0, 1000), quantity=st.integers(1, 10**10),
    steps=st.lists(st.integers(0, 10**10), max_size=30),
)
def test_release_and_fee_grow_together_and_end_exact(value, fee_share, quantity, steps):
    fee_total = value * fee_share // 10_000  # fees are at most 10% of value (bps <= 1000)
    delivered, released, fee = 0, 0, 0
    for step in [*sorted(steps), quantity]:
        delivered = max(delivered, min(step, quantity))
        new_released = released_for(value_fen=value, quantity_micro=quantity, delivered_micro=delivered)
        new_fee = fee_for(seller_fee_fen=fee_total, value_fen=value, released_fen=new_released)
        assert new_released >= released and new_fee >= fee
        assert new_released - released >= new_fee - fee  # the supplier's share of a release is never negative
        released, fee = new_released, new_fee
    assert (released, fee) == (value, fee_total)


events_strategy = st.lists(
    st.tuples(st.integers(0, 40), st.integers(1, 10), st.integers(1, 180), st.integers(0, 600)),  # id, devices, minutes, offset
    min_size=0, max_size=40,
)


@pytest.mark.django_db
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(
    events=events_strategy, batch_cuts=st.lists(st.integers(0, 40), max_size=6), value=st.integers(1, 15_000),
    fee_share=st.integers(0, 1000), quantity_micro=st.integers(1, 20_000_000), shuffle=st.randoms(use_true_random=False),
)
def test_any_interleaving_settles_to_the_contract_value(deal, events, batch_cuts, value, fee_share, quantity_micro, shuffle):
    contract = deal["contract"]
    supplier_ids = {deal["supplier"].pk}
    end = deal["window_start"] + dt.timedelta(days=1)
    fees_account = platform_account(kind="fees")
    with transaction.atomic():
        # Vary the delivery's money and quantity (the escrow holds 15000 fen, so any value up to it is covered).
        seller_fee = value * fee_share // 10_000
        ContractDelivery.objects.create(contract=contract, quantity_micro=quantity_micro, value_fen=value, seller_fee_fen=seller_fee)
        buyer0, supplier0 = balances_get(organisation=deal["buyer"]), balances_get(organisation=deal["supplier"])
        fees0 = type(fees_account).objects.get(pk=fees_account.pk).balance_fen
        bodies = [event(deal, eid, devices=n, hours=minutes / 60, offset_minutes=offset) for eid, n, minutes, offset in events]
        # Resend some events, in another order, in batches cut anywhere: duplicates and reordering.
        stream = bodies + [b for i, b in enumerate(bodies) if i % 3 == 0]
        shuffle.shuffle(stream)
        cuts = sorted({0, len(stream), *(c % (len(stream) + 1) for c in batch_cuts)})
        for a, b in zip(cuts, cuts[1:], strict=False):
            services.usage_batch_ingest(supplier_ids=supplier_ids, events=stream[a:b], now=deal["now"])
        d = ContractDelivery.objects.get(pk=contract.pk)
        stored = UsageEvent.objects.filter(contract=contract)
        assert d.delivered_micro == sum(stored.values_list("credited_micro", flat=True)) <= quantity_micro
        assert d.delivered_micro == min(quantity_micro, sum(stored.values_list("units_micro", flat=True)))
        assert stored.count() == len({e.event_id for e in stored})
        assert d.released_fen == released_for(value_fen=value, quantity_micro=quantity_micro, delivered_micro=d.delivered_micro)
        services.deliveries_settle_due(now=end + services.grace_period())
        d.refresh_from_db()
        assert d.status == "settled"
        assert d.released_fen + d.refunded_fen == value
        buyer, supplier = balances_get(organisation=deal["buyer"]), balances_get(organisation=deal["supplier"])
        assert buyer0["escrow"] - buyer["escrow"] == value
        assert buyer["available"] - buyer0["available"] == d.refunded_fen
        assert supplier["available"] - supplier0["available"] == d.released_fen - d.fee_fen
        assert type(fees_account).objects.get(pk=fees_account.pk).balance_fen - fees0 == d.fee_fen
        assert ledger_verify().ok
        transaction.set_rollback(True)
