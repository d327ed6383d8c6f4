from __future__ import annotations

from decimal import Decimal

from rest_framework import serializers

from common.api import StrictFieldsMixin
from common.money import fen_to_cny
from exchange.models import Contract
from metering.models import MICRO, DeliveryStatus, Dispute
from metering.services.ingest import grace_period


def units(micro: int | None) -> str | None:
    return None if micro is None else f"{micro // MICRO}.{micro % MICRO:06d}"


def cny(fen: int) -> str:
    return str(fen_to_cny(fen))


# --- ingestion (documentation only: the view parses the body itself, in bulk) ---

class UsageEventInSerializer(serializers.Serializer):
    event_id = serializers.CharField(max_length=100, help_text="Your id for the event: the idempotency key.")
    contract = serializers.IntegerField()
    data_centre = serializers.IntegerField()
    device_model = serializers.IntegerField()
    start = serializers.DateTimeField()
    end = serializers.DateTimeField()
    device_count = serializers.IntegerField(min_value=1)
    energy_kwh = serializers.DecimalField(max_digits=14, decimal_places=3, required=False, help_text="IT energy")
    utilisation_pct = serializers.DecimalField(max_digits=5, decimal_places=2, required=False)


class UsageBatchInSerializer(serializers.Serializer):
    events = UsageEventInSerializer(many=True, help_text="Up to 10,000 events (or send the list itself as the body).")


class UsageEventResultSerializer(serializers.Serializer):
    event_id = serializers.CharField()
    status = serializers.ChoiceField(choices=["accepted", "duplicate", "rejected"])
    units = serializers.DecimalField(max_digits=20, decimal_places=6, required=False, help_text="rated standard units")
    credited = serializers.DecimalField(max_digits=20, decimal_places=6, required=False, help_text="units counted, when capped by the contract")
    reason = serializers.CharField(required=False)
    message = serializers.CharField(required=False)
    errors = serializers.DictField(child=serializers.ListField(child=serializers.CharField()), required=False)


class UsageBatchResultSerializer(serializers.Serializer):
    accepted = serializers.IntegerField()
    duplicates = serializers.IntegerField()
    rejected = serializers.IntegerField()
    results = UsageEventResultSerializer(many=True)
    contracts = serializers.DictField(child=serializers.DictField(), help_text="delivery state of each contract touched")


# --- contracts and disputes ---

class DisputeSerializer(serializers.ModelSerializer):
    opened_by = serializers.CharField(source="opened_by.username", read_only=True)
    resolved_by = serializers.CharField(source="resolved_by.username", read_only=True, default=None, allow_null=True)
    delivered_before = serializers.SerializerMethodField()
    delivered_after = serializers.SerializerMethodField()

    class Meta:
        model = Dispute
        fields = ["id", "contract", "status", "reason", "opened_by", "opened_at", "delivered_before", "delivered_after",
                  "resolution", "resolved_by", "resolved_at", "entry"]
        read_only_fields = fields

    def get_delivered_before(self, d: Dispute) -> str:
        return units(d.delivered_before_micro)

    def get_delivered_after(self, d: Dispute) -> str | None:
        return units(d.delivered_after_micro)


class DisputeOpenSerializer(StrictFieldsMixin, serializers.Serializer):
    reason = serializers.CharField(max_length=4000)


class DisputeResolveSerializer(StrictFieldsMixin, serializers.Serializer):
    delivered_units = serializers.DecimalField(max_digits=20, decimal_places=6, min_value=Decimal(0))
    resolution = serializers.CharField(max_length=4000)


