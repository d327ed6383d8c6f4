"""Listings: capacity offered to a product, checked against grade and installed devices."""

import datetime as dt
import threading
from decimal import Decimal

import pytest

from marketplace import services
from marketplace.models import Listing, PlatformRole
from tests.factories import (
    DeviceModelFactory,
    OrganisationFactory,
    ProductFactory,
    UserFactory,
    ascend,
    data_centre,
    member,
    window,
)

pytestmark = pytest.mark.django_db


@pytest.fixture
def setup():
    supplier = OrganisationFactory(name="Qingpu Compute")
    h100 = DeviceModelFactory()
    dc = data_centre(supplier, {h100: 100}, latency_ms="1.8")
    product = ProductFactory(code="AI-TRAIN-SH", max_latency_ms=Decimal("5"), min_security_level=3)
    return supplier, h100, dc, product


def payload(dc, product, model, count, days=1, offset_days=0):
    start, end = window(days)
    start += dt.timedelta(days=offset_days)
    end += dt.timedelta(days=offset_days)
    return {"data_centre": dc.pk, "product": product.pk, "device_model": model.pk, "device_count": count,
            "available_from": start.isoformat(), "available_until": end.isoformat()}


def test_trader_lists_capacity_and_sees_its_standard_units(api, setup):
    supplier, h100, dc, product = setup
    api.force_authenticate(member(supplier, role="trader"))
    response = api.post("/api/v1/listings/", payload(dc, product, h100, 40))
    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["supplier"] == supplier.pk
    assert body["units_per_hour"] == "39.560000"  # 40 x 0.989 FP16 PFLOPS


def test_listing_over_capacity_is_refused_with_the_numbers(api, setup):
    supplier, h100, dc, product = setup
    api.force_authenticate(member(supplier))
    assert api.post("/api/v1/listings/", payload(dc, product, h100, 70)).status_code == 201
    response = api.post("/api/v1/listings/", payload(dc, product, h100, 31))
    assert response.status_code == 400
    assert response.json()["device_count"] == [
        f"Capacity exceeded: {dc.name} has 100 x NVIDIA H100 SXM, 70 already listed in this period, so at most 30 can be offered."
    ]
    assert Listing.objects.count() == 1
    # Another period is free; withdrawing frees capacity.
    assert api.post("/api/v1/listings/", payload(dc, product, h100, 100, offset_days=1)).status_code == 201
    first = Listing.objects.order_by("id").first()
    assert api.delete(f"/api/v1/listings/{first.pk}/").status_code == 204
    assert api.post("/api/v1/listings/", payload(dc, product, h100, 100)).status_code == 201


def test_capacity_counts_the_peak_of_overlapping_listings(setup):
    _, h100, dc, product = setup
    start, _ = window()
    hours = lambda a, b: (start + dt.timedelta(hours=a), start + dt.timedelta(hours=b))  # noqa: E731
    services.listing_create(data_centre=dc, product=product, device_model=h100, device_count=60, available_from=hours(0, 10)[0], available_until=hours(0, 10)[1])
    services.listing_create(data_centre=dc, product=product, device_model=h100, device_count=40, available_from=hours(10, 20)[0], available_until=hours(10, 20)[1])
    # Spans both: peak already listed is 60, so 40 fit.
    services.listing_create(data_centre=dc, product=product, device_model=h100, device_count=40, available_from=hours(5, 15)[0], available_until=hours(5, 15)[1])
    assert Listing.objects.count() == 3
    with pytest.raises(Exception) as excinfo:
        services.listing_create(data_centre=dc, product=product, device_model=h100, device_count=1, available_from=hours(9, 11)[0], available_until=hours(9, 11)[1])
    assert "at most 0" in str(excinfo.value)


@pytest.mark.parametrize(
    ("dc_fields", "product_fields", "reason"),
    [
        ({"pue": Decimal("1.40")}, {"max_pue": Decimal("1.25")}, "PUE 1.40 is above the product's maximum 1.25"),
        ({"renewable_share": Decimal("20")}, {"min_renewable_share": Decimal("50")}, "renewable share 20.00% is below the product's minimum 50.00%"),
        ({"security_level": 2}, {"min_security_level": 3}, "security level 2 is below the product's minimum 3"),
        ({}, {"max_latency_ms": Decimal("1.0")}, "latency to shanghai is 1.80 ms, above the product's maximum 1.00 ms"),
    ],
)
def test_listing_below_grade_names_the_failing_requirement(api, dc_fields, product_fields, reason):
    supplier = OrganisationFactory()
    h100 = DeviceModelFactory()
    dc = data_centre(supplier, {h100: 10}, latency_ms="1.8", **dc_fields)
    product = ProductFactory(**product_fields)
    api.force_authenticate(member(supplier))
    response = api.post("/api/v1/listings/", payload(dc, product, h100, 5))
    assert response.status_code == 400
    assert reason in response.json()["data_centre"][0]
    assert not Listing.objects.exists()


