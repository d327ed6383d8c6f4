"""Payment API input and output. Amounts are CNY decimal strings with at most two places; the API also shows
integer fen next to each."""

from __future__ import annotations

from decimal import Decimal

from rest_framework import serializers

from common.api import StrictFieldsMixin
from common.money import cny_to_fen
from ledger.api.serializers import CnyFromFenField
from ledger.models import Payout, Provider, TopUp


class CnyAmountField(serializers.DecimalField):
    """A positive CNY amount with at most two decimal places, returned as integer fen."""

    default_error_messages = {"positive": 'Must be a positive amount in CNY, e.g. "100.00".'}

    def __init__(self, **kwargs):
        super().__init__(max_digits=14, decimal_places=2, **kwargs)

    def to_internal_value(self, data) -> int:  # type: ignore[override]
        value: Decimal = super().to_internal_value(data)
        if value <= 0:
            self.fail("positive")
        return cny_to_fen(value)


class TopUpCreateSerializer(StrictFieldsMixin, serializers.Serializer):
    amount = CnyAmountField()
    provider = serializers.ChoiceField(choices=Provider.choices, required=False)
    organisation = serializers.IntegerField(required=False, min_value=1)
    bank_reference = serializers.CharField(required=False, allow_blank=True, max_length=255,
                                           help_text="Offline only: the reference of your bank transfer.")

    def validate(self, attrs: dict) -> dict:
        if attrs.get("bank_reference") and attrs.get("provider") == Provider.STRIPE:
            raise serializers.ValidationError({"bank_reference": ["Only for bank transfers (provider offline)."]})
        return attrs


class RefundSerializer(StrictFieldsMixin, serializers.Serializer):
    amount = CnyAmountField(required=False, help_text="Default: all that has not been refunded yet.")


class EmptySerializer(StrictFieldsMixin, serializers.Serializer):
    pass


class PayoutCreateSerializer(StrictFieldsMixin, serializers.Serializer):
    amount = CnyAmountField()
    destination = serializers.CharField(max_length=255, help_text="Stripe connected account id (acct_...) or bank account.")
    provider = serializers.ChoiceField(choices=Provider.choices, required=False)
    organisation = serializers.IntegerField(required=False, min_value=1)


class PayoutPaySerializer(StrictFieldsMixin, serializers.Serializer):
    reference = serializers.CharField(required=False, allow_blank=True, max_length=255, help_text="The bank's transfer reference.")


class PayoutFailSerializer(StrictFieldsMixin, serializers.Serializer):
    reason = serializers.CharField(required=False, allow_blank=True, max_length=300)


class TopUpSerializer(serializers.ModelSerializer):
    amount = CnyFromFenField(source="amount_fen")
    refunded = CnyFromFenField(source="refunded_fen")
    organisation_name = serializers.CharField(source="organisation.name", read_only=True)
    checkout_url = serializers.CharField(read_only=True, help_text="The card checkout page; empty for bank transfers.")

    class Meta:
        model = TopUp
        fields = ["id", "organisation", "organisation_name", "provider", "status", "amount", "amount_fen", "refunded",
                  "refunded_fen", "provider_reference", "payment_intent", "checkout_url", "entry", "requested_by",
                  "confirmed_by", "created_at", "updated_at"]
        read_only_fields = fields


class PayoutSerializer(serializers.ModelSerializer):
    amount = CnyFromFenField(source="amount_fen")
    organisation_name = serializers.CharField(source="organisation.name", read_only=True)

    class Meta:
        model = Payout
        fields = ["id", "organisation", "organisation_name", "provider", "status", "amount", "amount_fen", "destination",
                  "provider_reference", "failure_reason", "hold", "requested_by", "created_at", "updated_at"]
        read_only_fields = fields
