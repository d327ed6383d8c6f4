"""Usage ingestion: per-event answers, every rejection reason, duplicates, caps and the money that follows."""

import datetime as dt

import pytest

from ledger.selectors import balances_get
from ledger.verify import ledger_verify
from metering.models import ContractDelivery, UsageEvent
from tests.factories import DeviceModelFactory, OrganisationFactory, member
from tests.metering.conftest import BUYER_FUNDS, event, post_events, trade

pytestmark = pytest.mark.django_db


def test_a_batch_is_rated_in_standard_units_and_escrow_follows(api, deal):
    # Given a 10-unit contract worth 15000 fen, when the supplier meters 2 H100 for 1 hour and 1 for 30 minutes
    r = post_events(api, deal["seller_user"], [event(deal, 1, devices=2), event(deal, 2, hours=0.5, offset_minutes=60)])
    # then each event is rated at 0.989 PFLOPS-hour per H100-hour
    assert r.status_code == 200
    body = r.json()
    assert (body["accepted"], body["duplicates"], body["rejected"]) == (2, 0, 0)
    assert [x["units"] for x in body["results"]] == ["1.978000", "0.494500"]
    d = ContractDelivery.objects.get(pk=deal["contract"].pk)
    assert (d.status, d.delivered_micro, d.events) == ("delivering", 2_472_500, 2)
    # and released = 15000 * 2.4725 / 10 = 3708 fen (rounded down), fee = 8 * 3708 // 15000 = 1 fen
    assert (d.released_fen, d.fee_fen) == (3708, 1)
    assert balances_get(organisation=deal["supplier"])["available"] == 3707
    assert balances_get(organisation=deal["buyer"])["escrow"] == 15000 - 3708
    assert ledger_verify().ok


def test_duplicates_in_one_batch_and_across_batches_are_counted_once(api, deal):
    first = post_events(api, deal["seller_user"], [event(deal, 1), event(deal, 1), event(deal, 2, offset_minutes=60)]).json()
    assert [x["status"] for x in first["results"]] == ["accepted", "duplicate", "accepted"]
    assert (first["accepted"], first["duplicates"]) == (2, 1)
    again = post_events(api, deal["seller_user"], [event(deal, 2, offset_minutes=60), event(deal, 3, offset_minutes=120)]).json()
    assert [x["status"] for x in again["results"]] == ["duplicate", "accepted"]
    d = ContractDelivery.objects.get(pk=deal["contract"].pk)
    assert (d.delivered_micro, d.events, UsageEvent.objects.count()) == (3 * 989_000, 3, 3)
    assert d.released_fen == 15000 * 3 * 989_000 // 10_000_000


def test_a_retried_batch_changes_nothing(api, deal):
    batch = [event(deal, i, offset_minutes=i) for i in range(5)]
    post_events(api, deal["seller_user"], batch)
    before = (balances_get(organisation=deal["supplier"]), ContractDelivery.objects.get(pk=deal["contract"].pk).released_fen)
    retry = post_events(api, deal["seller_user"], batch).json()
    assert (retry["accepted"], retry["duplicates"]) == (0, 5)
    assert (balances_get(organisation=deal["supplier"]), ContractDelivery.objects.get(pk=deal["contract"].pk).released_fen) == before


def test_out_of_order_events_are_fine(api, deal):
    r = post_events(api, deal["seller_user"], [event(deal, "late-hour", offset_minutes=600), event(deal, "early-hour")]).json()
    assert r["accepted"] == 2


