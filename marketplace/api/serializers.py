from __future__ import annotations

from rest_framework import serializers

from common.api import StrictFieldsMixin
from marketplace.models import (
    DataCentre,
    DataCentreLatency,
    DeviceInventory,
    DeviceModel,
    Instrument,
    Listing,
    MemberRole,
    Organisation,
    Product,
    tick_lot_problem,
)
from marketplace.selectors import organisation_ids_for_user


class OrganisationSerializer(StrictFieldsMixin, serializers.ModelSerializer):
    class Meta:
        model = Organisation
        fields = [
            "id", "name", "name_zh", "credit_code", "kind", "size_class", "founded_on", "registration_region",
            "is_research_institution", "delivery_ratio", "delivery_contracts", "created_at",
        ]
        read_only_fields = ["id", "delivery_ratio", "delivery_contracts", "created_at"]


class LatencySerializer(StrictFieldsMixin, serializers.ModelSerializer):
    class Meta:
        model = DataCentreLatency
        fields = ["metro", "rtt_ms"]


class DeviceLineSerializer(StrictFieldsMixin, serializers.ModelSerializer):
    device_model = serializers.PrimaryKeyRelatedField(queryset=DeviceModel.objects.all())
    device_model_name = serializers.CharField(source="device_model.__str__", read_only=True)

    class Meta:
        model = DeviceInventory
        fields = ["device_model", "device_model_name", "count"]


class DataCentreSerializer(StrictFieldsMixin, serializers.ModelSerializer):
    owner = serializers.PrimaryKeyRelatedField(queryset=Organisation.objects.all())
    owner_name = serializers.CharField(source="owner.name", read_only=True)
    owner_delivery_ratio = serializers.DecimalField(
        source="owner.delivery_ratio", max_digits=5, decimal_places=4, read_only=True, allow_null=True,
        help_text="the supplier's reputation: share of contract value delivered over the last 90 days (metering)",
    )
    latencies = LatencySerializer(many=True, required=False)
    devices = DeviceLineSerializer(many=True, required=False)

    class Meta:
        model = DataCentre
        fields = [
            "id", "owner", "owner_name", "owner_delivery_ratio", "name", "region", "pue", "renewable_share", "carbon_intensity",
            "security_level", "interconnect_gbps", "is_active", "latencies", "devices", "created_at",
        ]
        read_only_fields = ["id", "created_at"]
        extra_kwargs = {
            "pue": {"error_messages": {"min_value": "PUE is total facility energy over IT energy, so it is at least 1.00."}},
        }
        # Uniqueness of (owner, name) is checked by the service's full_clean, with a field-level message.
        validators: list = []

    def validate_owner(self, owner: Organisation) -> Organisation:
        user = self.context["request"].user
        if self.instance is not None and owner.pk != self.instance.owner_id:
            raise serializers.ValidationError("A data centre cannot change owner.")
        if not owner.is_supplier:
            raise serializers.ValidationError("Only supplier organisations register data centres.")
        if not user.is_operator and owner.pk not in organisation_ids_for_user(user, (MemberRole.ADMIN,)):
            raise serializers.ValidationError("You can register data centres only for an organisation you administer.")
        return owner


class DeviceModelSerializer(StrictFieldsMixin, serializers.ModelSerializer):
    class Meta:
        model = DeviceModel
        fields = ["id", "vendor", "name", "chip_class", "is_domestic", "fp16_tflops", "fp32_tflops", "fp64_tflops", "memory_gb", "power_w"]
        read_only_fields = ["id"]


