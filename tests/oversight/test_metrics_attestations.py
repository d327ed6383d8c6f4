"""Policy metrics against the targets, and data-deletion attestations at contract end."""

import csv
import datetime as dt
import io
from decimal import Decimal

import pytest
from django.apps import apps
from django.utils import timezone

from exchange.models import Contract
from oversight.models import DeletionAttestation
from tests.factories import ascend, data_centre

pytestmark = pytest.mark.django_db
METRICS = "/api/v1/oversight/metrics/"
ATTEST = "/api/v1/oversight/attestations/"


def metering_installed() -> bool:
    try:
        apps.get_model("metering", "ContractDelivery")
    except LookupError:
        return False
    return True


@pytest.fixture
def estate(api, market, trader):
    """Two Qingpu data centres of 200 H100 (PUE 1.20, 40% renewable, 570 g/kWh, 2 ms), 50 listed from each;
    one Lingang site of 100 Ascend 910B (PUE 1.30, no renewables, 8 ms); 3 lots traded."""
    data_centre(market["supplier2"], {ascend(): 100}, latency_ms="8.0", region="lingang", pue=Decimal("1.30"), renewable_share=Decimal("0"))
    trader.trade(market["seller1"], market["buyer_user1"], "15.00", 3)
    api.force_authenticate(market["regulator"])
    return market


def test_platform_metrics_against_the_targets(api, estate):
    body = api.get(METRICS).json()
    assert body["level"] == "platform" and len(body["groups"]) == 1
    m = body["groups"][0]["metrics"]
    assert (m["connected_data_centres"], m["connected_suppliers"]) == (3, 2)
    assert (m["installed_fp16_pflops"], m["listed_fp16_pflops"], m["installed_fp32_pflops"]) == ("427.600", "98.900", "26.800")
    assert m["traded_fp16_pflops_hours"] == "3.000"
    assert m["delivered_fp16_pflops_hours"] == ("0.000" if metering_installed() else None)
    assert (m["pue_weighted"], m["renewable_share_pct"], m["domestic_chip_share_pct"]) == ("1.21", "37.01", "7.48")
    assert (m["latency_le_5ms"], m["latency_le_20ms"], m["data_centres_above_pue_1_25"]) == (2, 1, 1)
    assert body["groups"][0]["meets_targets"] == {
        "connected_data_centres": False, "listed_fp16_pflops": False, "installed_fp32_pflops": False,
        "renewable_share_pct": True, "data_centres_above_pue_1_25": False,
    }


def test_region_and_supplier_levels(api, estate):
    regions = {g["key"]: g["metrics"] for g in api.get(METRICS, {"level": "region"}).json()["groups"]}
    assert set(regions) == {"qingpu", "lingang"}
    lingang = regions["lingang"]
    assert (lingang["installed_fp16_pflops"], lingang["domestic_chip_share_pct"], lingang["pue_weighted"]) == ("32.000", "100.00", "1.30")
    # 0.4 kW x 1.30 x 570 g/kWh x (1 - 0) per device-hour over 0.32 PFLOPS
    assert lingang["carbon_g_per_pflops_hour"] == "926.25"
    # 0.7 kW x 1.20 x 570 x 0.6 over 0.989 PFLOPS
    assert regions["qingpu"]["carbon_g_per_pflops_hour"] == "290.48"
    suppliers = {int(g["key"]): g["metrics"] for g in api.get(METRICS, {"level": "supplier"}).json()["groups"]}
    assert suppliers[estate["supplier1"].pk]["traded_fp16_pflops_hours"] == "3.000"
    assert suppliers[estate["supplier2"].pk]["traded_fp16_pflops_hours"] == "0.000"
    assert suppliers[estate["supplier2"].pk]["connected_data_centres"] == 2


def test_metrics_period_and_bad_input(api, estate):
    later = (timezone.now() + dt.timedelta(hours=1)).isoformat()
    assert api.get(METRICS, {"since": later}).json()["groups"][0]["metrics"]["traded_fp16_pflops_hours"] == "0.000"
    assert api.get(METRICS, {"level": "district"}).status_code == 400
    assert set(api.get(METRICS, {"since": "last week"}).json()) == {"since"}


def test_metrics_csv(api, estate):
    response = api.get(METRICS, {"export": "csv"})
    rows = list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))
    by_metric = {r["metric"]: r for r in rows}
    assert by_metric["renewable_share_pct"]["value"] == "37.01"
    assert by_metric["renewable_share_pct"]["meets_target"] == "True"
    assert by_metric["listed_fp16_pflops"]["target"].startswith("at least 1,000 PFLOPS")