def test_every_rejection_reason_leaves_good_neighbours_alone(api, deal, settings):
    d = deal
    # Another supplier's contract: not ours to meter.
    rival = OrganisationFactory(name="Rival Compute", kind="supplier")
    window_end = d["window_start"] + dt.timedelta(days=1)
    events = [
        event(d, "ok-1"),
        {"event_id": "bad-fields", "contract": d["contract"].pk, "start": "yesterday", "device_count": 0, "colour": "red"},
        event(d, "bad-end", hours=-1),
        event(d, "unknown", contract=999999),
        event(d, "before", offset_minutes=-30),
        event(d, "after", offset_minutes=24 * 60 - 30),
        event(d, "future", offset_minutes=12 * 60),
        event(d, "other-dc", data_centre=d["other_dc"].pk),
        event(d, "not-installed", device_model=DeviceModelFactory(name="A100 SXM", fp16_tflops=312).pk),
        event(d, "too-many", devices=11),
        event(d, "ok-2", offset_minutes=60),
    ]
    r = post_events(api, d["seller_user"], events)
    assert r.status_code == 200
    by_id = {x["event_id"].removeprefix("ev-"): x for x in r.json()["results"]}
    assert {k: v.get("reason", v["status"]) for k, v in by_id.items()} == {
        "ok-1": "accepted", "bad-fields": "invalid", "bad-end": "invalid", "unknown": "unknown_contract",
        "before": "outside_window", "after": "outside_window", "future": "in_future", "other-dc": "wrong_data_centre",
        "not-installed": "device_model_not_eligible", "too-many": "too_many_devices", "ok-2": "accepted",
    }
    assert by_id["bad-fields"]["errors"] == {
        "colour": ["Unknown field."], "data_centre": ["This field is required."], "device_model": ["This field is required."],
        "end": ["This field is required."],
    }
    assert by_id["bad-end"]["errors"] == {"end": ["Must be after start."]}
    assert all(x["message"] for x in by_id.values() if x["status"] == "rejected")
    assert window_end > d["now"]
    assert UsageEvent.objects.count() == 2
    # A rival's trader cannot meter our contract: unknown to them, nothing stored.
    rival_user = member(rival, role="trader", username="rival")
    r = post_events(api, rival_user, [event(d, "steal", offset_minutes=120)]).json()
    assert r["results"][0]["reason"] == "unknown_contract"
    assert UsageEvent.objects.count() == 2


def test_field_level_errors_for_each_bad_value(api, deal):
    bad = event(deal, "x", device_count="3", energy_kwh=-1, utilisation_pct=120, contract="12", start="2026-11-29T08:00:00")
    r = post_events(api, deal["seller_user"], [bad, {"event_id": ""}, "not an object"]).json()
    first = r["results"][0]["errors"]
    assert set(first) == {"device_count", "energy_kwh", "utilisation_pct", "contract", "start"}
    assert first["start"] == ["Give a time zone, e.g. 2026-11-29T08:00:00Z."]
    assert r["results"][2] == {"event_id": None, "status": "rejected", "reason": "invalid", "message": "The event is malformed; see errors.",
                               "errors": {"non_field_errors": ["An event is a JSON object."]}}
    assert r["rejected"] == 3


def test_over_quantity_is_capped_then_rejected(api, deal):
    # 10 H100 for 1 hour = 9.89 units; then 1 H100 for 1 hour crosses 10 units and is credited 0.11; then nothing is left.
    r = post_events(api, deal["seller_user"], [
        event(deal, "a", devices=10), event(deal, "b", offset_minutes=60), event(deal, "c", offset_minutes=120),
        event(deal, "c", offset_minutes=120),
    ]).json()
    assert [(x["status"], x.get("credited"), x.get("reason")) for x in r["results"]] == [
        ("accepted", None, None), ("accepted", "0.110000", None), ("rejected", None, "over_quantity"),
        ("rejected", None, "over_quantity"),  # a repeat of a refused event is not "duplicate": nothing was accepted
    ]
    d = ContractDelivery.objects.get(pk=deal["contract"].pk)
    assert (d.delivered_micro, d.released_fen, d.fee_fen) == (10_000_000, 15000, 8)
    assert balances_get(organisation=deal["supplier"])["available"] == 15000 - 8
    assert balances_get(organisation=deal["buyer"])["escrow"] == 0


