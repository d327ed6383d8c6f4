"""The compute list: installed capacity in standard units, by region, supplier, chip class and origin."""

from decimal import Decimal

import pytest

from tests.factories import DeviceModelFactory, OrganisationFactory, ascend, data_centre

pytestmark = pytest.mark.django_db


@pytest.fixture
def market():
    qingpu = OrganisationFactory(name="Qingpu Compute")
    west = OrganisationFactory(name="West Cloud")
    h100 = DeviceModelFactory()
    npu = ascend()
    data_centre(qingpu, {h100: 100, npu: 50}, region="qingpu", renewable_share=Decimal("20"))
    data_centre(west, {npu: 200}, region="ningxia_zhongwei", renewable_share=Decimal("60"))
    data_centre(west, {h100: 1000}, region="ningxia_zhongwei", renewable_share=Decimal("60"), is_active=False)
    return qingpu, west


def test_inventory_by_region_in_standard_units(api, market):
    body = api.get("/api/v1/inventory/", {"group_by": "region"}).json()
    by_key = {g["key"]: g for g in body["groups"]}
    qingpu, ningxia = by_key["qingpu"], by_key["ningxia_zhongwei"]
    # 100 H100 x 0.989 + 50 x 0.320 = 114.9 FP16 PFLOPS; FP64 only from H100: 100 x 0.034.
    assert qingpu["pflops"] == {"FP16_PFH": "114.900", "FP32_PFH": "6.700", "FP64_PFH": "3.400"}
    assert qingpu["devices"] == 150 and qingpu["data_centres"] == 1
    assert qingpu["domestic_share"] == "13.93"  # 16 / 114.9
    assert qingpu["green_share"] == "20.00"
    assert ningxia["pflops"]["FP16_PFH"] == "64.000"  # the inactive data centre is not counted
    assert ningxia["domestic_share"] == "100.00" and ningxia["shanghai_share"] == "0.00"
    total = body["total"]
    assert total["pflops"]["FP16_PFH"] == "178.900"
    assert total["domestic_share"] == "44.72"  # 80 / 178.9
    assert total["green_share"] == "34.31"  # (114.9 x 20% + 64 x 60%) / 178.9
    assert total["shanghai_share"] == "64.23"


def test_inventory_by_supplier_chip_class_and_origin(api, market):
    qingpu, west = market
    groups = api.get("/api/v1/inventory/", {"group_by": "supplier"}).json()["groups"]
    assert [(g["label"], g["pflops"]["FP16_PFH"]) for g in groups] == [("Qingpu Compute", "114.900"), ("West Cloud", "64.000")]
    groups = api.get("/api/v1/inventory/", {"group_by": "domestic"}).json()["groups"]
    assert {g["key"]: g["devices"] for g in groups} == {"imported": 100, "domestic": 250}
    groups = api.get("/api/v1/inventory/", {"group_by": "chip_class"}).json()["groups"]
    assert [g["key"] for g in groups] == ["training"]
    one = api.get("/api/v1/inventory/", {"group_by": "region", "supplier": west.pk}).json()
    assert one["total"]["devices"] == 200


def test_inventory_refuses_unknown_grouping(api, market):
    response = api.get("/api/v1/inventory/", {"group_by": "colour"})
    assert response.status_code == 400 and "group_by" in response.json()
    assert api.get("/api/v1/inventory/", {"supplier": "x"}).status_code == 400
