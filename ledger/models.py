"""The double-entry ledger. Every fen moves as a balanced journal entry between accounts.

Sign convention: a posting's amount is what it adds to the account's balance. A transfer of X from A to B
posts -X to A and +X to B, so every entry sums to zero and so does the sum over all accounts. Customer
accounts (available, held, escrow, receivable) are what the platform owes the organisation and never go
below zero; external accounts (a payment provider's clearing account) mirror money held outside and go
negative as money comes in.

The foreign keys of postings and holds say `db_constraint=False`: they are still enforced
by the database, once per statement rather than once per row (common.refchecks).
"""

from __future__ import annotations

from django.db import models
from django.db.models import Q
from django.utils.translation import gettext_lazy as _

from common.fields import KeyField
from marketplace.models import Organisation, User


class AccountKind(models.TextChoices):
    # An organisation's accounts.
    AVAILABLE = "available", _("available")
    HELD = "held", _("held for open orders and payouts")
    ESCROW = "escrow", _("escrow for traded contracts")
    RECEIVABLE = "receivable", _("receivable from delivered compute")
    # Platform accounts.
    FEES = "fees", _("platform fees")
    VOUCHER_BUDGET = "voucher_budget", _("voucher programme budget")
    PROVIDER_CLEARING = "provider_clearing", _("payment provider clearing")


ORGANISATION_KINDS = (AccountKind.AVAILABLE, AccountKind.HELD, AccountKind.ESCROW, AccountKind.RECEIVABLE)
# Accounts whose balance may never go below zero (the database enforces it too).
NON_NEGATIVE_KINDS = (*ORGANISATION_KINDS, AccountKind.FEES, AccountKind.VOUCHER_BUDGET)


class Account(models.Model):
    organisation = models.ForeignKey(Organisation, on_delete=models.PROTECT, null=True, blank=True, related_name="accounts")
    kind = models.CharField(max_length=20, choices=AccountKind.choices)
    # Platform accounts are told apart by name ("stripe", "bank", a voucher programme's code).
    name = models.CharField(max_length=64, blank=True, default="")
    # Cached sum of postings, updated in the posting transaction under this row's lock; ledger_verify checks it.
    balance_fen = models.BigIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(fields=["organisation", "kind"], condition=Q(organisation__isnull=False), name="account_one_per_org_kind"),
            models.UniqueConstraint(fields=["kind", "name"], condition=Q(organisation__isnull=True), name="account_platform_unique"),
            models.CheckConstraint(
                condition=~Q(kind__in=[k.value for k in NON_NEGATIVE_KINDS]) | Q(balance_fen__gte=0),
                name="account_balance_non_negative",
            ),
        ]

    def __str__(self) -> str:
        owner = self.organisation.name if self.organisation_id else "platform"
        return f"{owner}:{self.kind}{':' + self.name if self.name else ''}"


class EntryKind(models.TextChoices):
    TOP_UP = "top_up", _("top-up")
    HOLD = "hold", _("hold placed")
    RELEASE = "release", _("hold released")
    CAPTURE = "capture", _("hold captured")
    FEE = "fee", _("fee")
    TRANSFER = "transfer", _("transfer")
    SETTLEMENT = "settlement", _("settlement")
    PAYOUT = "payout", _("payout")
    REFUND = "refund", _("refund")
    VOUCHER = "voucher", _("voucher")
    REVERSAL = "reversal", _("reversal")


class JournalEntry(models.Model):
    """Immutable. Corrections are reversing entries; PostgreSQL refuses UPDATE and DELETE on this table."""

    # Unique through a constraint rather than unique=True: PostgreSQL then builds no extra LIKE index.
    idempotency_key = KeyField(max_length=200)
    # A digest of what the caller asked for: the same key with a different request is a conflict, not a replay.
    request_digest = models.CharField(max_length=64)
    kind = models.CharField(max_length=16, choices=EntryKind.choices)
    memo = models.CharField(max_length=300, blank=True)
    reference = KeyField(max_length=100, blank=True, help_text="e.g. order:123, trade:45")
    # Both NULL on nearly every entry (the matcher's): indexed, and the reversal kept unique, only where set,
    # since a NULL is an index entry too (bench/RESULTS.md, fifteenth session).
    reverses = models.ForeignKey("self", null=True, blank=True, on_delete=models.PROTECT, related_name="reversed_by", db_index=False)
    created_by = models.ForeignKey(User, null=True, blank=True, on_delete=models.PROTECT, related_name="+", db_index=False)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["id"]
        verbose_name_plural = "journal entries"
        constraints = [
            models.UniqueConstraint(fields=["idempotency_key"], name="journalentry_idempotency_key_unique"),
            models.UniqueConstraint(fields=["reverses"], condition=Q(reverses__isnull=False), name="journalentry_reversed_once"),
        ]
        indexes = [
            models.Index(fields=["reference"], name="journalentry_reference_idx"),
            models.Index(fields=["created_by"], condition=Q(created_by__isnull=False), name="journalentry_created_by"),
        ]

    def __str__(self) -> str:
        return f"#{self.pk} {self.kind} {self.memo}"


class Posting(models.Model):
    entry = models.ForeignKey(JournalEntry, on_delete=models.PROTECT, related_name="postings", db_constraint=False)
    # Indexed by (account, id) below, which also serves lookups by account alone.
    account = models.ForeignKey(Account, on_delete=models.PROTECT, related_name="postings", db_index=False, db_constraint=False)
    amount_fen = models.BigIntegerField()
    # The account's balance right after this posting: statements need no running sum.
    balance_after_fen = models.BigIntegerField()

    class Meta:
        ordering = ["id"]
        indexes = [models.Index(fields=["account", "id"])]
        constraints = [models.CheckConstraint(condition=~Q(amount_fen=0), name="posting_nonzero")]

    def __str__(self) -> str:
        return f"{self.account}: {self.amount_fen:+d}"


