"""Surveillance: each seeded pattern raises exactly one alert, a rescan raises none, honest traffic none."""

import datetime as dt

import pytest
from django.utils import timezone

from exchange.models import Order
from oversight.audit import audit_ingest, audit_verify
from oversight.models import Alert, AlertReview, AuditRecord, OwnershipGroup
from oversight.surveillance import surveillance_scan
from oversight.tasks import surveillance_scan as surveillance_task
from tests.oversight.metering_helpers import deliver, usage

pytestmark = pytest.mark.django_db


def honest(trader, m):
    """Unrelated counterparties near the reference; small orders cancelled quickly; a large order left
    resting for minutes before its cancel."""
    trader.trade(m["seller1"], m["buyer_user1"], "15.00", 3)
    trader.trade(m["seller2"], m["buyer_user2"], "15.10", 5)
    trader.trade(m["seller1"], m["buyer_user2"], "14.90", 2)
    for i in range(3):
        small = trader.place(m["buyer_user1"], "buy", "14.95", 2 + i)
        trader.cancel(m["buyer_user1"], small["id"])
    large = trader.place(m["buyer_user2"], "buy", "14.95", 60)
    Order.objects.filter(pk=large["id"]).update(created_at=timezone.now() - dt.timedelta(minutes=5))
    trader.cancel(m["buyer_user2"], large["id"])


def kinds():
    return sorted(Alert.objects.values_list("kind", flat=True))


def test_honest_traffic_raises_no_alert(market, trader):
    honest(trader, market)
    assert surveillance_scan() == {"wash_trade": 0, "spoofing": 0, "off_reference_price": 0, "delivery_ratio": 0, "usage_mismatch": 0, "voucher_farming": 0}
    assert not Alert.objects.exists()


def test_trades_between_organisations_with_one_beneficial_owner_are_one_wash_alert(market, trader):
    m = market
    honest(trader, m)
    OwnershipGroup.objects.create(organisation=m["supplier1"], group="HOLDCO-A")
    OwnershipGroup.objects.create(organisation=m["buyer1"], group="HOLDCO-A")
    OwnershipGroup.objects.create(organisation=m["buyer2"], group="HOLDCO-B")
    first = trader.trade(m["seller1"], m["buyer_user1"], "15.00", 4)
    trader.trade(m["seller1"], m["buyer_user1"], "15.00", 6)
    assert surveillance_scan()["wash_trade"] == 1
    assert surveillance_task.apply().get()["wash_trade"] == 0  # rescan: same occurrence, no new alert
    alert = Alert.objects.get()
    assert (alert.kind, alert.severity, alert.status, alert.instrument) == ("wash_trade", "high", "open", m["instrument"])
    ev = alert.evidence
    assert ev["beneficial_owner"] == "HOLDCO-A" and ev["quantity"] == 3 + 4 + 6  # the honest 3-lot trade was theirs too
    assert ev["organisations"] == sorted([m["supplier1"].pk, m["buyer1"].pk])
    assert first["fills"][0]["trade"] in ev["trades"] and len(ev["trades"]) == 3


def test_repeated_large_quick_cancels_near_the_touch_are_one_spoofing_alert(market, trader):
    m = market
    honest(trader, m)
    spoofs = []
    for price in ("14.99", "14.98", "14.97"):  # three levels within 1% of the last trade (14.90)
        order = trader.place(m["buyer_user1"], "buy", price, 80)
        trader.cancel(m["buyer_user1"], order["id"])
        spoofs.append(order["id"])
    # Not spoofing: large but far from the touch; large and near but only twice for buyer 2.
    far = trader.place(m["buyer_user2"], "buy", "13.60", 80)
    trader.cancel(m["buyer_user2"], far["id"])
    for _ in range(2):
        near = trader.place(m["buyer_user2"], "buy", "14.90", 80)
        trader.cancel(m["buyer_user2"], near["id"])
    assert surveillance_scan()["spoofing"] == 1
    assert surveillance_scan()["spoofing"] == 0
    alert = Alert.objects.get()
    assert (alert.kind, alert.organisation, alert.severity) == ("spoofing", m["buyer1"], "high")  # three levels: layering
    assert [o["order"] for o in alert.evidence["orders"]] == spoofs
    assert all(o["lifetime_ms"] < 10_000 for o in alert.evidence["orders"])
    assert alert.evidence["price_levels"] == [1497, 1498, 1499]