class ContractDeliverySerializer(serializers.ModelSerializer):
    instrument = serializers.CharField(source="instrument.code")
    unit = serializers.CharField(source="instrument.product.unit")
    buyer = serializers.CharField(source="buyer.name")
    seller = serializers.CharField(source="seller.name")
    data_centre = serializers.IntegerField(source="listing.data_centre_id")
    delivery_start = serializers.DateTimeField(source="instrument.delivery_start")
    delivery_end = serializers.DateTimeField(source="instrument.delivery_end")
    settle_after = serializers.SerializerMethodField()
    quantity_units = serializers.SerializerMethodField()
    value = serializers.SerializerMethodField()
    delivery_status = serializers.SerializerMethodField()
    delivered_units = serializers.SerializerMethodField()
    released = serializers.SerializerMethodField()
    seller_fee = serializers.SerializerMethodField()
    refunded = serializers.SerializerMethodField()
    delivery_ratio = serializers.SerializerMethodField()
    events = serializers.SerializerMethodField()

    class Meta:
        model = Contract
        fields = ["id", "instrument", "unit", "buyer", "seller", "data_centre", "delivery_start", "delivery_end", "settle_after",
                  "quantity", "quantity_units", "value", "delivery_status", "delivered_units", "events", "released", "seller_fee",
                  "refunded", "delivery_ratio"]
        read_only_fields = fields

    def _d(self, c: Contract):
        return getattr(c, "delivery", None)

    def get_settle_after(self, c: Contract) -> str:
        return (c.instrument.delivery_end + grace_period()).isoformat()

    def get_quantity_units(self, c: Contract) -> str:
        return str((c.quantity * c.instrument.lot_size).quantize(Decimal("0.000001")))

    def get_value(self, c: Contract) -> str:
        return cny(c.value_fen)

    def get_delivery_status(self, c: Contract) -> str:
        d = self._d(c)
        return d.status if d else DeliveryStatus.OPEN

    def get_delivered_units(self, c: Contract) -> str:
        d = self._d(c)
        return units(d.delivered_micro if d else 0)

    def get_events(self, c: Contract) -> int:
        d = self._d(c)
        return d.events if d else 0

    def get_released(self, c: Contract) -> str:
        d = self._d(c)
        return cny(d.released_fen if d else 0)

    def get_seller_fee(self, c: Contract) -> str:
        d = self._d(c)
        return cny(d.fee_fen if d else 0)

    def get_refunded(self, c: Contract) -> str:
        d = self._d(c)
        return cny(d.refunded_fen if d else 0)

    def get_delivery_ratio(self, c: Contract) -> str | None:
        d = self._d(c)
        return str(d.delivery_ratio) if d and d.delivery_ratio is not None else None


class LedgerLineSerializer(serializers.Serializer):
    account = serializers.CharField()
    amount_fen = serializers.IntegerField()


class HistoryEntrySerializer(serializers.Serializer):
    entry = serializers.IntegerField()
    kind = serializers.CharField()
    memo = serializers.CharField()
    created_at = serializers.DateTimeField()
    postings = LedgerLineSerializer(many=True)


class ContractDeliveryDetailSerializer(ContractDeliverySerializer):
    disputes = DisputeSerializer(many=True, read_only=True)
    history = serializers.SerializerMethodField()

    class Meta(ContractDeliverySerializer.Meta):
        fields = [*ContractDeliverySerializer.Meta.fields, "disputes", "history"]
        read_only_fields = fields

    def get_history(self, c: Contract) -> list[dict]:
        from metering.selectors import contract_history

        return HistoryEntrySerializer(contract_history(c), many=True).data


class MetricsRowSerializer(serializers.Serializer):
    key = serializers.IntegerField()
    name = serializers.CharField()
    data_centres = serializers.IntegerField()
    delivered_units = serializers.DecimalField(max_digits=24, decimal_places=6)
    device_hours = serializers.DecimalField(max_digits=24, decimal_places=2)
    utilisation_pct = serializers.DecimalField(max_digits=6, decimal_places=2, allow_null=True)
    it_energy_kwh = serializers.DecimalField(max_digits=24, decimal_places=3)
    facility_energy_kwh = serializers.DecimalField(max_digits=24, decimal_places=3)
    energy_kwh_per_unit = serializers.DecimalField(max_digits=24, decimal_places=3, allow_null=True)
    carbon_kg = serializers.DecimalField(max_digits=24, decimal_places=3)
    carbon_kg_per_unit = serializers.DecimalField(max_digits=24, decimal_places=3, allow_null=True)
    latency_ms = serializers.DecimalField(max_digits=10, decimal_places=2, allow_null=True)
    latency_class = serializers.CharField(allow_null=True)


class MetricsSerializer(serializers.Serializer):
    group_by = serializers.CharField()
    groups = MetricsRowSerializer(many=True)
