"""The compute catalogue: who trades, where compute lives, how it is measured, and what is traded."""

from __future__ import annotations

from decimal import Decimal

from django.contrib.auth.models import AbstractUser
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import Q
from django.utils.translation import gettext_lazy as _

from marketplace.regions import Metro, Region
from marketplace.units import TFLOPS_PER_PFLOPS, ComputeUnit, rating_tflops
from marketplace.validators import validate_credit_code

PERCENT = [MinValueValidator(Decimal("0")), MaxValueValidator(Decimal("100"))]
NON_NEGATIVE = [MinValueValidator(Decimal("0"))]


class PlatformRole(models.TextChoices):
    NONE = "", _("none")
    OPERATOR = "operator", _("operator")
    REGULATOR = "regulator", _("regulator")
    AUTHORITY = "authority", _("voucher authority")


class User(AbstractUser):
    """A person. What they may do comes from their platform role and their memberships."""

    platform_role = models.CharField(max_length=16, choices=PlatformRole.choices, blank=True, default="")

    @property
    def is_operator(self) -> bool:
        return self.platform_role == PlatformRole.OPERATOR or self.is_superuser

    @property
    def is_regulator(self) -> bool:
        return self.platform_role == PlatformRole.REGULATOR


class OrganisationKind(models.TextChoices):
    SUPPLIER = "supplier", _("supplier")
    BUYER = "buyer", _("buyer")
    BOTH = "both", _("supplier and buyer")


class SizeClass(models.TextChoices):
    """Enterprise size classes as used for SME eligibility (中小企业划型)."""

    MICRO = "micro", _("micro")
    SMALL = "small", _("small")
    MEDIUM = "medium", _("medium")
    LARGE = "large", _("large")


class Organisation(models.Model):
    name = models.CharField(max_length=200, unique=True)
    name_zh = models.CharField(max_length=200, blank=True)
    credit_code = models.CharField(
        _("unified social credit code"), max_length=18, unique=True, validators=[validate_credit_code]
    )
    kind = models.CharField(max_length=8, choices=OrganisationKind.choices)
    size_class = models.CharField(max_length=8, choices=SizeClass.choices)
    founded_on = models.DateField()
    registration_region = models.CharField(max_length=64, help_text="Where the organisation is registered, e.g. Shanghai Minhang.")
    is_research_institution = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)
    # A supplier's reputation, written by metering at each settlement (marketplace cannot import metering):
    # the share of contract value actually delivered over its contracts settled in the last 90 days.
    delivery_ratio = models.DecimalField(max_digits=5, decimal_places=4, null=True, blank=True)
    delivery_contracts = models.PositiveIntegerField(default=0, help_text="contracts behind delivery_ratio")

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    @property
    def is_supplier(self) -> bool:
        return self.kind in (OrganisationKind.SUPPLIER, OrganisationKind.BOTH)

    @property
    def is_buyer(self) -> bool:
        return self.kind in (OrganisationKind.BUYER, OrganisationKind.BOTH)

    @property
    def is_sme(self) -> bool:
        return self.size_class != SizeClass.LARGE


class MemberRole(models.TextChoices):
    ADMIN = "admin", _("admin")
    TRADER = "trader", _("trader")
    VIEWER = "viewer", _("viewer")


class Membership(models.Model):
    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="memberships")
    organisation = models.ForeignKey(Organisation, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=8, choices=MemberRole.choices)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["user", "organisation"], name="membership_unique")]

    def __str__(self) -> str:
        return f"{self.user} @ {self.organisation} ({self.role})"


class DataCentre(models.Model):
    owner = models.ForeignKey(Organisation, on_delete=models.PROTECT, related_name="data_centres")
    name = models.CharField(max_length=200)
    region = models.CharField(max_length=32, choices=Region.choices)
    pue = models.DecimalField(
        "PUE", max_digits=4, decimal_places=2, validators=[MinValueValidator(Decimal("1.00"), "PUE is total facility energy over IT energy, so it is at least 1.00.")]
    )
    renewable_share = models.DecimalField(
        _("renewable share (%)"), max_digits=5, decimal_places=2, validators=PERCENT
    )
    carbon_intensity = models.DecimalField(
        _("grid carbon intensity (gCO2/kWh)"), max_digits=7, decimal_places=2, validators=NON_NEGATIVE
    )
    security_level = models.PositiveSmallIntegerField(
        _("security protection level (等保)"), validators=[MinValueValidator(1), MaxValueValidator(5)]
    )
    interconnect_gbps = models.PositiveIntegerField(_("interconnect bandwidth (Gbit/s)"))
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(fields=["owner", "name"], name="datacentre_owner_name_unique"),
            models.CheckConstraint(condition=Q(pue__gte=1), name="datacentre_pue_at_least_1"),
            models.CheckConstraint(condition=Q(renewable_share__gte=0, renewable_share__lte=100), name="datacentre_renewable_share_percent"),
            models.CheckConstraint(condition=Q(security_level__gte=1, security_level__lte=5), name="datacentre_security_level_1_5"),
        ]

    def __str__(self) -> str:
        return self.name

    def latency_to(self, metro: str) -> Decimal | None:
        for link in self.latencies.all():
            if link.metro == metro:
                return link.rtt_ms
        return None