def test_trades_far_from_the_reference_are_one_alert_per_instrument_and_day(market, trader):
    m = market
    honest(trader, m)
    trader.trade(m["seller2"], m["buyer_user1"], "16.00", 1)   # 6.7% above 15.00, inside the 10% band
    trader.trade(m["seller2"], m["buyer_user2"], "13.90", 1)   # 7.3% below
    assert surveillance_scan()["off_reference_price"] == 1
    assert surveillance_scan()["off_reference_price"] == 0
    alert = Alert.objects.get()
    assert alert.kind == "off_reference_price" and alert.severity == "medium"
    assert [t["price_fen_per_lot"] for t in alert.evidence["trades"]] == [1600, 1390]
    assert alert.evidence["worst_bps"] == 733


def test_each_pattern_once_together(market, trader):
    m = market
    honest(trader, m)
    OwnershipGroup.objects.create(organisation=m["supplier2"], group="G")
    OwnershipGroup.objects.create(organisation=m["buyer2"], group="G")
    trader.trade(m["seller2"], m["buyer_user2"], "15.00", 1)
    trader.trade(m["seller1"], m["buyer_user1"], "16.10", 1)
    for _ in range(3):
        order = trader.place(m["buyer_user1"], "buy", "16.05", 90)  # near the last trade, 16.10
        trader.cancel(m["buyer_user1"], order["id"])
    surveillance_scan()
    surveillance_scan()
    assert kinds() == ["off_reference_price", "spoofing", "wash_trade"]


# --- The alert workflow --------------------------------------------------------------------------------

REVIEW = "/api/v1/oversight/alerts/{}/review/"


@pytest.fixture
def alert(market):
    return Alert.objects.create(kind="wash_trade", severity="high", fingerprint="wash:x", summary="s", organisation=market["buyer1"])


def test_open_under_review_closed_with_a_note_each_step_audited(api, market, alert):
    api.force_authenticate(market["regulator"])
    assert api.post(REVIEW.format(alert.pk), {"status": "under_review", "note": "asking the member"}).json()["status"] == "under_review"
    refused = api.post(REVIEW.format(alert.pk), {"status": "closed"})
    assert refused.status_code == 400 and "note" in refused.json()
    closed = api.post(REVIEW.format(alert.pk), {"status": "closed", "note": "intra-group hedging, disclosed"})
    assert closed.status_code == 201
    body = closed.json()
    assert body["status"] == "closed"
    assert [(r["from_status"], r["to_status"], r["note"]) for r in body["reviews"]] == [
        ("open", "under_review", "asking the member"), ("under_review", "closed", "intra-group hedging, disclosed")]
    audit_ingest()
    recorded = AuditRecord.objects.filter(kind="alert_review").order_by("seq")
    assert [r.object_id for r in recorded] == list(AlertReview.objects.order_by("id").values_list("id", flat=True))
    assert '"to_status":"closed"' in recorded.last().payload
    assert audit_verify().ok


def test_reviews_refuse_bad_steps_and_other_users(api, market, alert):
    api.force_authenticate(market["regulator"])
    assert api.post(REVIEW.format(alert.pk), {"status": "open"}).status_code == 400
    assert api.post(REVIEW.format(alert.pk), {"status": "closed", "note": "n", "extra": 1}).status_code == 400
    assert api.post(REVIEW.format(alert.pk + 100), {"status": "under_review"}).status_code == 404
    api.post(REVIEW.format(alert.pk), {"status": "closed", "note": "fine"})
    again = api.post(REVIEW.format(alert.pk), {"status": "closed", "note": "again"})
    assert again.status_code == 409 and "status" in again.json()
    for user in (market["buyer_user1"], market["seller1"]):
        api.force_authenticate(user)
        assert api.post(REVIEW.format(alert.pk), {"status": "under_review"}).status_code == 403
    assert AlertReview.objects.count() == 1


def test_alert_list_filters(api, market, alert):
    Alert.objects.create(kind="spoofing", severity="medium", fingerprint="spoof:x", summary="s")
    api.force_authenticate(market["regulator"])
    assert [a["kind"] for a in api.get("/api/v1/oversight/alerts/", {"kind": "spoofing"}).json()["results"]] == ["spoofing"]
    assert [a["id"] for a in api.get("/api/v1/oversight/alerts/", {"severity": "high", "status": "open"}).json()["results"]] == [alert.pk]


# --- Patterns from metering ----------------------------------------------------------------------------

