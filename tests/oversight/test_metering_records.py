"""The regulator reads metering records (usage events, deliveries) and they enter the audit chain."""

import csv
import io

import pytest
from django.db import connection

from exchange.models import Contract
from oversight.audit import audit_ingest, audit_verify
from oversight.models import AuditRecord
from tests.oversight.metering_helpers import deliver, usage

pytestmark = pytest.mark.django_db


@pytest.fixture
def records(api, market, trader):
    trader.trade(market["seller1"], market["buyer_user1"], "15.00", 10)
    trader.trade(market["seller2"], market["buyer_user2"], "15.00", 10)
    first, second = Contract.objects.order_by("id")
    events = [usage(first, 1, kwh="5.000"), usage(first, 2, kwh="6.000"), usage(second, 1, kwh="4.000", estimated=True)]
    deliver(second, share="0.9", settled_days_ago=1)
    api.force_authenticate(market["regulator"])
    return {**market, "events": events, "first": first, "second": second}


def test_usage_events_and_deliveries_for_the_regulator(api, records):
    rows = api.get("/api/v1/oversight/metering/usage-events/", {"supplier": records["supplier1"].pk}).json()["results"]
    assert [(r["event_id"], r["energy_kwh"]) for r in rows] == [(f"e{records['first'].pk}-2", "6.000"), (f"e{records['first'].pk}-1", "5.000")]
    assert [r["id"] for r in api.get("/api/v1/oversight/metering/usage-events/", {"energy_estimated": "true"}).json()["results"]] == [records["events"][2].pk]
    deliveries = api.get("/api/v1/oversight/metering/deliveries/", {"status": "settled"}).json()["results"]
    assert [(d["contract"], d["supplier"], d["delivery_ratio"]) for d in deliveries] == [(records["second"].pk, records["supplier2"].pk, "0.9000")]
    response = api.get("/api/v1/oversight/metering/usage-events/", {"export": "csv", "contract": records["first"].pk})
    exported = list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert [(r["event_id"], r["energy_kwh"], r["device_seconds"]) for r in exported] == [
        (f"e{records['first'].pk}-1", "5.000", "36000"), (f"e{records['first'].pk}-2", "6.000", "36000")]
    assert exported[0]["started_at"].endswith("Z")
    for user in (records["seller1"], records["buyer_user1"]):
        api.force_authenticate(user)
        assert api.get("/api/v1/oversight/metering/usage-events/").status_code == 403


def test_usage_events_enter_the_chain_and_an_edit_is_named(records):
    audit_ingest()
    recorded = AuditRecord.objects.filter(kind="usage_event").order_by("object_id")
    assert [r.object_id for r in recorded] == [e.pk for e in records["events"]]
    assert audit_verify().ok
    victim = records["events"][1]
    with connection.cursor() as cursor:
        cursor.execute("UPDATE metering_usageevent SET energy_kwh = 60 WHERE id = %s", [victim.pk])
    result = audit_verify()
    assert not result.ok and (result.kind, result.object_id) == ("usage_event", victim.pk)
    assert result.first_broken_seq == AuditRecord.objects.get(kind="usage_event", object_id=victim.pk).seq