class DataCentreLatency(models.Model):
    """Measured network round trip from a data centre to a metro area."""

    data_centre = models.ForeignKey(DataCentre, on_delete=models.CASCADE, related_name="latencies")
    metro = models.CharField(max_length=16, choices=Metro.choices)
    rtt_ms = models.DecimalField(_("round trip (ms)"), max_digits=7, decimal_places=2, validators=NON_NEGATIVE)

    class Meta:
        ordering = ["metro"]
        constraints = [models.UniqueConstraint(fields=["data_centre", "metro"], name="latency_unique_metro")]

    def __str__(self) -> str:
        return f"{self.data_centre} -> {self.metro}: {self.rtt_ms} ms"


class ChipClass(models.TextChoices):
    TRAINING = "training", _("AI training accelerator")
    INFERENCE = "inference", _("AI inference accelerator")
    GENERAL = "general", _("general-purpose processor")


class DeviceModel(models.Model):
    vendor = models.CharField(max_length=64)
    name = models.CharField(max_length=64)
    chip_class = models.CharField(max_length=16, choices=ChipClass.choices)
    is_domestic = models.BooleanField(_("domestic chip (国产)"))
    fp16_tflops = models.DecimalField(max_digits=8, decimal_places=2, null=True, blank=True, validators=NON_NEGATIVE)
    fp32_tflops = models.DecimalField(max_digits=8, decimal_places=2, null=True, blank=True, validators=NON_NEGATIVE)
    fp64_tflops = models.DecimalField(max_digits=8, decimal_places=2, null=True, blank=True, validators=NON_NEGATIVE)
    memory_gb = models.PositiveIntegerField()
    power_w = models.PositiveIntegerField()

    class Meta:
        ordering = ["vendor", "name"]
        constraints = [models.UniqueConstraint(fields=["vendor", "name"], name="devicemodel_vendor_name_unique")]

    def __str__(self) -> str:
        return f"{self.vendor} {self.name}"

    def pflops(self, unit: str) -> Decimal:
        """One device's rate in PFLOPS at the unit's precision (0 where unrated)."""
        rating = rating_tflops(self, unit)
        return rating / TFLOPS_PER_PFLOPS if rating else Decimal(0)


class DeviceInventory(models.Model):
    """How many devices of a model a data centre holds."""

    data_centre = models.ForeignKey(DataCentre, on_delete=models.CASCADE, related_name="devices")
    device_model = models.ForeignKey(DeviceModel, on_delete=models.PROTECT, related_name="installations")
    count = models.PositiveIntegerField()

    class Meta:
        ordering = ["data_centre_id", "device_model_id"]
        constraints = [models.UniqueConstraint(fields=["data_centre", "device_model"], name="inventory_unique_model")]

    def __str__(self) -> str:
        return f"{self.count} x {self.device_model} in {self.data_centre}"


class WindowKind(models.TextChoices):
    HOUR = "hour", _("hour")
    DAY = "day", _("day")


