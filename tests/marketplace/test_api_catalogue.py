"""The catalogue over REST: reads for everyone, writes by the owner, bad input refused with field errors."""

from decimal import Decimal

import pytest
from rest_framework.authtoken.models import Token

from marketplace.models import DataCentre, DataCentreLatency, DeviceInventory, Organisation, PlatformRole, Product
from tests.factories import DeviceModelFactory, OrganisationFactory, ProductFactory, UserFactory, data_centre, member

pytestmark = pytest.mark.django_db


@pytest.fixture
def supplier():
    return OrganisationFactory(name="Qingpu Compute")


@pytest.fixture
def supplier_admin(supplier):
    return member(supplier, username="qp-admin")


@pytest.fixture
def h100():
    return DeviceModelFactory()


def dc_payload(owner, h100, **overrides):
    payload = {
        "owner": owner.pk,
        "name": "Xicen AI Centre",
        "region": "qingpu",
        "pue": "1.22",
        "renewable_share": "32.50",
        "carbon_intensity": "570",
        "security_level": 3,
        "interconnect_gbps": 800,
        "latencies": [{"metro": "shanghai", "rtt_ms": "1.8"}, {"metro": "beijing", "rtt_ms": "24"}],
        "devices": [{"device_model": h100.pk, "count": 2048}],
    }
    payload.update(overrides)
    return payload


def test_token_auth_with_username_and_password(api):
    user = UserFactory(username="alice")
    response = api.post("/api/v1/auth/token/", {"username": "alice", "password": "pw-12345-x"})
    assert response.status_code == 200
    assert response.json()["token"] == Token.objects.get(user=user).key

    api.credentials(HTTP_AUTHORIZATION=f"Token {response.json()['token']}")
    assert api.get("/api/v1/organisations/").status_code == 200


def test_token_auth_refuses_a_wrong_password(api):
    UserFactory(username="alice")
    response = api.post("/api/v1/auth/token/", {"username": "alice", "password": "nope"})
    assert response.status_code == 400
    assert "non_field_errors" in response.json()
    assert not Token.objects.exists()


def test_products_are_public_paginated_filterable_and_ordered(api):
    ProductFactory(code="AI-TRAIN", unit="FP16_PFH", reference_price=Decimal("15.00"))
    ProductFactory(code="GEN-FP32", unit="FP32_PFH", chip_class="", reference_price=Decimal("80.00"))
    ProductFactory(code="HPC-FP64", unit="FP64_PFH", chip_class="", reference_price=Decimal("420.00"))

    body = api.get("/api/v1/products/", {"ordering": "-reference_price"}).json()
    assert body["count"] == 3
    assert [p["code"] for p in body["results"]] == ["HPC-FP64", "GEN-FP32", "AI-TRAIN"]
    assert body["results"][0]["reference_price"] == "420.00"

    body = api.get("/api/v1/products/", {"unit": "FP32_PFH"}).json()
    assert [p["code"] for p in body["results"]] == ["GEN-FP32"]

    body = api.get("/api/v1/products/", {"page_size": 2}).json()
    assert len(body["results"]) == 2 and body["next"]


def test_only_operators_create_products(api):
    payload = {"code": "NEW", "name": "New", "unit": "FP16_PFH", "lot_size": "1", "tick_size": "0.01", "reference_price": "15.00"}
    api.force_authenticate(UserFactory())
    assert api.post("/api/v1/products/", payload).status_code == 403
    api.force_authenticate(UserFactory(platform_role=PlatformRole.REGULATOR))
    assert api.post("/api/v1/products/", payload).status_code == 403
    api.force_authenticate(UserFactory(platform_role=PlatformRole.OPERATOR))
    response = api.post("/api/v1/products/", payload)
    assert response.status_code == 201, response.json()
    assert Product.objects.get(code="NEW").tick_size == Decimal("0.01")


def test_product_tick_on_one_lot_must_be_whole_fen(api):
    api.force_authenticate(UserFactory(platform_role=PlatformRole.OPERATOR))
    payload = {"code": "EDGE", "name": "Edge", "unit": "FP16_PFH", "lot_size": "0.1", "tick_size": "0.01", "reference_price": "24.00"}
    response = api.post("/api/v1/products/", payload)
    assert response.status_code == 400
    assert response.json()["tick_size"] == [
        "One tick (0.01 CNY) on one lot (0.1 units) is 0.1 fen; it must be a whole number of fen."
    ]
    assert api.post("/api/v1/products/", payload | {"tick_size": "0.10"}).status_code == 201


