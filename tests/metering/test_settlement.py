"""Window-end settlement, refunds, delivery ratio and reputation; disputes."""

import datetime as dt
from decimal import Decimal

import pytest

from exchange.models import Contract
from ledger.selectors import balances_get
from ledger.verify import ledger_verify
from marketplace.models import Organisation
from metering import services
from metering.models import ContractDelivery
from metering.tasks import deliveries_settle_due
from tests.factories import UserFactory
from tests.metering.conftest import event, post_events

pytestmark = pytest.mark.django_db


def _end(deal):
    return deal["window_start"] + dt.timedelta(days=1)


def test_settlement_refunds_the_undelivered_value_and_records_the_ratio(api, deal, settings):
    settings.METERING_GRACE_SECONDS = 3600
    contract = deal["contract"]
    assert Contract.objects.get(pk=contract.pk).status == "open"
    # 4 H100-hours = 3.956 units of 10 delivered: released 15000 * 3.956 / 10 = 5934, fee 8 * 5934 // 15000 = 3
    post_events(api, deal["seller_user"], [event(deal, i, offset_minutes=60 * i) for i in range(4)])
    assert Contract.objects.get(pk=contract.pk).status == "delivering"  # the contract tapes show metering's state
    with pytest.raises(services.MeteringError):
        services.delivery_settle(contract_id=deal["contract"].pk, now=_end(deal))  # grace not over
    assert services.deliveries_settle_due(now=_end(deal) + dt.timedelta(minutes=59)) == {"settled": 0, "suppliers": 0}
    assert services.deliveries_settle_due(now=_end(deal) + dt.timedelta(hours=1)) == {"settled": 1, "suppliers": 1}
    d = ContractDelivery.objects.get(pk=deal["contract"].pk)
    assert (d.status, d.released_fen, d.fee_fen, d.refunded_fen, d.delivery_ratio) == ("settled", 5934, 3, 9066, Decimal("0.3956"))
    assert Contract.objects.get(pk=contract.pk).status == "settled"
    assert d.released_fen + d.refunded_fen == deal["contract"].value_fen
    assert balances_get(organisation=deal["buyer"])["escrow"] == 0
    assert balances_get(organisation=deal["supplier"])["available"] == 5931
    supplier = Organisation.objects.get(pk=deal["supplier"].pk)
    assert (supplier.delivery_ratio, supplier.delivery_contracts) == (Decimal("0.3956"), 1)
    # Idempotent: a second run settles nothing and moves nothing.
    assert services.deliveries_settle_due(now=_end(deal) + dt.timedelta(hours=2))["settled"] == 0
    assert services.delivery_settle(contract_id=deal["contract"].pk, now=_end(deal) + dt.timedelta(hours=2)).refunded_fen == 9066
    assert ledger_verify().ok


def test_a_contract_with_no_usage_is_refunded_in_full(deal, settings):
    settings.METERING_GRACE_SECONDS = 0
    services.deliveries_settle_due(now=_end(deal))
    d = ContractDelivery.objects.get(pk=deal["contract"].pk)
    assert (d.status, d.released_fen, d.refunded_fen, d.delivery_ratio) == ("settled", 0, 15000, Decimal("0"))
    assert balances_get(organisation=deal["buyer"])["escrow"] == 0
    assert Organisation.objects.get(pk=deal["supplier"].pk).delivery_ratio == Decimal("0")


def test_the_periodic_task_settles_due_contracts(deal, settings):
    settings.METERING_GRACE_SECONDS = 0
    from marketplace.models import Instrument

    Instrument.objects.filter(pk=deal["instrument"].pk).update(delivery_end=deal["now"] - dt.timedelta(minutes=1))
    assert deliveries_settle_due.apply().get() == {"settled": 1, "suppliers": 1}


def test_full_delivery_pays_the_supplier_value_minus_seller_fee(api, deal, settings):
    settings.METERING_GRACE_SECONDS = 0
    post_events(api, deal["seller_user"], [event(deal, "all", devices=10, hours=2)])
    services.deliveries_settle_due(now=_end(deal))
    d = ContractDelivery.objects.get(pk=deal["contract"].pk)
    assert (d.released_fen, d.fee_fen, d.refunded_fen, d.delivery_ratio) == (15000, 8, 0, Decimal("1"))
    assert balances_get(organisation=deal["supplier"])["available"] == 15000 - deal["contract"].trade.seller_fee_fen == 14992