class Product(models.Model):
    """A graded class of capacity. Anything that meets the grade is the same product to a buyer."""

    code = models.SlugField(max_length=32, unique=True)
    name = models.CharField(max_length=120)
    name_zh = models.CharField(max_length=120, blank=True)
    unit = models.CharField(max_length=16, choices=ComputeUnit.choices)
    # Grade. Empty/null means "no requirement".
    chip_class = models.CharField(max_length=16, choices=ChipClass.choices, blank=True)
    domestic_only = models.BooleanField(default=False)
    latency_metro = models.CharField(max_length=16, choices=Metro.choices, default=Metro.SHANGHAI)
    max_latency_ms = models.DecimalField(max_digits=7, decimal_places=2, null=True, blank=True, validators=NON_NEGATIVE)
    min_renewable_share = models.DecimalField(max_digits=5, decimal_places=2, default=Decimal("0"), validators=PERCENT)
    max_pue = models.DecimalField(max_digits=4, decimal_places=2, null=True, blank=True, validators=[MinValueValidator(Decimal("1.00"))])
    min_security_level = models.PositiveSmallIntegerField(default=1, validators=[MinValueValidator(1), MaxValueValidator(5)])
    # Trading rules. Prices are CNY per standard unit; quantities are whole lots.
    lot_size = models.DecimalField(_("units per lot"), max_digits=12, decimal_places=6, validators=[MinValueValidator(Decimal("0.000001"))])
    tick_size = models.DecimalField(_("tick (CNY per unit)"), max_digits=10, decimal_places=2, validators=[MinValueValidator(Decimal("0.01"))])
    min_order_lots = models.PositiveIntegerField(default=1, validators=[MinValueValidator(1)])
    max_order_lots = models.PositiveIntegerField(default=100000, validators=[MinValueValidator(1)])
    reference_price = models.DecimalField(_("reference price (CNY per unit)"), max_digits=12, decimal_places=2, validators=[MinValueValidator(Decimal("0.01"))])
    price_band_bps = models.PositiveIntegerField(_("price band (basis points either side of reference)"), default=1000, validators=[MinValueValidator(1), MaxValueValidator(10000)])
    maker_fee_bps = models.PositiveIntegerField(default=5, validators=[MaxValueValidator(1000)])
    taker_fee_bps = models.PositiveIntegerField(default=10, validators=[MaxValueValidator(1000)])
    # Listing schedule.
    window = models.CharField(max_length=8, choices=WindowKind.choices, default=WindowKind.DAY)
    list_ahead_days = models.PositiveIntegerField(default=7, validators=[MinValueValidator(1), MaxValueValidator(60)])
    gate_closure_minutes = models.PositiveIntegerField(_("gate closure (minutes before delivery)"), default=60)
    is_active = models.BooleanField(default=True)

    class Meta:
        ordering = ["code"]
        constraints = [
            models.CheckConstraint(condition=Q(max_order_lots__gte=models.F("min_order_lots")), name="product_order_size_range"),
        ]

    def __str__(self) -> str:
        return self.code

    def clean(self) -> None:
        problem = tick_lot_problem(self.tick_size, self.lot_size)
        if problem:
            raise ValidationError({"tick_size": [problem]})

    def grade_failures(self, data_centre: DataCentre) -> list[str]:
        """Why a data centre does not meet this product's grade; empty when it does."""
        reasons = []
        if self.max_pue is not None and data_centre.pue > self.max_pue:
            reasons.append(f"PUE {data_centre.pue} is above the product's maximum {self.max_pue}")
        if data_centre.renewable_share < self.min_renewable_share:
            reasons.append(f"renewable share {data_centre.renewable_share}% is below the product's minimum {self.min_renewable_share}%")
        if data_centre.security_level < self.min_security_level:
            reasons.append(f"security level {data_centre.security_level} is below the product's minimum {self.min_security_level}")
        if self.max_latency_ms is not None:
            rtt = data_centre.latency_to(self.latency_metro)
            if rtt is None:
                reasons.append(f"no measured latency to {self.latency_metro}; the product requires at most {self.max_latency_ms} ms")
            elif rtt > self.max_latency_ms:
                reasons.append(f"latency to {self.latency_metro} is {rtt} ms, above the product's maximum {self.max_latency_ms} ms")
        return reasons

    def device_failures(self, device_model: DeviceModel) -> list[str]:
        """Why a device model cannot deliver this product; empty when it can."""
        reasons = []
        if self.chip_class and device_model.chip_class != self.chip_class:
            reasons.append(f"{device_model} is a {device_model.chip_class} chip; the product requires {self.chip_class}")
        if self.domestic_only and not device_model.is_domestic:
            reasons.append(f"{device_model} is not a domestic chip; the product is domestic-only")
        if not rating_tflops(device_model, self.unit):
            reasons.append(f"{device_model} has no rating at the product's precision ({self.unit})")
        return reasons