class HoldStatus(models.TextChoices):
    OPEN = "open", _("open")
    CLOSED = "closed", _("closed")


class Hold(models.Model):
    """Funds moved from available to held for a purpose (an order, a payout); later captured, released, or
    both in parts. remaining = amount - captured - released, and the held account's balance is the sum of
    the remaining amounts of an organisation's open holds."""

    organisation = models.ForeignKey(Organisation, on_delete=models.PROTECT, related_name="holds", db_constraint=False)
    # Unique through a constraint (below) rather than unique=True: PostgreSQL then builds no extra LIKE index.
    reference = KeyField(max_length=100, help_text="What the hold is for, e.g. order:123")
    amount_fen = models.BigIntegerField()
    captured_fen = models.BigIntegerField(default=0)
    released_fen = models.BigIntegerField(default=0)
    status = models.CharField(max_length=8, choices=HoldStatus.choices, default=HoldStatus.OPEN)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(fields=["reference"], name="hold_reference_unique"),
            models.CheckConstraint(condition=Q(amount_fen__gt=0), name="hold_positive"),
            models.CheckConstraint(
                condition=Q(captured_fen__gte=0, released_fen__gte=0, amount_fen__gte=models.F("captured_fen") + models.F("released_fen")),
                name="hold_not_overdrawn",
            ),
        ]

    def __str__(self) -> str:
        return f"hold {self.reference} {self.remaining_fen}/{self.amount_fen}"

    @property
    def remaining_fen(self) -> int:
        return self.amount_fen - self.captured_fen - self.released_fen


# --- Payments ------------------------------------------------------------------------------------------

class Provider(models.TextChoices):
    STRIPE = "stripe", _("Stripe")
    OFFLINE = "offline", _("bank transfer (offline)")


class TopUpStatus(models.TextChoices):
    PENDING = "pending", _("pending")
    SUCCEEDED = "succeeded", _("succeeded")
    FAILED = "failed", _("failed")
    CANCELLED = "cancelled", _("cancelled")
    REFUNDED = "refunded", _("refunded")


class TopUp(models.Model):
    """Money coming in. The wallet is credited only when the provider confirms the payment succeeded."""

    organisation = models.ForeignKey(Organisation, on_delete=models.PROTECT, related_name="top_ups")
    provider = models.CharField(max_length=16, choices=Provider.choices)
    amount_fen = models.BigIntegerField()
    refunded_fen = models.BigIntegerField(default=0)
    status = models.CharField(max_length=12, choices=TopUpStatus.choices, default=TopUpStatus.PENDING)
    idempotency_key = KeyField(max_length=200)
    provider_reference = models.CharField(max_length=255, blank=True, db_index=True, help_text="Checkout Session / PaymentIntent id or bank reference")
    payment_intent = models.CharField(max_length=255, blank=True, db_index=True)
    checkout_url = models.URLField(max_length=2000, blank=True)
    entry = models.OneToOneField(JournalEntry, null=True, blank=True, on_delete=models.PROTECT, related_name="top_up")
    requested_by = models.ForeignKey(User, null=True, on_delete=models.PROTECT, related_name="+")
    confirmed_by = models.ForeignKey(User, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-id"]
        constraints = [
            models.UniqueConstraint(fields=["organisation", "idempotency_key"], name="topup_idempotent"),
            models.CheckConstraint(condition=Q(amount_fen__gt=0), name="topup_positive"),
        ]

    def __str__(self) -> str:
        return f"top-up {self.pk} {self.amount_fen} fen {self.status}"


class PayoutStatus(models.TextChoices):
    REQUESTED = "requested", _("requested")
    PAID = "paid", _("paid")
    FAILED = "failed", _("failed")
    CANCELLED = "cancelled", _("cancelled")


class Payout(models.Model):
    """Money going out to a supplier. Requesting it holds the funds; paying captures the hold."""

    organisation = models.ForeignKey(Organisation, on_delete=models.PROTECT, related_name="payouts")
    provider = models.CharField(max_length=16, choices=Provider.choices)
    amount_fen = models.BigIntegerField()
    status = models.CharField(max_length=12, choices=PayoutStatus.choices, default=PayoutStatus.REQUESTED)
    idempotency_key = KeyField(max_length=200)
    hold = models.OneToOneField(Hold, on_delete=models.PROTECT, related_name="payout")
    destination = models.CharField(max_length=255, blank=True, help_text="Stripe connected account id or bank account")
    provider_reference = models.CharField(max_length=255, blank=True)
    failure_reason = models.CharField(max_length=300, blank=True)
    requested_by = models.ForeignKey(User, null=True, on_delete=models.PROTECT, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-id"]
        constraints = [
            models.UniqueConstraint(fields=["organisation", "idempotency_key"], name="payout_idempotent"),
            models.CheckConstraint(condition=Q(amount_fen__gt=0), name="payout_positive"),
        ]

    def __str__(self) -> str:
        return f"payout {self.pk} {self.amount_fen} fen {self.status}"


class ProviderEvent(models.Model):
    """Each webhook event is processed once: its id is unique."""

    provider = models.CharField(max_length=16, choices=Provider.choices)
    event_id = models.CharField(max_length=255)
    event_type = models.CharField(max_length=100)
    payload = models.JSONField()
    received_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["provider", "event_id"], name="provider_event_once")]

    def __str__(self) -> str:
        return f"{self.provider} {self.event_type} {self.event_id}"
