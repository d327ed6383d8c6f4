from __future__ import annotations

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from common.api import StrictFieldsMixin
from common.money import format_cny
from exchange.models import Contract, Order, OrderEvent, Trade
from ledger.models import JournalEntry, Posting
from metering.models import ContractDelivery, UsageEvent
from oversight.models import (
    Alert,
    AlertReview,
    AlertStatus,
    AuditCheckpoint,
    AuditRecord,
    DeletionAttestation,
    DeletionMethod,
)


class _Priced(serializers.ModelSerializer):
    """Adds `price` in CNY per standard unit next to the stored fen per lot."""

    price = serializers.SerializerMethodField()

    def _instrument(self, obj):
        return obj.instrument

    @extend_schema_field(OpenApiTypes.DECIMAL)
    def get_price(self, obj):
        fen = obj.price_fen_per_lot
        return None if fen is None else str(self._instrument(obj).fen_per_lot_to_price(fen))


class TapeTradeSerializer(_Priced):
    instrument_code = serializers.CharField(source="instrument.code")
    product = serializers.IntegerField(source="instrument.product_id")
    value = serializers.SerializerMethodField()

    class Meta:
        model = Trade
        fields = ["id", "instrument", "instrument_code", "product", "seq", "buyer", "seller", "maker_order", "taker_order",
                  "taker_side", "price", "price_fen_per_lot", "quantity", "value", "value_fen", "buyer_fee_fen", "seller_fee_fen", "created_at"]

    @extend_schema_field(OpenApiTypes.DECIMAL)
    def get_value(self, obj) -> str:
        return format_cny(obj.value_fen)


class OversightOrderSerializer(_Priced):
    class Meta:
        model = Order
        fields = ["id", "instrument", "organisation", "user", "client_order_id", "side", "type", "time_in_force", "price",
                  "price_fen_per_lot", "quantity", "filled_quantity", "open_quantity", "status", "reason", "fee_fen",
                  "expires_at", "cancel_requested_at", "listing", "created_at", "updated_at"]


class OrderEventSerializer(_Priced):
    instrument = serializers.IntegerField(source="order.instrument_id")
    organisation = serializers.IntegerField(source="order.organisation_id")
    side = serializers.CharField(source="order.side")
    client_order_id = serializers.CharField(source="order.client_order_id")

    class Meta:
        model = OrderEvent
        fields = ["id", "order", "instrument", "organisation", "side", "client_order_id", "kind", "price", "price_fen_per_lot",
                  "quantity", "reason", "trade", "actor", "created_at"]

    def _instrument(self, obj):
        return obj.order.instrument


class ContractSerializer(_Priced):
    class Meta:
        model = Contract
        fields = ["id", "trade", "instrument", "buyer", "seller", "listing", "quantity", "price", "price_fen_per_lot", "value_fen", "status", "created_at"]


class PostingSerializer(serializers.ModelSerializer):
    organisation = serializers.IntegerField(source="account.organisation_id", allow_null=True)
    account_kind = serializers.CharField(source="account.kind")

    class Meta:
        model = Posting
        fields = ["id", "account", "organisation", "account_kind", "amount_fen", "balance_after_fen"]


class JournalEntrySerializer(serializers.ModelSerializer):
    postings = PostingSerializer(many=True)

    class Meta:
        model = JournalEntry
        fields = ["id", "kind", "memo", "reference", "reverses", "created_by", "created_at", "postings"]


class AuditRecordSerializer(serializers.ModelSerializer):
    class Meta:
        model = AuditRecord
        fields = ["seq", "kind", "object_id", "payload", "prev_hash", "hash", "recorded_at"]


class AuditCheckpointSerializer(serializers.ModelSerializer):
    class Meta:
        model = AuditCheckpoint
        fields = ["id", "seq", "hash", "signed_at", "key_id", "signature"]


class AlertReviewSerializer(serializers.ModelSerializer):
    class Meta:
        model = AlertReview
        fields = ["id", "actor", "from_status", "to_status", "note", "created_at"]


class AlertSerializer(serializers.ModelSerializer):
    reviews = AlertReviewSerializer(many=True, read_only=True)

    class Meta:
        model = Alert
        fields = ["id", "kind", "severity", "status", "fingerprint", "organisation", "instrument", "summary", "evidence", "created_at", "updated_at", "reviews"]


class AlertReviewInSerializer(StrictFieldsMixin, serializers.Serializer):
    status = serializers.ChoiceField(choices=[AlertStatus.UNDER_REVIEW, AlertStatus.CLOSED])
    note = serializers.CharField(required=False, allow_blank=True, default="", max_length=5000)


class AttestationSerializer(serializers.ModelSerializer):
    class Meta:
        model = DeletionAttestation
        fields = ["id", "contract", "supplier", "method", "note", "attested_by", "attested_at"]


class AttestationInSerializer(StrictFieldsMixin, serializers.Serializer):
    contract = serializers.IntegerField(min_value=1)
    method = serializers.ChoiceField(choices=DeletionMethod.choices)
    note = serializers.CharField(required=False, allow_blank=True, default="", max_length=5000)


class OutstandingAttestationSerializer(serializers.ModelSerializer):
    instrument_code = serializers.CharField(source="instrument.code")
    delivery_end = serializers.DateTimeField(source="instrument.delivery_end")

    class Meta:
        model = Contract
        fields = ["id", "seller", "buyer", "instrument", "instrument_code", "delivery_end", "quantity", "status"]


class UsageEventSerializer(serializers.ModelSerializer):
    class Meta:
        model = UsageEvent
        fields = ["id", "supplier", "event_id", "contract", "data_centre", "device_model", "started_at", "ended_at", "device_count",
                  "device_seconds", "units_micro", "credited_micro", "energy_kwh", "energy_estimated", "utilisation_pct", "received_at"]


class DeliverySerializer(serializers.ModelSerializer):
    supplier = serializers.IntegerField(source="contract.seller_id")
    buyer = serializers.IntegerField(source="contract.buyer_id")

    class Meta:
        model = ContractDelivery
        fields = ["contract", "supplier", "buyer", "status", "quantity_micro", "delivered_micro", "delivery_ratio", "value_fen",
                  "released_fen", "fee_fen", "refunded_fen", "events", "settled_at", "updated_at"]