def test_dispute_freezes_escrow_and_the_operator_adjusts_it(api, deal, settings):
    settings.METERING_GRACE_SECONDS = 3600
    post_events(api, deal["seller_user"], [event(deal, 1, devices=5)])  # 4.945 units: released 7417
    api.force_authenticate(deal["buyer_user"])
    r = api.post(f"/api/v1/metering/contracts/{deal['contract'].pk}/dispute/", {"reason": "Our jobs saw only 3 GPUs."}, format="json")
    assert r.status_code == 201, r.json()
    dispute_id = r.json()["id"]
    assert api.post(f"/api/v1/metering/contracts/{deal['contract'].pk}/dispute/", {"reason": "again"}, format="json").status_code == 409
    # Metering continues while disputed, but no money moves.
    post_events(api, deal["seller_user"], [event(deal, 2, offset_minutes=60)])
    d = ContractDelivery.objects.get(pk=deal["contract"].pk)
    assert (d.status, d.delivered_micro, d.released_fen) == ("disputed", 5_934_000, 7417)
    assert Contract.objects.get(pk=deal["contract"].pk).status == "disputed"
    # Settlement waits for the resolution.
    assert services.deliveries_settle_due(now=_end(deal) + dt.timedelta(hours=2))["settled"] == 0
    # Only operators resolve.
    api.force_authenticate(deal["buyer_user"])
    body = {"delivered_units": "3.000000", "resolution": "Logs show 3 GPU-hours of 5."}
    assert api.post(f"/api/v1/metering/disputes/{dispute_id}/resolve/", body, format="json").status_code == 403
    operator = UserFactory(username="op", platform_role="operator")
    api.force_authenticate(operator)
    assert api.post(f"/api/v1/metering/disputes/{dispute_id}/resolve/", {"delivered_units": "11", "resolution": "x"}, format="json").status_code == 400
    r = api.post(f"/api/v1/metering/disputes/{dispute_id}/resolve/", body, format="json")
    assert r.status_code == 200, r.json()
    assert (r.json()["status"], r.json()["delivered_before"], r.json()["delivered_after"]) == ("resolved", "4.945000", "3.000000")
    # The supplier gives back 7417 - 4500 = 2917 (fee 3 -> 2), and, the grace being over... not yet: delivering again.
    d = ContractDelivery.objects.get(pk=deal["contract"].pk)
    assert (d.status, d.delivered_micro, d.released_fen, d.fee_fen) == ("delivering", 3_000_000, 4500, 2)
    assert balances_get(organisation=deal["supplier"])["available"] == 4498
    assert api.post(f"/api/v1/metering/disputes/{dispute_id}/resolve/", body, format="json").status_code == 409
    # Both sides see the history: the dispute and every ledger movement of the contract.
    for user in (deal["buyer_user"], deal["seller_user"]):
        api.force_authenticate(user)
        detail = api.get(f"/api/v1/metering/contracts/{deal['contract'].pk}/").json()
        assert [x["status"] for x in detail["disputes"]] == ["resolved"]
        assert [h["kind"] for h in detail["history"]] == ["settlement", "settlement"]
        assert api.get("/api/v1/metering/disputes/").json()["count"] == 1
    services.deliveries_settle_due(now=_end(deal) + dt.timedelta(hours=2))
    d = ContractDelivery.objects.get(pk=deal["contract"].pk)
    assert (d.status, d.released_fen + d.refunded_fen) == ("settled", 15000)
    assert ledger_verify().ok


def test_disputes_only_by_the_buyer_within_grace(api, deal, settings):
    settings.METERING_GRACE_SECONDS = 3600
    url = f"/api/v1/metering/contracts/{deal['contract'].pk}/dispute/"
    api.force_authenticate(deal["seller_user"])
    assert api.post(url, {"reason": "x"}, format="json").status_code == 404
    api.force_authenticate(deal["buyer_user"])
    assert api.post(url, {"reason": ""}, format="json").status_code == 400
    assert api.post(url, {"reason": "x", "extra": 1}, format="json").json() == {"extra": ["Unknown field."]}
    with pytest.raises(services.MeteringError, match="grace period"):
        services.dispute_open(contract_id=deal["contract"].pk, user=deal["buyer_user"], reason="late", now=_end(deal) + dt.timedelta(hours=2))


def test_resolution_after_grace_settles_at_once(api, deal, settings):
    settings.METERING_GRACE_SECONDS = 3600
    post_events(api, deal["seller_user"], [event(deal, 1, devices=2)])
    dispute = services.dispute_open(contract_id=deal["contract"].pk, user=deal["buyer_user"], reason="short")
    operator = UserFactory(username="op", platform_role="operator")
    services.dispute_resolve(dispute_id=dispute.pk, user=operator, delivered_units=Decimal("2.5"), resolution="ok",
                             now=_end(deal) + dt.timedelta(hours=3))
    d = ContractDelivery.objects.get(pk=deal["contract"].pk)
    assert (d.status, d.released_fen, d.refunded_fen, d.delivery_ratio) == ("settled", 3750, 11250, Decimal("0.25"))
    assert ledger_verify().ok


def test_contract_list_shows_each_side_its_contracts(api, deal):
    post_events(api, deal["seller_user"], [event(deal, 1)])
    for user in (deal["buyer_user"], deal["seller_user"]):
        api.force_authenticate(user)
        rows = api.get("/api/v1/metering/contracts/").json()["results"]
        assert [(r["id"], r["delivery_status"], r["delivered_units"], r["released"]) for r in rows] == [
            (deal["contract"].pk, "delivering", "0.989000", "14.83")
        ]
    api.force_authenticate(UserFactory(username="nobody"))
    assert api.get("/api/v1/metering/contracts/").json()["count"] == 0
    assert api.get(f"/api/v1/metering/contracts/{deal['contract'].pk}/").status_code == 404
    api.force_authenticate(deal["buyer_user"])
    assert api.get("/api/v1/metering/contracts/?delivery_status=bogus").status_code == 400
    assert api.get("/api/v1/metering/contracts/?delivery_status=delivering&role=buyer").json()["count"] == 1
    assert api.get("/api/v1/metering/contracts/?role=seller").json()["count"] == 0