class ProductSerializer(StrictFieldsMixin, serializers.ModelSerializer):
    class Meta:
        model = Product
        fields = [
            "id", "code", "name", "name_zh", "unit", "chip_class", "domestic_only", "latency_metro", "max_latency_ms",
            "min_renewable_share", "max_pue", "min_security_level", "lot_size", "tick_size", "min_order_lots",
            "max_order_lots", "reference_price", "price_band_bps", "maker_fee_bps", "taker_fee_bps", "window",
            "list_ahead_days", "gate_closure_minutes", "is_active",
        ]
        read_only_fields = ["id"]

    def validate(self, attrs: dict) -> dict:
        lo = attrs.get("min_order_lots", getattr(self.instance, "min_order_lots", 1))
        hi = attrs.get("max_order_lots", getattr(self.instance, "max_order_lots", 100000))
        if hi < lo:
            raise serializers.ValidationError({"max_order_lots": ["Must be at least min_order_lots."]})
        problem = tick_lot_problem(
            attrs.get("tick_size", getattr(self.instance, "tick_size", None)),
            attrs.get("lot_size", getattr(self.instance, "lot_size", None)),
        )
        if problem:
            raise serializers.ValidationError({"tick_size": [problem]})
        return attrs


class InstrumentSerializer(serializers.ModelSerializer):
    product_code = serializers.CharField(source="product.code", read_only=True)
    unit = serializers.CharField(source="product.unit", read_only=True)

    class Meta:
        model = Instrument
        fields = [
            "id", "code", "product", "product_code", "unit", "status", "delivery_start", "delivery_end", "opens_at",
            "gate_closure", "tick_size", "lot_size", "min_order_lots", "max_order_lots", "reference_price",
            "price_band_bps", "maker_fee_bps", "taker_fee_bps",
        ]
        read_only_fields = fields


class ListingSerializer(StrictFieldsMixin, serializers.ModelSerializer):
    data_centre = serializers.PrimaryKeyRelatedField(queryset=DataCentre.objects.all())
    product = serializers.PrimaryKeyRelatedField(queryset=Product.objects.all())
    device_model = serializers.PrimaryKeyRelatedField(queryset=DeviceModel.objects.all())
    units_per_hour = serializers.DecimalField(max_digits=18, decimal_places=6, read_only=True)
    device_count = serializers.IntegerField(min_value=1, max_value=10_000_000)
    supplier_delivery_ratio = serializers.DecimalField(
        source="supplier.delivery_ratio", max_digits=5, decimal_places=4, read_only=True, allow_null=True,
        help_text="the supplier's reputation: share of contract value delivered over the last 90 days (metering)",
    )

    class Meta:
        model = Listing
        fields = [
            "id", "supplier", "supplier_delivery_ratio", "data_centre", "product", "device_model", "device_count", "available_from",
            "available_until", "units_per_hour", "is_active", "created_at",
        ]
        read_only_fields = ["id", "supplier", "is_active", "created_at"]

    def validate_data_centre(self, dc: DataCentre) -> DataCentre:
        user = self.context["request"].user
        if dc.owner_id not in organisation_ids_for_user(user, (MemberRole.ADMIN, MemberRole.TRADER)):
            raise serializers.ValidationError("You can list capacity only in your own organisation's data centres.")
        return dc

    def validate(self, attrs: dict) -> dict:
        if attrs["available_until"] <= attrs["available_from"]:
            raise serializers.ValidationError({"available_until": ["Must be after available_from."]})
        return attrs


class InventoryGroupSerializer(serializers.Serializer):
    key = serializers.CharField()
    label = serializers.CharField()
    devices = serializers.IntegerField()
    data_centres = serializers.IntegerField()
    pflops = serializers.DictField(child=serializers.DecimalField(max_digits=20, decimal_places=3))
    domestic_share = serializers.DecimalField(max_digits=5, decimal_places=2)
    green_share = serializers.DecimalField(max_digits=5, decimal_places=2)
    shanghai_share = serializers.DecimalField(max_digits=5, decimal_places=2)


class InventoryTotalSerializer(serializers.Serializer):
    devices = serializers.IntegerField()
    data_centres = serializers.IntegerField()
    pflops = serializers.DictField(child=serializers.DecimalField(max_digits=20, decimal_places=3))
    domestic_share = serializers.DecimalField(max_digits=5, decimal_places=2)
    green_share = serializers.DecimalField(max_digits=5, decimal_places=2)
    shanghai_share = serializers.DecimalField(max_digits=5, decimal_places=2)


class InventoryReportSerializer(serializers.Serializer):
    group_by = serializers.CharField()
    groups = InventoryGroupSerializer(many=True)
    total = InventoryTotalSerializer()
