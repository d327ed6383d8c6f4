"""Metering: usage events proving delivery of a contract, the contract's delivery state, and disputes.

Quantities are integer *micro standard units* (1e-6 PFLOPS-hour at the product's precision), so sums and
caps are exact: one event of n devices rated R TFLOPS (two decimals, R_c = 100 R) running t microseconds is
floor(n * t * R_c / 360_000_000) micro-units (R * n * hours / 1000 PFLOPS-hours, rounded down once per
event). A contract's quantity is lots x lot size (six decimals), also a whole number of micro-units.
"""

from __future__ import annotations

from django.db import models
from django.db.models import F, Q
from django.utils.translation import gettext_lazy as _

from exchange.models import Contract
from ledger.models import JournalEntry
from marketplace.models import DataCentre, DeviceModel, Organisation, User

MICRO = 1_000_000


class DeliveryStatus(models.TextChoices):
    OPEN = "open", _("awaiting delivery")
    DELIVERING = "delivering", _("delivering")
    SETTLED = "settled", _("settled")
    DISPUTED = "disputed", _("disputed")


class ContractDelivery(models.Model):
    """A contract's delivery state. Contracts are bulk-created by the matcher, so this row is created
    lazily (first metered event, settlement sweep, dispute); it copies the contract's quantity and money
    so the hot path and the check constraints need no join.

    Money (integer fen, rounded down, path-independent): with value V, seller fee F, quantity Q and
    delivered D (capped at Q), released(D) = V * D // Q leaves the buyer's escrow; of it the platform
    takes fee(D) = F * released // V and the supplier gets the rest. At window end plus grace the buyer
    gets refunded = V - released, so released + refunded = V exactly."""

    contract = models.OneToOneField(Contract, on_delete=models.PROTECT, primary_key=True, related_name="delivery")
    status = models.CharField(max_length=10, choices=DeliveryStatus.choices, default=DeliveryStatus.OPEN)
    quantity_micro = models.BigIntegerField()
    value_fen = models.BigIntegerField()
    seller_fee_fen = models.BigIntegerField()
    delivered_micro = models.BigIntegerField(default=0)
    events = models.PositiveIntegerField(default=0)
    released_fen = models.BigIntegerField(default=0, help_text="out of escrow, to the supplier and fees")
    fee_fen = models.BigIntegerField(default=0, help_text="seller fee taken from released value")
    refunded_fen = models.BigIntegerField(default=0)
    delivery_ratio = models.DecimalField(max_digits=5, decimal_places=4, null=True, blank=True)
    settled_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["contract_id"]
        verbose_name_plural = "contract deliveries"
        constraints = [
            models.CheckConstraint(condition=Q(delivered_micro__gte=0, delivered_micro__lte=F("quantity_micro")), name="delivery_within_quantity"),
            models.CheckConstraint(condition=Q(released_fen__gte=0, refunded_fen__gte=0), name="delivery_money_non_negative"),
            models.CheckConstraint(condition=Q(released_fen__lte=F("value_fen") - F("refunded_fen")), name="delivery_within_value"),
            models.CheckConstraint(condition=Q(fee_fen__gte=0, fee_fen__lte=F("released_fen")), name="delivery_fee_within_released"),
        ]
        indexes = [models.Index(fields=["status"])]

    def __str__(self) -> str:
        return f"delivery of contract {self.contract_id}: {self.status}"


class UsageEvent(models.Model):
    """One accepted usage record. Rejected events are answered, not stored, so a supplier can resend a
    corrected event under the same id. Foreign keys other than the contract carry no database constraint:
    the ingest path checks them against the contract in bulk, and per-row FK triggers would cost more than
    the insert itself (bench/RESULTS.md, metering). Only the contract is indexed (the unique key serves the
    supplier): every index is paid on each of 10,000 inserts per batch."""

    supplier = models.ForeignKey(Organisation, on_delete=models.DO_NOTHING, db_constraint=False, db_index=False, related_name="+")
    event_id = models.CharField(max_length=100)
    contract = models.ForeignKey(Contract, on_delete=models.PROTECT, db_constraint=False, related_name="usage_events")
    data_centre = models.ForeignKey(DataCentre, on_delete=models.DO_NOTHING, db_constraint=False, db_index=False, related_name="+")
    device_model = models.ForeignKey(DeviceModel, on_delete=models.DO_NOTHING, db_constraint=False, db_index=False, related_name="+")
    started_at = models.DateTimeField()
    ended_at = models.DateTimeField()
    device_count = models.PositiveIntegerField()
    device_seconds = models.BigIntegerField()
    units_micro = models.BigIntegerField(help_text="rated standard units, micro")
    credited_micro = models.BigIntegerField(help_text="units counted towards the contract (capped at its quantity)")
    energy_kwh = models.DecimalField(max_digits=14, decimal_places=3, help_text="IT energy; estimated from rated power when not metered")
    energy_estimated = models.BooleanField(default=False)
    utilisation_pct = models.DecimalField(max_digits=5, decimal_places=2, null=True, blank=True)
    received_at = models.DateTimeField()

    class Meta:
        ordering = ["id"]
        constraints = [models.UniqueConstraint(fields=["supplier", "event_id"], name="usage_event_supplier_id_unique")]

    def __str__(self) -> str:
        return f"usage {self.event_id} on contract {self.contract_id}"


class DisputeStatus(models.TextChoices):
    OPEN = "open", _("open")
    RESOLVED = "resolved", _("resolved")


class Dispute(models.Model):
    """A buyer's challenge of a contract's metering, resolved by an operator with an adjustment entry."""

    contract = models.ForeignKey(Contract, on_delete=models.PROTECT, related_name="disputes")
    status = models.CharField(max_length=10, choices=DisputeStatus.choices, default=DisputeStatus.OPEN)
    reason = models.TextField()
    opened_by = models.ForeignKey(User, on_delete=models.PROTECT, related_name="+")
    opened_at = models.DateTimeField(auto_now_add=True)
    delivered_before_micro = models.BigIntegerField()
    delivered_after_micro = models.BigIntegerField(null=True, blank=True)
    resolution = models.TextField(blank=True)
    resolved_by = models.ForeignKey(User, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    resolved_at = models.DateTimeField(null=True, blank=True)
    entry = models.ForeignKey(JournalEntry, null=True, blank=True, on_delete=models.PROTECT, related_name="+")

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(fields=["contract"], condition=Q(status="open"), name="dispute_one_open_per_contract"),
        ]

    def __str__(self) -> str:
        return f"dispute {self.pk} on contract {self.contract_id} ({self.status})"