def test_listing_with_a_chip_the_product_excludes_is_refused(api):
    supplier = OrganisationFactory()
    npu = ascend()
    dc = data_centre(supplier, {npu: 10})
    fp32 = ProductFactory(unit="FP32_PFH", chip_class="")
    imported_only = ProductFactory(chip_class="inference")
    api.force_authenticate(member(supplier))
    response = api.post("/api/v1/listings/", payload(dc, fp32, npu, 5))
    assert response.status_code == 400
    assert "no rating at the product's precision" in response.json()["device_model"][0]
    response = api.post("/api/v1/listings/", payload(dc, imported_only, npu, 5))
    assert "requires inference" in response.json()["device_model"][0]
    h100 = DeviceModelFactory()
    data_centre(supplier, {h100: 10})
    domestic = ProductFactory(domestic_only=True, chip_class="")
    response = api.post("/api/v1/listings/", payload(dc, domestic, h100, 5))
    assert response.status_code == 400
    assert "not a domestic chip" in response.json()["device_model"][0]
    assert not Listing.objects.exists()


def test_listing_a_device_the_data_centre_does_not_hold_is_over_capacity(api, setup):
    supplier, _, dc, product = setup
    a100 = DeviceModelFactory(name="A100 SXM", fp16_tflops=Decimal("312"))
    api.force_authenticate(member(supplier))
    response = api.post("/api/v1/listings/", payload(dc, product, a100, 1))
    assert response.status_code == 400
    assert "has 0 x NVIDIA A100 SXM" in response.json()["device_count"][0]


def test_bad_listing_input(api, setup):
    supplier, h100, dc, product = setup
    api.force_authenticate(member(supplier))
    bad = payload(dc, product, h100, -3)
    assert "greater than or equal to 1" in api.post("/api/v1/listings/", bad).json()["device_count"][0]
    bad = payload(dc, product, h100, 3)
    bad["available_until"] = bad["available_from"]
    assert api.post("/api/v1/listings/", bad).json() == {"available_until": ["Must be after available_from."]}
    bad = payload(dc, product, h100, 3) | {"price": "12.00"}
    assert api.post("/api/v1/listings/", bad).json() == {"price": ["Unknown field."]}
    assert not Listing.objects.exists()


def test_listings_are_private_to_the_supplier_operators_and_regulators(api, setup):
    supplier, h100, dc, product = setup
    listing = services.listing_create(data_centre=dc, product=product, device_model=h100, device_count=5, available_from=window()[0], available_until=window()[1])
    rival = OrganisationFactory(name="Rival")
    rival_admin = member(rival)
    api.force_authenticate(rival_admin)
    assert api.get("/api/v1/listings/").json()["count"] == 0
    assert api.get(f"/api/v1/listings/{listing.pk}/").status_code == 404
    assert api.delete(f"/api/v1/listings/{listing.pk}/").status_code == 404
    # Nor may a rival list capacity in someone else's data centre.
    response = api.post("/api/v1/listings/", payload(dc, product, h100, 1))
    assert response.status_code == 400 and "your own organisation" in response.json()["data_centre"][0]

    viewer = member(supplier, role="viewer")
    api.force_authenticate(viewer)
    assert api.get(f"/api/v1/listings/{listing.pk}/").status_code == 200
    assert api.delete(f"/api/v1/listings/{listing.pk}/").status_code == 403

    regulator = UserFactory(platform_role=PlatformRole.REGULATOR)
    api.force_authenticate(regulator)
    assert api.get("/api/v1/listings/").json()["count"] == 1
    assert api.delete(f"/api/v1/listings/{listing.pk}/").status_code == 403
    listing.refresh_from_db()
    assert listing.is_active


def test_device_count_cannot_drop_below_what_is_listed(api, setup):
    supplier, h100, dc, product = setup
    services.listing_create(data_centre=dc, product=product, device_model=h100, device_count=80, available_from=window()[0], available_until=window()[1])
    api.force_authenticate(member(supplier))
    response = api.patch(f"/api/v1/data-centres/{dc.pk}/", {"devices": [{"device_model": h100.pk, "count": 50}]}, format="json")
    assert response.status_code == 400
    assert "offer 80 devices" in response.json()["devices"][0]
    assert dc.devices.get().count == 100


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_concurrent_listings_never_exceed_capacity():
    supplier = OrganisationFactory()
    h100 = DeviceModelFactory()
    dc = data_centre(supplier, {h100: 100})
    product = ProductFactory()
    start, end = window()
    barrier = threading.Barrier(8)
    outcomes = []

    def attempt():
        from django.db import connection as conn

        barrier.wait()
        try:
            services.listing_create(data_centre=dc, product=product, device_model=h100, device_count=30, available_from=start, available_until=end)
            outcomes.append("ok")
        except Exception as exc:
            outcomes.append(type(exc).__name__)
        finally:
            conn.close()

    threads = [threading.Thread(target=attempt) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes.count("ok") == 3
    assert outcomes.count("ValidationError") == 5
    assert sum(Listing.objects.values_list("device_count", flat=True)) == 90