def tick_lot_problem(tick_size: Decimal | None, lot_size: Decimal | None) -> str | None:
    """Every order's value must be whole fen, so one tick on one lot must be a whole number of fen."""
    if tick_size is None or lot_size is None:
        return None
    fen = tick_size * lot_size * 100
    if fen != fen.to_integral_value():
        def plain(d: Decimal) -> str:
            return format(d.normalize(), "f")

        return (
            f"One tick ({plain(tick_size)} CNY) on one lot ({plain(lot_size)} units) is {plain(fen)} fen; "
            "it must be a whole number of fen."
        )
    return None


class InstrumentStatus(models.TextChoices):
    SCHEDULED = "scheduled", _("scheduled")
    OPEN = "open", _("open")
    HALTED = "halted", _("halted")
    CLOSED = "closed", _("closed")
    SETTLED = "settled", _("settled")


class Instrument(models.Model):
    """A product for one delivery window. Trading rules are copied from the product at listing so that a
    later product change never alters an instrument people already trade."""

    product = models.ForeignKey(Product, on_delete=models.PROTECT, related_name="instruments")
    code = models.CharField(max_length=64, unique=True)
    status = models.CharField(max_length=10, choices=InstrumentStatus.choices, default=InstrumentStatus.SCHEDULED)
    delivery_start = models.DateTimeField()
    delivery_end = models.DateTimeField()
    opens_at = models.DateTimeField()
    gate_closure = models.DateTimeField()
    tick_size = models.DecimalField(max_digits=10, decimal_places=2)
    lot_size = models.DecimalField(max_digits=12, decimal_places=6)
    min_order_lots = models.PositiveIntegerField()
    max_order_lots = models.PositiveIntegerField()
    reference_price = models.DecimalField(max_digits=12, decimal_places=2)
    price_band_bps = models.PositiveIntegerField()
    maker_fee_bps = models.PositiveIntegerField()
    taker_fee_bps = models.PositiveIntegerField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["delivery_start", "product_id"]
        constraints = [
            models.UniqueConstraint(fields=["product", "delivery_start"], name="instrument_product_window_unique"),
            models.CheckConstraint(condition=Q(delivery_end__gt=models.F("delivery_start")), name="instrument_window_positive"),
            models.CheckConstraint(condition=Q(gate_closure__lte=models.F("delivery_start")), name="instrument_gate_before_delivery"),
        ]
        indexes = [models.Index(fields=["status", "gate_closure"])]

    def __str__(self) -> str:
        return self.code

    @property
    def tick_fen_per_lot(self) -> int:
        """The tick in the engine's integer price unit: fen per lot."""
        return int(self.tick_size * self.lot_size * 100)

    def price_to_fen_per_lot(self, price: Decimal) -> int | None:
        """A CNY-per-unit price in fen per lot, or None if it is not a whole number of fen per lot."""
        fen = price * self.lot_size * 100
        return int(fen) if fen == fen.to_integral_value() else None

    def fen_per_lot_to_price(self, fen: int | None) -> Decimal | None:
        """Fen per lot back to CNY per unit, to the tick's decimal places."""
        if fen is None:
            return None
        return (Decimal(fen) / 100 / self.lot_size).quantize(self.tick_size)

    @property
    def window_hours(self) -> Decimal:
        return Decimal((self.delivery_end - self.delivery_start).total_seconds()) / 3600


class Listing(models.Model):
    """A supplier's devices in one data centre offered to one product over a range of delivery windows."""

    supplier = models.ForeignKey(Organisation, on_delete=models.PROTECT, related_name="listings")
    data_centre = models.ForeignKey(DataCentre, on_delete=models.PROTECT, related_name="listings")
    product = models.ForeignKey(Product, on_delete=models.PROTECT, related_name="listings")
    device_model = models.ForeignKey(DeviceModel, on_delete=models.PROTECT, related_name="listings")
    device_count = models.PositiveIntegerField(validators=[MinValueValidator(1)])
    available_from = models.DateTimeField()
    available_until = models.DateTimeField()
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.CheckConstraint(condition=Q(available_until__gt=models.F("available_from")), name="listing_range_positive"),
            models.CheckConstraint(condition=Q(device_count__gte=1), name="listing_device_count_positive"),
        ]

    def __str__(self) -> str:
        return f"{self.supplier}: {self.device_count} x {self.device_model} for {self.product}"

    @property
    def units_per_hour(self) -> Decimal:
        """Standard units of the product this listing can deliver in one hour."""
        return self.device_count * self.device_model.pflops(self.product.unit)