def test_register_organisation_makes_the_user_its_admin(api):
    user = UserFactory()
    api.force_authenticate(user)
    response = api.post("/api/v1/organisations/", {
        "name": "Moyuan AI", "credit_code": "91350100M000100Y43", "kind": "buyer", "size_class": "small",
        "founded_on": "2021-06-15", "registration_region": "Shanghai Minhang",
    })
    assert response.status_code == 201, response.json()
    org = Organisation.objects.get(pk=response.json()["id"])
    assert org.memberships.get().user == user
    assert org.memberships.get().role == "admin"


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("credit_code", "91350100M000100Y44", "check character"),
        ("credit_code", "9135", "18 characters"),
        ("size_class", "huge", "not a valid choice"),
        ("founded_on", "yesterday", "Date has wrong format"),
    ],
)
def test_bad_organisation_input_is_a_field_error_and_writes_nothing(api, field, value, message):
    api.force_authenticate(UserFactory())
    payload = {
        "name": "Moyuan AI", "credit_code": "91350100M000100Y43", "kind": "buyer", "size_class": "small",
        "founded_on": "2021-06-15", "registration_region": "Shanghai Minhang", field: value,
    }
    response = api.post("/api/v1/organisations/", payload)
    assert response.status_code == 400
    assert message in " ".join(response.json()[field])
    assert not Organisation.objects.exists()


def test_unknown_fields_are_refused(api, supplier, supplier_admin, h100):
    api.force_authenticate(supplier_admin)
    response = api.post("/api/v1/data-centres/", dc_payload(supplier, h100, colour="blue"))
    assert response.status_code == 400
    assert response.json() == {"colour": ["Unknown field."]}
    response = api.post("/api/v1/data-centres/", dc_payload(supplier, h100, latencies=[{"metro": "shanghai", "rtt_ms": "1", "jitter": "2"}]))
    assert response.status_code == 400
    assert response.json()["latencies"]["0"] == {"jitter": ["Unknown field."]}
    assert not DataCentre.objects.exists()


def test_supplier_admin_registers_a_data_centre_with_latency_and_devices(api, supplier, supplier_admin, h100):
    api.force_authenticate(supplier_admin)
    response = api.post("/api/v1/data-centres/", dc_payload(supplier, h100))
    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["pue"] == "1.22"
    assert body["renewable_share"] == "32.50"
    assert {(row["metro"], row["rtt_ms"]) for row in body["latencies"]} == {("shanghai", "1.80"), ("beijing", "24.00")}
    assert body["devices"] == [{"device_model": h100.pk, "device_model_name": "NVIDIA H100 SXM", "count": 2048}]
    # Anyone can read the inventory.
    api.force_authenticate(None)
    assert api.get(f"/api/v1/data-centres/{body['id']}/").json()["name"] == "Xicen AI Centre"


@pytest.mark.parametrize(
    ("override", "field", "message"),
    [
        ({"pue": "0.95"}, "pue", "at least 1.00"),
        ({"renewable_share": "120"}, "renewable_share", "less than or equal to 100"),
        ({"renewable_share": "-1"}, "renewable_share", "greater than or equal to 0"),
        ({"security_level": 6}, "security_level", "less than or equal to 5"),
        ({"carbon_intensity": "-5"}, "carbon_intensity", "greater than or equal to 0"),
        ({"region": "atlantis"}, "region", "not a valid choice"),
    ],
)
def test_bad_data_centre_figures_are_field_errors_and_write_nothing(api, supplier, supplier_admin, h100, override, field, message):
    api.force_authenticate(supplier_admin)
    response = api.post("/api/v1/data-centres/", dc_payload(supplier, h100, **override))
    assert response.status_code == 400
    assert message in " ".join(response.json()[field])
    assert not DataCentre.objects.exists()
    assert not DeviceInventory.objects.exists() and not DataCentreLatency.objects.exists()


def test_negative_device_count_is_refused(api, supplier, supplier_admin, h100):
    api.force_authenticate(supplier_admin)
    response = api.post("/api/v1/data-centres/", dc_payload(supplier, h100, devices=[{"device_model": h100.pk, "count": -8}]))
    assert response.status_code == 400
    assert "greater than or equal to 0" in response.json()["devices"]["0"]["count"][0]
    assert not DataCentre.objects.exists()


