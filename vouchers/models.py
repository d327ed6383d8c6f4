"""Compute vouchers (算力券): programmes, applications, vouchers and their redemptions against contracts.

Money lives in the ledger, in platform accounts of kind voucher_budget (never below zero):
  programme budget  "prog:<code>"              funded by the authority; approvals draw from it
  voucher           "voucher:<id>"             issued amount not yet committed to a contract
  committed         "voucher:<id>:committed"   shares committed to contracts, not yet paid to a supplier
A redemption commits a share S of a contract's value V (S moves voucher -> committed, and the same S goes
back from the buyer's escrow to its available funds, so the buyer holds only its own part). As metering
releases escrow to the supplier, floor(S x released / V) moves committed -> buyer escrow in the same
transaction, so the supplier is paid the full price. At settlement the unpaid share returns to the voucher.
"""

from __future__ import annotations

from django.db import models
from django.db.models import Q
from django.utils.translation import gettext_lazy as _

from exchange.models import Contract
from ledger.models import Account, JournalEntry
from marketplace.models import Organisation, SizeClass, User

BPS = 10_000


class Programme(models.Model):
    """A voucher programme and its rule set."""

    code = models.SlugField(max_length=40, unique=True)
    name = models.CharField(max_length=200)
    name_zh = models.CharField(max_length=200, blank=True)
    created_by = models.ForeignKey(User, on_delete=models.PROTECT, related_name="+")
    budget_account = models.OneToOneField(Account, on_delete=models.PROTECT, related_name="+")
    valid_from = models.DateTimeField()
    valid_until = models.DateTimeField()
    # Rates in basis points of contract value; the highest rate the buyer and the contract qualify for applies.
    rate_bps = models.PositiveIntegerField()
    domestic_rate_bps = models.PositiveIntegerField(null=True, blank=True, help_text="for compute on domestic chips")
    startup_rate_bps = models.PositiveIntegerField(null=True, blank=True, help_text="for organisations younger than startup_max_age_years")
    startup_max_age_years = models.PositiveSmallIntegerField(default=3)
    # Caps in fen.
    org_cap_per_year_fen = models.BigIntegerField(help_text="subsidy per organisation per calendar year")
    contract_cap_fen = models.BigIntegerField(null=True, blank=True, help_text="subsidy per contract")
    # Eligible organisations.
    eligible_size_classes = models.JSONField(default=list, help_text="empty: any size")
    max_org_age_years = models.PositiveSmallIntegerField(null=True, blank=True)
    eligible_regions = models.JSONField(default=list, help_text="registration region contains one of these; empty: any")
    research_institutions_eligible = models.BooleanField(default=True, help_text="research institutions qualify whatever their size")
    # Eligible products.
    eligible_chip_classes = models.JSONField(default=list, help_text="empty: any chip class")
    domestic_only = models.BooleanField(default=False)
    min_renewable_share = models.DecimalField(max_digits=5, decimal_places=2, default=0)
    # Unused balances of a voucher go back to the budget this many days after issuance (or at the programme's end).
    voucher_valid_days = models.PositiveIntegerField(default=365)
    round_trip_days = models.PositiveIntegerField(default=30, help_text="a reverse trade between the same pair this recent blocks the subsidy")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.CheckConstraint(condition=Q(valid_until__gt=models.F("valid_from")), name="programme_window"),
            models.CheckConstraint(condition=Q(rate_bps__gt=0, rate_bps__lte=BPS), name="programme_rate_bps"),
            models.CheckConstraint(condition=Q(domestic_rate_bps__isnull=True) | Q(domestic_rate_bps__lte=BPS), name="programme_domestic_rate_bps"),
            models.CheckConstraint(condition=Q(startup_rate_bps__isnull=True) | Q(startup_rate_bps__lte=BPS), name="programme_startup_rate_bps"),
            models.CheckConstraint(condition=Q(org_cap_per_year_fen__gt=0), name="programme_org_cap_positive"),
        ]

    def __str__(self) -> str:
        return self.name