def test_late_events_within_grace_are_accepted_and_after_it_rejected(api, deal, settings):
    from metering.models import UsageEvent as UE
    from metering.services import usage_batch_ingest

    settings.METERING_GRACE_SECONDS = 3600
    end = deal["window_start"] + dt.timedelta(days=1)
    ids = {deal["supplier"].pk}
    within = usage_batch_ingest(supplier_ids=ids, events=[event(deal, "in-grace")], now=end + dt.timedelta(minutes=59))
    after = usage_batch_ingest(supplier_ids=ids, events=[event(deal, "too-late", offset_minutes=60)], now=end + dt.timedelta(minutes=61))
    assert within.results[0]["status"] == "accepted"
    assert after.results[0]["reason"] == "late"
    assert UE.objects.count() == 1
    # A resend of what was stored, after the grace period, is still answered duplicate (the agent's rerun).
    resent = usage_batch_ingest(supplier_ids=ids, events=[event(deal, "in-grace")], now=end + dt.timedelta(hours=5))
    assert resent.results[0]["status"] == "duplicate"


def test_settled_contract_takes_no_more_usage(api, deal, settings):
    from metering.services import delivery_settle, usage_batch_ingest

    settings.METERING_GRACE_SECONDS = 0
    end = deal["window_start"] + dt.timedelta(days=1)
    ids = {deal["supplier"].pk}
    usage_batch_ingest(supplier_ids=ids, events=[event(deal, "before")], now=deal["now"])
    delivery_settle(contract_id=deal["contract"].pk, now=end)
    settings.METERING_GRACE_SECONDS = 3600
    r = usage_batch_ingest(supplier_ids=ids, events=[event(deal, "after-settle", offset_minutes=60), event(deal, "before")], now=end)
    assert [x.get("reason", x["status"]) for x in r.results] == ["contract_settled", "duplicate"]


def test_batch_limits_and_body_errors(api, deal):
    api.force_authenticate(deal["seller_user"])
    assert api.post("/api/v1/metering/events/", {"events": []}, format="json").json() == {"events": ["A list of 1 to 10000 events."]}
    big = api.post("/api/v1/metering/events/", [event(deal, 1)] * 10_001, format="json")
    assert big.status_code == 400 and "At most 10000" in big.json()["events"][0]
    assert api.post("/api/v1/metering/events/", {"events": [event(deal, 1)], "x": 1}, format="json").json() == {"x": ["Unknown field."]}
    raw = api.generic("POST", "/api/v1/metering/events/", b"{not json", content_type="application/json")
    assert raw.status_code == 400
    # The list itself is also accepted as the body.
    assert api.post("/api/v1/metering/events/", [event(deal, 1)], format="json").json()["accepted"] == 1


def test_only_supplier_traders_submit(api, deal):
    assert post_events(api, deal["buyer_user"], [event(deal, 1)]).status_code == 403  # a buyer organisation meters nothing
    viewer = member(deal["supplier"], role="viewer", username="viewer")
    assert post_events(api, viewer, [event(deal, 1)]).status_code == 403
    api.force_authenticate(None)
    assert api.post("/api/v1/metering/events/", [event(deal, 1)], format="json").status_code in (401, 403)


def test_energy_is_estimated_from_rated_power_when_not_metered(api, deal):
    post_events(api, deal["seller_user"], [event(deal, 1, devices=2), event(deal, 2, offset_minutes=60, energy_kwh="1.25", utilisation_pct=80)])
    rows = {e.event_id: e for e in UsageEvent.objects.all()}
    assert (str(rows["ev-1"].energy_kwh), rows["ev-1"].energy_estimated) == ("1.400", True)  # 2 x 700 W x 1 h
    assert (str(rows["ev-2"].energy_kwh), rows["ev-2"].energy_estimated, str(rows["ev-2"].utilisation_pct)) == ("1.250", False, "80.00")


def test_two_contracts_in_one_batch(api, deal):
    second = trade(api, deal["seller_user"], deal["buyer_user"], deal["contract"].instrument, 4, tag="2")
    from exchange.models import Contract

    assert Contract.objects.count() == 2
    r = post_events(api, deal["seller_user"], [event(deal, "a"), event(deal, "b", contract=second.pk)]).json()
    assert r["accepted"] == 2
    assert set(r["contracts"]) == {str(deal["contract"].pk), str(second.pk)}
    assert balances_get(organisation=deal["buyer"])["available"] + balances_get(organisation=deal["buyer"])["escrow"] < BUYER_FUNDS