def test_a_supplier_whose_delivery_ratio_fell_is_one_alert(market, trader):
    from exchange.models import Contract

    m = market
    for seller in ("seller1", "seller1", "seller1", "seller1", "seller2", "seller2", "seller2", "seller2"):
        trader.trade(m[seller], m["buyer_user1"], "15.00", 2)
    s1 = list(Contract.objects.filter(seller=m["supplier1"]).order_by("id"))
    s2 = list(Contract.objects.filter(seller=m["supplier2"]).order_by("id"))
    # supplier 1: 100% three weeks ago, 60% this week; supplier 2: a steady 95%
    for contract, share, days in zip(s1, ("1", "1", "0.6", "0.6"), (20, 18, 2, 1), strict=True):
        deliver(contract, share=share, settled_days_ago=days)
    for contract, days in zip(s2, (20, 18, 2, 1), strict=True):
        deliver(contract, share="0.95", settled_days_ago=days)
    assert surveillance_scan()["delivery_ratio"] == 1
    assert surveillance_scan()["delivery_ratio"] == 0
    alert = Alert.objects.get(kind="delivery_ratio")
    assert alert.organisation == m["supplier1"] and alert.severity == "medium"
    assert (alert.evidence["prior_ratio"], alert.evidence["recent_ratio"]) == ("1.0000", "0.6000")
    assert alert.summary == "delivery ratio fell from 100.0% to 60.0%"


def test_usage_whose_energy_does_not_add_up_is_one_alert_per_contract(market, trader):
    from exchange.models import Contract

    m = market
    for _ in range(3):
        trader.trade(m["seller1"], m["buyer_user1"], "15.00", 10)
    honest_contract, estimated_contract, suspect = Contract.objects.order_by("id")
    # 10 H100 (700 W) for an hour draw at most 7 kWh of IT energy.
    usage(honest_contract, 1, kwh="5.600")
    usage(honest_contract, 2, kwh="6.100")
    usage(estimated_contract, 1, kwh="0.100", estimated=True)  # not metered: nothing to compare
    usage(suspect, 1, kwh="0.700")
    usage(suspect, 2, kwh="0.650")
    assert surveillance_scan()["usage_mismatch"] == 1
    assert surveillance_scan()["usage_mismatch"] == 0
    alert = Alert.objects.get(kind="usage_mismatch")
    assert alert.organisation == m["supplier1"] and alert.severity == "high"
    assert alert.evidence["contract"] == suspect.pk and alert.evidence["energy_ratio"] == "0.096"
    assert (alert.evidence["metered_kwh"], alert.evidence["expected_kwh"]) == ("1.350", "14.000")


def test_round_trips_that_farm_vouchers(market, trader):
    """Supplier 2 buys from supplier 1 with a voucher, then supplier 1 buys it back: the first claim slipped
    through (its reverse came later) and is one alert; supplier 1's own claim on the way back was blocked
    as a round trip, one more. Buyer 1's subsidised purchase, never reversed, raises nothing."""
    from django.utils import timezone

    from exchange.models import Contract
    from tests.factories import member
    from tests.oversight import voucher_helpers as v
    from vouchers import services as vouchers
    from vouchers.models import Redemption

    m = market
    authority = v.authority()
    programme = v.open_programme(authority)
    for org in ("buyer1", "supplier1", "supplier2"):
        application = v.apply(programme, m[org], member(m[org], username=f"{org}-admin"), key=f"apply-{org}")
        vouchers.application_approve(user=authority, application_id=application.pk, now=timezone.now() - dt.timedelta(days=1))

    def trade(seller, buyer_user):
        trader.trade(m[seller], buyer_user, "15.00", 2)
        contract = Contract.objects.order_by("-id").first()
        vouchers.redemption_commit(contract_id=contract.pk)
        return Redemption.objects.get(contract=contract)

    honest = trade("seller1", m["buyer_user1"])
    out = trade("seller1", m["seller2"])     # supplier 2 buys from supplier 1, subsidised
    back = trade("seller2", m["seller1"])    # supplier 1 buys it back: its claim is blocked
    assert (honest.status, out.status, back.status, back.reason) == ("committed", "committed", "blocked", "round_trip")
    assert surveillance_scan()["voucher_farming"] == 2
    assert surveillance_scan()["voucher_farming"] == 0
    slipped = Alert.objects.get(fingerprint=f"voucher:{out.pk}")
    assert (slipped.severity, slipped.organisation, slipped.evidence["reverse_contracts"]) == ("high", m["supplier2"], [back.contract_id])
    attempt = Alert.objects.get(fingerprint__startswith="voucher-blocked:")
    assert attempt.organisation == m["supplier1"] and [c["reason"] for c in attempt.evidence["claims"]] == ["round_trip"]
    assert Alert.objects.count() == 2
