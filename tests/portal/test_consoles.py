"""Console actions: metering upload (supplier), alert review and audit verification (regulator)."""

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client

from exchange.models import Contract
from oversight.models import Alert, AlertReview
from portal.consoles import usage_events_parse
from tests.factories import UserFactory


def login(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_csv_usage_events_are_typed_like_the_api_expects():
    data = (b"event_id,contract,data_centre,device_model,start,end,device_count,energy_kwh,utilisation_pct\n"
            b"e1,7,3,2,2026-11-30T00:00:00+08:00,2026-11-30T01:00:00+08:00,8,5.6,\n")
    assert usage_events_parse("usage.csv", data) == [{
        "event_id": "e1", "contract": 7, "data_centre": 3, "device_model": 2, "start": "2026-11-30T00:00:00+08:00",
        "end": "2026-11-30T01:00:00+08:00", "device_count": 8, "energy_kwh": "5.6",
    }]
    assert usage_events_parse("usage.json", b'{"events": [{"event_id": "e2"}]}') == [{"event_id": "e2"}]


def test_supplier_uploads_metering_and_sees_each_events_outcome(traded):
    contract = Contract.objects.get()
    listing = traded["listing"]
    csv_text = ("event_id,contract,data_centre,device_model,start,end,device_count\n"
                f"late-1,{contract.pk},{listing.data_centre_id},{listing.device_model_id},2020-01-01T00:00:00Z,2020-01-01T01:00:00Z,1\n"
                f"bad-2,{contract.pk},{listing.data_centre_id},{listing.device_model_id},yesterday,2020-01-01T01:00:00Z,1\n")
    supplier = login(traded["seller_user"])
    page = supplier.post("/supplier/metering/", {"file": SimpleUploadedFile("usage.csv", csv_text.encode(), "text/csv")})
    assert page.status_code == 200
    body = page.content.decode()
    assert "late-1" in body and "bad-2" in body and "outside_window" in body and "invalid" in body
    assert '<span>Rejected</span><strong>2</strong>' in body.replace("\n", "").replace("  ", "")
    # Not a file of events: a message, nothing stored.
    junk = supplier.post("/supplier/metering/", {"file": SimpleUploadedFile("x.json", b"[1, 2", "application/json")}, follow=True)
    assert "neither a JSON list" in junk.content.decode()
    # Buyers and regulators may not upload.
    assert login(traded["buyer_user"]).post("/supplier/metering/", {"file": SimpleUploadedFile("u.csv", csv_text.encode())}).status_code == 403
    assert login(traded["regulator"]).post("/supplier/metering/", {}).status_code == 403


@pytest.fixture
def alert(world):
    return Alert.objects.create(kind="wash_trade", severity="high", fingerprint="wash:1", organisation=world["buyer"],
                                instrument=world["instrument"], summary="Same beneficial owner on both sides")


def test_regulator_reviews_an_alert(world, alert):
    regulator = login(world["regulator"])
    assert "Same beneficial owner" in regulator.get("/regulator/").content.decode()
    regulator.post(f"/regulator/alerts/{alert.pk}/review/", {"status": "under_review"})
    alert.refresh_from_db()
    assert alert.status == "under_review"
    refused = regulator.post(f"/regulator/alerts/{alert.pk}/review/", {"status": "closed", "note": ""}, follow=True)
    assert "Say why the alert is closed." in refused.content.decode()
    alert.refresh_from_db()
    assert alert.status == "under_review"
    regulator.post(f"/regulator/alerts/{alert.pk}/review/", {"status": "closed", "note": "Unrelated funds, checked"})
    alert.refresh_from_db()
    assert alert.status == "closed" and AlertReview.objects.filter(alert=alert).count() == 2
    # An operator reads the console but only regulators review; members never reach it.
    operator = login(UserFactory(username="ops", platform_role="operator"))
    assert operator.get("/regulator/").status_code == 200
    assert operator.post(f"/regulator/alerts/{alert.pk}/review/", {"status": "under_review"}).status_code == 403
    assert login(world["buyer_user"]).post(f"/regulator/alerts/{alert.pk}/review/", {"status": "under_review"}).status_code == 403


def test_regulator_verifies_the_audit_chain(traded):
    from oversight import audit

    audit.audit_ingest(now=None)
    regulator = login(traded["regulator"])
    assert 'data-testid="audit-result"' not in regulator.get("/regulator/audit/").content.decode()
    page = regulator.post("/regulator/audit/").content.decode()
    assert "The chain is intact." in page
    assert login(traded["seller_user"]).post("/regulator/audit/").status_code == 403
