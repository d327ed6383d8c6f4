"""Load a realistic demo market. Safe to run again: existing rows are kept, nothing is duplicated."""

from __future__ import annotations

import datetime as dt

from django.core.management.base import BaseCommand
from django.db import transaction
from django.utils import timezone

from marketplace import demo, services
from marketplace.models import (
    DataCentre,
    DeviceModel,
    Listing,
    MemberRole,
    Membership,
    Organisation,
    PlatformRole,
    Product,
    User,
)


class Command(BaseCommand):
    help = "Load the demo market (suppliers, data centres, products, instruments, buyers, platform users)."

    def add_arguments(self, parser):
        parser.add_argument(
            "--password",
            help=f"Set every demo user's password to this (default for new users: {demo.DEFAULT_PASSWORD!r}; "
            "existing users keep theirs unless this is given).",
        )

    def handle(self, *args, password: str | None = None, **options):
        with transaction.atomic():
            created = self._seed(password)
        roll = services.instruments_roll()
        self.stdout.write(
            f"Demo market ready: {created} new rows; instruments listed {roll['listed']}, opened {roll['opened']}, "
            f"closed {roll['closed']}. Demo users: supplier1-6, buyer1-6, authority, regulator, operator."
        )

    def _user(self, username: str, password: str | None, **extra) -> User:
        user, created = User.objects.get_or_create(username=username, defaults=extra)
        if created or password:
            user.set_password(password or demo.DEFAULT_PASSWORD)
            user.save(update_fields=["password"])
        self.created += created
        return user

    def _org(self, row: tuple, kind: str) -> tuple[User, Organisation]:
        username, name, name_zh, code, size, founded, region = row
        user = self._user(username, self.password, email=f"{username}@demo.suanli.example")
        org, created = Organisation.objects.get_or_create(
            credit_code=code,
            defaults=dict(name=name, name_zh=name_zh, kind=kind, size_class=size, founded_on=dt.date.fromisoformat(founded), registration_region=region),
        )
        if created:
            org.full_clean()
        self.created += created
        Membership.objects.get_or_create(user=user, organisation=org, defaults={"role": MemberRole.ADMIN})
        return user, org

    def _seed(self, password: str | None) -> int:
        self.created = 0
        self.password = password
        for role in (PlatformRole.OPERATOR, PlatformRole.REGULATOR, PlatformRole.AUTHORITY):
            extra = {"platform_role": role, "email": f"{role}@demo.suanli.example"}
            if role == PlatformRole.OPERATOR:
                extra |= {"is_staff": True, "is_superuser": True}
            self._user(str(role), password, **extra)

        models = {}
        for vendor, name, chip, domestic, fp16, fp32, fp64, mem, power in demo.DEVICE_MODELS:
            model, created = DeviceModel.objects.get_or_create(
                vendor=vendor, name=name,
                defaults=dict(chip_class=chip, is_domestic=domestic, fp16_tflops=fp16, fp32_tflops=fp32, fp64_tflops=fp64, memory_gb=mem, power_w=power),
            )
            models[name] = model
            self.created += created

        products = {}
        for spec in demo.PRODUCTS:
            spec = dict(spec)
            product, created = Product.objects.get_or_create(code=spec.pop("code"), defaults=spec)
            if created:
                product.full_clean()
            products[product.code] = product
            self.created += created

        centres = {}
        for row in demo.SUPPLIERS:
            _, org = self._org(row, "supplier")
            for name, region, pue, green, carbon, level, gbps, latencies, devices in demo.DATA_CENTRES[row[0]]:
                dc = DataCentre.objects.filter(owner=org, name=name).first()
                if dc is None:
                    dc = services.data_centre_save(
                        fields=dict(owner=org, name=name, region=region, pue=pue, renewable_share=green, carbon_intensity=carbon, security_level=level, interconnect_gbps=gbps),
                        latencies=[{"metro": m, "rtt_ms": ms} for m, ms in latencies.items()],
                        devices=[services.DeviceLine(device_model=models[m], count=n) for m, n in devices.items()],
                    )
                    self.created += 1
                centres[name] = dc
        for row in demo.BUYERS:
            self._org(row, "buyer")

        start = timezone.localtime().replace(hour=0, minute=0, second=0, microsecond=0)
        for _, dc_name, product_code, model_name, count in demo.LISTINGS:
            dc, product, model = centres[dc_name], products[product_code], models[model_name]
            if Listing.objects.filter(data_centre=dc, product=product, device_model=model, is_active=True).exists():
                continue
            services.listing_create(
                data_centre=dc, product=product, device_model=model, device_count=count,
                available_from=start, available_until=start + dt.timedelta(days=demo.LISTING_DAYS),
            )
            self.created += 1
        return self.created
