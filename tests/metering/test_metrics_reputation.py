"""Efficiency and carbon metrics per group; the supplier's reputation on marketplace's data centres and listings."""

import datetime as dt
from decimal import Decimal

import pytest

from metering import services
from tests.factories import UserFactory
from tests.metering.conftest import event, post_events

pytestmark = pytest.mark.django_db


def test_metrics_per_data_centre_supplier_product_and_contract(api, deal):
    post_events(api, deal["seller_user"], [event(deal, 1, devices=2), event(deal, 2, offset_minutes=60, energy_kwh="0.6", utilisation_pct="80")])
    regulator = UserFactory(username="reg", platform_role="regulator")
    api.force_authenticate(regulator)
    expected = {
        "data_centres": 1, "delivered_units": "2.967000", "device_hours": "3.00", "utilisation_pct": "80.00",
        "it_energy_kwh": "2.000",  # 1.400 estimated (2 x 700 W x 1 h) + 0.600 metered
        "facility_energy_kwh": "2.400",  # x PUE 1.20
        "energy_kwh_per_unit": "0.809",
        "carbon_kg": "0.821",  # 2.4 kWh x 570 g/kWh x 60% non-renewable
        "carbon_kg_per_unit": "0.277", "latency_ms": "2.00", "latency_class": "B",
    }
    names = {"data_centre": deal["dc"].name, "supplier": deal["supplier"].name, "product": "AI-TRAIN", "contract": deal["instrument"].code}
    keys = {"data_centre": deal["dc"].pk, "supplier": deal["supplier"].pk, "product": deal["product"].pk, "contract": deal["contract"].pk}
    for group_by in ("data_centre", "supplier", "product", "contract"):
        body = api.get(f"/api/v1/metering/metrics/?group_by={group_by}").json()
        assert body["group_by"] == group_by
        assert body["groups"] == [{"key": keys[group_by], "name": names[group_by], **expected}]
    assert api.get("/api/v1/metering/metrics/?group_by=colour").status_code == 400
    assert api.get("/api/v1/metering/metrics/?from=yesterday").status_code == 400
    later = (deal["window_start"] + dt.timedelta(minutes=30)).isoformat().replace("+00:00", "Z")
    assert api.get("/api/v1/metering/metrics/", {"from": later}).json()["groups"][0]["delivered_units"] == "0.989000"
    # Parties see their own usage; a stranger sees none.
    api.force_authenticate(deal["buyer_user"])
    assert len(api.get("/api/v1/metering/metrics/").json()["groups"]) == 1
    api.force_authenticate(UserFactory(username="stranger"))
    assert api.get("/api/v1/metering/metrics/").json()["groups"] == []


def test_reputation_shows_on_data_centres_and_listings(api, deal, settings):
    settings.METERING_GRACE_SECONDS = 0
    post_events(api, deal["seller_user"], [event(deal, 1, devices=5)])  # 4.945 of 10 units
    api.force_authenticate(deal["seller_user"])
    assert api.get(f"/api/v1/data-centres/{deal['dc'].pk}/").json()["owner_delivery_ratio"] is None
    services.deliveries_settle_due(now=deal["window_start"] + dt.timedelta(days=1))
    # Value-weighted: released 7417 of 15000 fen.
    assert api.get(f"/api/v1/data-centres/{deal['dc'].pk}/").json()["owner_delivery_ratio"] == "0.4944"
    assert api.get(f"/api/v1/listings/{deal['listing'].pk}/").json()["supplier_delivery_ratio"] == "0.4944"
    org = api.get(f"/api/v1/organisations/{deal['supplier'].pk}/").json()
    assert (org["delivery_ratio"], org["delivery_contracts"]) == ("0.4944", 1)
    assert services.supplier_reputation_update(organisation_id=deal["supplier"].pk, now=deal["now"] + dt.timedelta(days=100)) is None
    assert Decimal(7417) / 15000 > Decimal("0.4944")
