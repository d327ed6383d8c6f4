"""Factories for tests: valid, realistic objects with the fewest arguments."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import factory
from django.utils import timezone

from marketplace import services
from marketplace.models import (
    DataCentre,
    DeviceModel,
    MemberRole,
    Membership,
    Organisation,
    Product,
    User,
)
from marketplace.validators import CREDIT_CODE_ALPHABET, make_credit_code


def credit_code(n: int) -> str:
    body = "MA" + "".join(CREDIT_CODE_ALPHABET[(n // 31**i) % 31] for i in range(6))
    return make_credit_code("91310115", body)


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = User
        django_get_or_create = ("username",)
        skip_postgeneration_save = True

    username = factory.Sequence(lambda n: f"user{n}")
    @factory.post_generation
    def password(obj, create, extracted, **kwargs):
        obj.set_password(extracted or "pw-12345-x")
        if create:
            obj.save(update_fields=["password"])


class OrganisationFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Organisation

    name = factory.Sequence(lambda n: f"Org {n} Co., Ltd.")
    credit_code = factory.Sequence(credit_code)
    kind = "supplier"
    size_class = "small"
    founded_on = dt.date(2020, 1, 1)
    registration_region = "Shanghai Minhang"


def member(org: Organisation, role: str = MemberRole.ADMIN, **user_fields) -> User:
    user = UserFactory(**user_fields)
    Membership.objects.create(user=user, organisation=org, role=role)
    return user


class DeviceModelFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = DeviceModel
        django_get_or_create = ("vendor", "name")

    vendor = "NVIDIA"
    name = "H100 SXM"
    chip_class = "training"
    is_domestic = False
    fp16_tflops = Decimal("989")
    fp32_tflops = Decimal("67")
    fp64_tflops = Decimal("34")
    memory_gb = 80
    power_w = 700


def ascend() -> DeviceModel:
    return DeviceModelFactory(vendor="Huawei", name="Ascend 910B", is_domestic=True, fp16_tflops=Decimal("320"),
                              fp32_tflops=None, fp64_tflops=None, memory_gb=64, power_w=400)


def data_centre(owner: Organisation, devices: dict[DeviceModel, int] | None = None, latency_ms: str = "2.0", **fields) -> DataCentre:
    values = dict(owner=owner, name=f"DC {DataCentre.objects.count() + 1}", region="qingpu", pue=Decimal("1.20"),
                  renewable_share=Decimal("40"), carbon_intensity=Decimal("570"), security_level=3, interconnect_gbps=400)
    values.update(fields)
    return services.data_centre_save(
        fields=values,
        latencies=[{"metro": "shanghai", "rtt_ms": Decimal(latency_ms)}],
        devices=[services.DeviceLine(device_model=m, count=n) for m, n in (devices or {}).items()],
    )


class ProductFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Product

    code = factory.Sequence(lambda n: f"P{n}")
    name = factory.Sequence(lambda n: f"Product {n}")
    unit = "FP16_PFH"
    chip_class = "training"
    min_security_level = 3
    lot_size = Decimal("1")
    tick_size = Decimal("0.01")
    reference_price = Decimal("15.00")
    window = "day"


def window(days: int = 1) -> tuple[dt.datetime, dt.datetime]:
    start = timezone.localtime().replace(hour=0, minute=0, second=0, microsecond=0) + dt.timedelta(days=1)
    return start, start + dt.timedelta(days=days)
