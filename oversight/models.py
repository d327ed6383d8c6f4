"""The regulator's records: the hash-chained audit log and its signed checkpoints, surveillance alerts and
their reviews, beneficial-owner groups, and data-deletion attestations at contract end."""

from __future__ import annotations

from django.db import models
from django.db.models import Q
from django.utils.translation import gettext_lazy as _

from exchange.models import Contract
from marketplace.models import Instrument, Organisation, User


class OwnershipGroup(models.Model):
    """Organisations with the same `group` share a beneficial owner: trades between them are wash trades.
    An organisation without a row is its own group. Maintained by operators (Django admin)."""

    organisation = models.OneToOneField(Organisation, on_delete=models.CASCADE, related_name="ownership_group")
    group = models.CharField(max_length=64, db_index=True, help_text="e.g. the ultimate parent's credit code")
    note = models.CharField(max_length=300, blank=True)

    def __str__(self) -> str:
        return f"{self.organisation} in {self.group}"


class AuditRecord(models.Model):
    """One append-only link of the chain. `payload` is canonical JSON text (sorted keys, no spaces), stored
    as text rather than jsonb so that the bytes hashed are exactly the bytes kept.
    hash = sha256(prev_hash || payload); the first record's prev_hash is 64 zeros."""

    seq = models.BigIntegerField(primary_key=True)
    kind = models.CharField(max_length=32)
    object_id = models.BigIntegerField()
    payload = models.TextField()
    prev_hash = models.CharField(max_length=64)
    hash = models.CharField(max_length=64)
    recorded_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["seq"]
        constraints = [models.UniqueConstraint(fields=["kind", "object_id"], name="auditrecord_once_per_object")]

    def __str__(self) -> str:
        return f"#{self.seq} {self.kind}:{self.object_id}"


class AuditCursor(models.Model):
    """Per source: every row with id <= safe_id is in the chain. Rows above it are looked up one by one
    (anti-join), so a transaction that commits a lower id late is still picked up."""

    source = models.CharField(max_length=32, primary_key=True)
    safe_id = models.BigIntegerField(default=0)

    def __str__(self) -> str:
        return f"{self.source} <= {self.safe_id}"


class AuditCheckpoint(models.Model):
    """The chain head at a moment, signed with the platform key (HMAC-SHA256 over "seq:hash:at")."""

    seq = models.BigIntegerField()
    hash = models.CharField(max_length=64)
    signed_at = models.DateTimeField()
    key_id = models.CharField(max_length=16)
    signature = models.CharField(max_length=64)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return f"checkpoint at #{self.seq}"


class AlertKind(models.TextChoices):
    WASH_TRADE = "wash_trade", _("wash trade")
    SPOOFING = "spoofing", _("spoofing / layering")
    OFF_REFERENCE_PRICE = "off_reference_price", _("price far from reference")
    DELIVERY_RATIO = "delivery_ratio", _("supplier delivery ratio falling")
    USAGE_MISMATCH = "usage_mismatch", _("energy does not match compute")
    VOUCHER_FARMING = "voucher_farming", _("round trips that farm vouchers")


class Severity(models.TextChoices):
    LOW = "low", _("low")
    MEDIUM = "medium", _("medium")
    HIGH = "high", _("high")


class AlertStatus(models.TextChoices):
    OPEN = "open", _("open")
    UNDER_REVIEW = "under_review", _("under review")
    CLOSED = "closed", _("closed")


class Alert(models.Model):
    """One occurrence of a surveillance pattern. `fingerprint` names the occurrence (e.g. the group, the
    instrument and the day), so a rescan finds the alert it raised before instead of raising another."""

    kind = models.CharField(max_length=24, choices=AlertKind.choices)
    severity = models.CharField(max_length=8, choices=Severity.choices)
    status = models.CharField(max_length=12, choices=AlertStatus.choices, default=AlertStatus.OPEN)
    fingerprint = models.CharField(max_length=200, unique=True)
    organisation = models.ForeignKey(Organisation, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    instrument = models.ForeignKey(Instrument, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    summary = models.CharField(max_length=300)
    evidence = models.JSONField(default=dict)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-id"]
        indexes = [models.Index(fields=["status", "kind"], name="alert_status_kind_idx")]

    def __str__(self) -> str:
        return f"alert {self.pk} {self.kind} {self.status}"


class AlertReview(models.Model):
    """One step of an alert's workflow. Immutable; each row enters the audit chain."""

    alert = models.ForeignKey(Alert, on_delete=models.PROTECT, related_name="reviews")
    actor = models.ForeignKey(User, on_delete=models.PROTECT, related_name="+")
    from_status = models.CharField(max_length=12, choices=AlertStatus.choices)
    to_status = models.CharField(max_length=12, choices=AlertStatus.choices)
    note = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return f"alert {self.alert_id}: {self.from_status} -> {self.to_status}"


class DeletionMethod(models.TextChoices):
    DELETED = "deleted", _("deleted")
    RETURNED = "returned", _("returned to the buyer")


class DeletionAttestation(models.Model):
    """At contract end the supplier attests that the buyer's data was deleted or returned."""

    contract = models.OneToOneField(Contract, on_delete=models.PROTECT, related_name="deletion_attestation")
    supplier = models.ForeignKey(Organisation, on_delete=models.PROTECT, related_name="+")
    method = models.CharField(max_length=8, choices=DeletionMethod.choices)
    note = models.TextField(blank=True)
    attested_by = models.ForeignKey(User, on_delete=models.PROTECT, related_name="+")
    attested_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        constraints = [models.CheckConstraint(condition=~Q(method=""), name="attestation_method_set")]

    def __str__(self) -> str:
        return f"contract {self.contract_id} data {self.method}"