# --- Data-deletion attestations ------------------------------------------------------------------------

def end_contracts():
    now = timezone.now()
    from marketplace.models import Instrument

    Instrument.objects.filter(pk__in=Contract.objects.values("instrument_id")).update(
        opens_at=now - dt.timedelta(days=3), gate_closure=now - dt.timedelta(days=2, hours=1),
        delivery_start=now - dt.timedelta(days=2), delivery_end=now - dt.timedelta(days=1))


@pytest.fixture
def contracts(market, trader):
    trader.trade(market["seller1"], market["buyer_user1"], "15.00", 2)
    trader.trade(market["seller2"], market["buyer_user2"], "15.00", 1)
    return {c.seller_id: c for c in Contract.objects.all()}


def test_a_supplier_attests_its_ended_contract_once(api, market, contracts):
    mine = contracts[market["supplier1"].pk]
    api.force_authenticate(market["seller1"])
    early = api.post(ATTEST, {"contract": mine.pk, "method": "deleted"})
    assert early.status_code == 400 and "contract" in early.json()
    end_contracts()
    done = api.post(ATTEST, {"contract": mine.pk, "method": "deleted", "note": "wiped volumes, cert #77"})
    assert done.status_code == 201
    assert (done.json()["supplier"], done.json()["attested_by"]) == (market["supplier1"].pk, market["seller1"].pk)
    assert api.post(ATTEST, {"contract": mine.pk, "method": "returned"}).status_code == 409
    assert api.post(ATTEST, {"contract": mine.pk, "method": "burnt"}).status_code == 400
    assert DeletionAttestation.objects.count() == 1


def test_others_cannot_attest_and_foreign_contracts_are_404(api, market, contracts):
    end_contracts()
    theirs = contracts[market["supplier2"].pk]
    for user in (market["seller1"], market["buyer_user2"]):
        api.force_authenticate(user)
        assert api.post(ATTEST, {"contract": theirs.pk, "method": "deleted"}).status_code == 404
    api.force_authenticate(market["regulator"])
    assert api.post(ATTEST, {"contract": theirs.pk, "method": "deleted"}).status_code == 403
    assert not DeletionAttestation.objects.exists()


def test_the_regulator_sees_outstanding_attestations(api, market, contracts):
    api.force_authenticate(market["regulator"])
    assert api.get(ATTEST + "outstanding/").json()["results"] == []  # nothing has ended yet
    end_contracts()
    assert {r["id"] for r in api.get(ATTEST + "outstanding/").json()["results"]} == {c.pk for c in contracts.values()}
    api.force_authenticate(market["seller1"])
    api.post(ATTEST, {"contract": contracts[market["supplier1"].pk].pk, "method": "returned"})
    assert [r["id"] for r in api.get(ATTEST + "outstanding/").json()["results"]] == []
    api.force_authenticate(market["regulator"])
    assert [r["id"] for r in api.get(ATTEST + "outstanding/").json()["results"]] == [contracts[market["supplier2"].pk].pk]
    assert len(api.get(ATTEST).json()["results"]) == 1
    api.force_authenticate(market["seller2"])
    assert [r["id"] for r in api.get(ATTEST + "outstanding/").json()["results"]] == [contracts[market["supplier2"].pk].pk]
    assert api.get(ATTEST).json()["results"] == []


def test_voucher_spend_is_the_subsidy_paid_on_the_periods_contracts(api, estate):
    from exchange.models import Contract
    from tests.factories import member
    from tests.oversight.voucher_helpers import approved_voucher
    from vouchers.models import Redemption

    voucher = approved_voucher(estate["buyer1"], member(estate["buyer1"], role="admin", username="buyer1-admin"))
    contract = Contract.objects.get()
    assert api.get(METRICS).json()["groups"][0]["metrics"]["voucher_spend_fen"] == 0
    Redemption.objects.create(voucher=voucher, contract=contract, status="settled", value_fen=contract.value_fen, rate_bps=2000,
                              committed_fen=900, paid_fen=600, released_fen=300, year=contract.created_at.year)
    assert api.get(METRICS).json()["groups"][0]["metrics"]["voucher_spend_fen"] == 600
    assert api.get(METRICS, {"until": "2000-01-01T00:00:00Z", "since": "1999-01-01T00:00:00Z"}).json()["groups"][0]["metrics"]["voucher_spend_fen"] == 0