class OrganisationProfile(models.Model):
    """What an organisation declares for subsidy checks: its group, officers and beneficial owners (ids or
    names as registered), and its industry. Kept here rather than on Organisation: only vouchers reads it."""

    organisation = models.OneToOneField(Organisation, on_delete=models.CASCADE, primary_key=True, related_name="voucher_profile")
    group_name = models.CharField(max_length=200, blank=True)
    officers = models.JSONField(default=list)
    beneficial_owners = models.JSONField(default=list)
    industry = models.CharField(max_length=100, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"profile of {self.organisation_id}"


class ApplicationStatus(models.TextChoices):
    PENDING = "pending", _("pending")
    APPROVED = "approved", _("approved")
    REJECTED = "rejected", _("rejected")


class Application(models.Model):
    programme = models.ForeignKey(Programme, on_delete=models.PROTECT, related_name="applications")
    organisation = models.ForeignKey(Organisation, on_delete=models.PROTECT, related_name="voucher_applications")
    applied_by = models.ForeignKey(User, on_delete=models.PROTECT, related_name="+")
    idempotency_key = models.CharField(max_length=100)
    credit_code = models.CharField(max_length=18)
    declared_size_class = models.CharField(max_length=8, choices=SizeClass.choices)
    industry = models.CharField(max_length=100, blank=True)
    requested_fen = models.BigIntegerField()
    eligibility = models.JSONField(default=list, help_text="[{check, passed, detail}] as run at application")
    eligible = models.BooleanField()
    status = models.CharField(max_length=10, choices=ApplicationStatus.choices, default=ApplicationStatus.PENDING)
    approved_fen = models.BigIntegerField(null=True, blank=True)
    reason = models.TextField(blank=True)
    decided_by = models.ForeignKey(User, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    decided_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(fields=["organisation", "idempotency_key"], name="application_idempotent"),
            models.UniqueConstraint(
                fields=["programme", "organisation"], condition=Q(status__in=["pending", "approved"]), name="application_one_live_per_programme",
            ),
            models.CheckConstraint(condition=Q(requested_fen__gt=0), name="application_requested_positive"),
        ]

    def __str__(self) -> str:
        return f"application {self.pk} ({self.status})"


class VoucherStatus(models.TextChoices):
    ACTIVE = "active", _("active")
    EXPIRED = "expired", _("expired")


class Voucher(models.Model):
    application = models.OneToOneField(Application, on_delete=models.PROTECT, related_name="voucher")
    programme = models.ForeignKey(Programme, on_delete=models.PROTECT, related_name="vouchers")
    organisation = models.ForeignKey(Organisation, on_delete=models.PROTECT, related_name="vouchers")
    account = models.OneToOneField(Account, on_delete=models.PROTECT, related_name="+")
    committed_account = models.OneToOneField(Account, on_delete=models.PROTECT, related_name="+")
    amount_fen = models.BigIntegerField()
    status = models.CharField(max_length=8, choices=VoucherStatus.choices, default=VoucherStatus.ACTIVE)
    issued_at = models.DateTimeField()
    expires_at = models.DateTimeField()
    returned_fen = models.BigIntegerField(default=0, help_text="unused balance returned to the budget after expiry")

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(fields=["programme", "organisation"], name="voucher_one_per_programme_org"),
            models.CheckConstraint(condition=Q(amount_fen__gt=0), name="voucher_amount_positive"),
        ]

    def __str__(self) -> str:
        return f"voucher {self.pk} of {self.organisation_id}"


class RedemptionStatus(models.TextChoices):
    COMMITTED = "committed", _("committed")
    SETTLED = "settled", _("settled")
    BLOCKED = "blocked", _("blocked")


class BlockReason(models.TextChoices):
    SELF_TRADE = "self_trade", _("buyer and supplier are the same organisation")
    RELATED_PARTY = "related_party", _("buyer and supplier are related parties")
    ROUND_TRIP = "round_trip", _("the same pair traded the other way recently")
    PRODUCT_NOT_ELIGIBLE = "product_not_eligible", _("the product is not eligible")
    OUTSIDE_VALIDITY = "outside_validity", _("the contract was traded outside the voucher's validity")
    ALREADY_SETTLED = "already_settled", _("the contract settled before the voucher could commit")
    CAP_REACHED = "cap_reached", _("the organisation's yearly cap is used up")
    VOUCHER_EMPTY = "voucher_empty", _("the voucher has no balance left")


class Redemption(models.Model):
    """A voucher's claim on one contract: one per contract, whatever the voucher (no double subsidy).
    Blocked claims are kept with their reason. committed = paid + released once settled."""

    voucher = models.ForeignKey(Voucher, on_delete=models.PROTECT, related_name="redemptions")
    contract = models.OneToOneField(Contract, on_delete=models.PROTECT, related_name="voucher_redemption")
    status = models.CharField(max_length=10, choices=RedemptionStatus.choices)
    reason = models.CharField(max_length=24, choices=BlockReason.choices, blank=True)
    detail = models.CharField(max_length=300, blank=True)
    value_fen = models.BigIntegerField()
    rate_bps = models.PositiveIntegerField(default=0)
    rate_kind = models.CharField(max_length=10, blank=True, help_text="base, domestic or startup")
    committed_fen = models.BigIntegerField(default=0)
    paid_fen = models.BigIntegerField(default=0, help_text="paid to the supplier as delivery was proven")
    released_fen = models.BigIntegerField(default=0, help_text="returned to the voucher at settlement")
    year = models.PositiveSmallIntegerField(help_text="calendar year the cap counts it in")
    flags = models.JSONField(default=list, blank=True, help_text="checks for an auditor, set at settlement (e.g. energy_mismatch)")
    entry = models.ForeignKey(JournalEntry, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    settled_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.CheckConstraint(
                condition=Q(paid_fen__gte=0, released_fen__gte=0, committed_fen__gte=models.F("paid_fen") + models.F("released_fen")),
                name="redemption_within_commitment",
            ),
            models.CheckConstraint(condition=Q(status="blocked") | Q(reason=""), name="redemption_reason_only_when_blocked"),
        ]
        indexes = [models.Index(fields=["voucher", "year"])]

    def __str__(self) -> str:
        return f"redemption of contract {self.contract_id} ({self.status})"