def test_duplicate_device_lines_are_refused(api, supplier, supplier_admin, h100):
    api.force_authenticate(supplier_admin)
    lines = [{"device_model": h100.pk, "count": 1}, {"device_model": h100.pk, "count": 2}]
    response = api.post("/api/v1/data-centres/", dc_payload(supplier, h100, devices=lines))
    assert response.status_code == 400
    assert "appears twice" in response.json()["devices"][0]
    assert not DataCentre.objects.exists()


def test_data_centres_only_for_supplier_organisations_you_administer(api, supplier, h100):
    buyer = OrganisationFactory(kind="buyer")
    buyer_admin = member(buyer)
    api.force_authenticate(buyer_admin)
    response = api.post("/api/v1/data-centres/", dc_payload(buyer, h100))
    assert response.status_code == 400
    assert "supplier" in response.json()["owner"][0]
    response = api.post("/api/v1/data-centres/", dc_payload(supplier, h100))
    assert response.status_code == 400
    assert "administer" in response.json()["owner"][0]
    trader = member(supplier, role="trader")
    api.force_authenticate(trader)
    assert api.post("/api/v1/data-centres/", dc_payload(supplier, h100)).status_code == 400
    assert not DataCentre.objects.exists()


def test_a_supplier_edits_only_its_own_data_centres(api, supplier, supplier_admin, h100):
    dc = data_centre(supplier, {h100: 10})
    rival = OrganisationFactory(name="Rival")
    api.force_authenticate(member(rival))
    response = api.patch(f"/api/v1/data-centres/{dc.pk}/", {"pue": "1.10"})
    assert response.status_code == 403
    dc.refresh_from_db()
    assert dc.pue == Decimal("1.20")

    api.force_authenticate(supplier_admin)
    response = api.patch(f"/api/v1/data-centres/{dc.pk}/", {"pue": "1.10"})
    assert response.status_code == 200, response.json()
    dc.refresh_from_db()
    assert dc.pue == Decimal("1.10")
    assert dc.latencies.count() == 1 and dc.devices.get().count == 10  # untouched by a partial update

    response = api.patch(f"/api/v1/data-centres/{dc.pk}/", {"owner": rival.pk})
    assert response.status_code == 400


def test_regulator_reads_but_cannot_write(api, supplier, h100):
    dc = data_centre(supplier, {h100: 10})
    regulator = UserFactory(platform_role=PlatformRole.REGULATOR)
    api.force_authenticate(regulator)
    assert api.get("/api/v1/data-centres/").status_code == 200
    assert api.patch(f"/api/v1/data-centres/{dc.pk}/", {"pue": "1.10"}).status_code == 403
    assert api.post("/api/v1/data-centres/", dc_payload(supplier, h100)).status_code == 403
    assert api.post("/api/v1/organisations/", {"name": "x"}).status_code == 403


def test_data_centre_filters(api, supplier, h100):
    data_centre(supplier, {h100: 1}, name="Green", pue=Decimal("1.15"), renewable_share=Decimal("65"), region="ningxia_zhongwei")
    data_centre(supplier, {h100: 1}, name="City", pue=Decimal("1.30"), renewable_share=Decimal("20"))
    names = lambda params: [d["name"] for d in api.get("/api/v1/data-centres/", params).json()["results"]]  # noqa: E731
    assert names({"max_pue": "1.2"}) == ["Green"]
    assert names({"min_renewable_share": "50"}) == ["Green"]
    assert names({"region": "qingpu"}) == ["City"]
    assert names({"ordering": "pue"}) == ["Green", "City"]


def test_healthz_docs_and_schema_work_offline(api, client):
    assert client.get("/healthz").json() == {"status": "ok", "database": "ok"}
    schema = client.get("/api/schema/")
    assert schema.status_code == 200
    assert b"/api/v1/products/" in schema.content and b"/api/v1/inventory/" in schema.content
    docs = client.get("/api/docs/")
    assert docs.status_code == 200
    html = docs.content.decode()
    assert "/static/drf_spectacular_sidecar/swagger-ui-dist/" in html
    assert "cdn" not in html.lower() and "https://" not in html
    asset = client.get("/static/drf_spectacular_sidecar/swagger-ui-dist/swagger-ui-bundle.js")
    assert asset.status_code == 200
