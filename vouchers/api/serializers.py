from __future__ import annotations

from decimal import Decimal

from rest_framework import serializers

from common.api import StrictFieldsMixin
from marketplace.models import ChipClass, SizeClass
from vouchers.models import Application, Programme, Redemption, Voucher

AMOUNT = {"max_digits": 14, "decimal_places": 2, "min_value": Decimal("0.01")}
BPS = {"min_value": 1, "max_value": 10_000}


class ProgrammeSerializer(serializers.ModelSerializer):
    budget_balance_fen = serializers.IntegerField(source="budget_account.balance_fen", read_only=True)

    class Meta:
        model = Programme
        fields = ["id", "code", "name", "name_zh", "valid_from", "valid_until", "rate_bps", "domestic_rate_bps", "startup_rate_bps",
                  "startup_max_age_years", "org_cap_per_year_fen", "contract_cap_fen", "eligible_size_classes", "max_org_age_years",
                  "eligible_regions", "research_institutions_eligible", "eligible_chip_classes", "domestic_only", "min_renewable_share",
                  "voucher_valid_days", "round_trip_days", "budget_balance_fen"]


class ProgrammeCreateSerializer(StrictFieldsMixin, serializers.Serializer):
    code = serializers.SlugField(max_length=40)
    name = serializers.CharField(max_length=200)
    name_zh = serializers.CharField(max_length=200, required=False, default="")
    valid_from = serializers.DateTimeField()
    valid_until = serializers.DateTimeField()
    rate_bps = serializers.IntegerField(**BPS)
    domestic_rate_bps = serializers.IntegerField(required=False, allow_null=True, **BPS)
    startup_rate_bps = serializers.IntegerField(required=False, allow_null=True, **BPS)
    startup_max_age_years = serializers.IntegerField(required=False, min_value=0, max_value=50)
    org_cap_per_year = serializers.DecimalField(**AMOUNT)
    contract_cap = serializers.DecimalField(required=False, allow_null=True, **AMOUNT)
    eligible_size_classes = serializers.ListField(child=serializers.ChoiceField(choices=SizeClass.choices), required=False)
    max_org_age_years = serializers.IntegerField(required=False, allow_null=True, min_value=0, max_value=200)
    eligible_regions = serializers.ListField(child=serializers.CharField(max_length=64), required=False)
    research_institutions_eligible = serializers.BooleanField(required=False)
    eligible_chip_classes = serializers.ListField(child=serializers.ChoiceField(choices=ChipClass.choices), required=False)
    domestic_only = serializers.BooleanField(required=False)
    min_renewable_share = serializers.DecimalField(max_digits=5, decimal_places=2, min_value=Decimal(0), max_value=Decimal(100), required=False)
    voucher_valid_days = serializers.IntegerField(required=False, min_value=1, max_value=3650)
    round_trip_days = serializers.IntegerField(required=False, min_value=0, max_value=3650)


class FundSerializer(StrictFieldsMixin, serializers.Serializer):
    amount = serializers.DecimalField(**AMOUNT)
    idempotency_key = serializers.CharField(max_length=100)


class ProfileSerializer(StrictFieldsMixin, serializers.Serializer):
    organisation = serializers.IntegerField(min_value=1)
    group_name = serializers.CharField(max_length=200, required=False, allow_blank=True, default="")
    officers = serializers.ListField(child=serializers.CharField(max_length=100), required=False, default=list, max_length=100)
    beneficial_owners = serializers.ListField(child=serializers.CharField(max_length=100), required=False, default=list, max_length=100)
    industry = serializers.CharField(max_length=100, required=False, allow_blank=True, default="")


class ApplicationInSerializer(StrictFieldsMixin, serializers.Serializer):
    programme = serializers.IntegerField(min_value=1)
    organisation = serializers.IntegerField(min_value=1)
    credit_code = serializers.CharField(max_length=18)
    declared_size_class = serializers.ChoiceField(choices=SizeClass.choices)
    requested_amount = serializers.DecimalField(**AMOUNT)
    industry = serializers.CharField(max_length=100, required=False, allow_blank=True, default="")
    idempotency_key = serializers.CharField(max_length=100)


class ApplicationSerializer(serializers.ModelSerializer):
    programme_code = serializers.CharField(source="programme.code", read_only=True)
    organisation_name = serializers.CharField(source="organisation.name", read_only=True)

    class Meta:
        model = Application
        fields = ["id", "programme", "programme_code", "organisation", "organisation_name", "credit_code", "declared_size_class", "industry",
                  "requested_fen", "eligibility", "eligible", "status", "approved_fen", "reason", "decided_at", "created_at"]


class ApproveSerializer(StrictFieldsMixin, serializers.Serializer):
    amount = serializers.DecimalField(required=False, **AMOUNT)


class RejectSerializer(StrictFieldsMixin, serializers.Serializer):
    reason = serializers.CharField(max_length=4000)


class VoucherSerializer(serializers.ModelSerializer):
    programme_code = serializers.CharField(source="programme.code", read_only=True)
    organisation_name = serializers.CharField(source="organisation.name", read_only=True)
    balance_fen = serializers.IntegerField(source="account.balance_fen", read_only=True)
    committed_fen = serializers.IntegerField(source="committed_account.balance_fen", read_only=True)

    class Meta:
        model = Voucher
        fields = ["id", "programme", "programme_code", "organisation", "organisation_name", "amount_fen", "balance_fen", "committed_fen",
                  "status", "issued_at", "expires_at", "returned_fen"]


class RedemptionSerializer(serializers.ModelSerializer):
    programme_code = serializers.CharField(source="voucher.programme.code", read_only=True)
    supplier = serializers.CharField(source="contract.seller.name", read_only=True)

    class Meta:
        model = Redemption
        fields = ["id", "voucher", "programme_code", "contract", "supplier", "status", "reason", "detail", "value_fen", "rate_bps", "rate_kind",
                  "committed_fen", "paid_fen", "released_fen", "year", "flags", "created_at", "settled_at"]
