from __future__ import annotations

from decimal import Decimal

from rest_framework import serializers

from common.api import StrictFieldsMixin
from marketplace.models import ChipClass
from scheduling.models import Demand, DemandChild, Objective


class DemandInSerializer(StrictFieldsMixin, serializers.ModelSerializer):
    organisation = serializers.IntegerField(required=False, help_text="acting organisation when you belong to several")
    chip_classes = serializers.ListField(child=serializers.ChoiceField(choices=ChipClass.choices), required=False, allow_empty=True)
    quantity = serializers.DecimalField(max_digits=14, decimal_places=6, min_value=Decimal("0.000001"))
    max_price = serializers.DecimalField(max_digits=12, decimal_places=2, min_value=Decimal("0.01"), required=False, allow_null=True)
    max_total = serializers.DecimalField(max_digits=14, decimal_places=2, min_value=Decimal("0.01"), required=False, allow_null=True)
    max_latency_ms = serializers.DecimalField(max_digits=7, decimal_places=2, min_value=Decimal("0"), required=False, allow_null=True)
    min_renewable_share = serializers.DecimalField(max_digits=5, decimal_places=2, min_value=Decimal("0"), max_value=Decimal("100"), required=False, allow_null=True)
    max_pue = serializers.DecimalField(max_digits=4, decimal_places=2, min_value=Decimal("1.00"), required=False, allow_null=True)
    yuan_per_kg_co2 = serializers.DecimalField(max_digits=10, decimal_places=4, min_value=Decimal("0"), required=False)

    class Meta:
        model = Demand
        fields = [
            "organisation", "client_demand_id", "unit", "quantity", "earliest_start", "deadline", "single_window", "chip_classes",
            "domestic_only", "latency_metro", "max_latency_ms", "min_renewable_share", "max_pue", "min_security_level",
            "max_price", "max_total", "objective", "yuan_per_kg_co2", "residual",
        ]
        extra_kwargs = {"client_demand_id": {"validators": []}}
        validators = []  # idempotency on (organisation, client_demand_id) is the service's: a retry answers 200

    def validate(self, attrs):
        if attrs["deadline"] <= attrs["earliest_start"]:
            raise serializers.ValidationError({"deadline": ["The deadline must be after the earliest start."]})
        if attrs.get("objective") == Objective.WEIGHTED and not attrs.get("yuan_per_kg_co2"):
            raise serializers.ValidationError({"yuan_per_kg_co2": ["A weighted objective needs a positive price of carbon (yuan per kg CO2)."]})
        attrs["chip_classes"] = sorted(set(attrs.get("chip_classes") or []))
        return attrs


class DemandChildSerializer(serializers.ModelSerializer):
    instrument_code = serializers.CharField(source="instrument.code", read_only=True)

    class Meta:
        model = DemandChild
        fields = ["round", "index", "instrument", "instrument_code", "client_order_id", "order", "planned_lots", "lots",
                  "limit_fen_per_lot", "planned_cost_fen", "status", "filled_lots", "filled_cost_fen", "note"]


class DemandSerializer(serializers.ModelSerializer):
    children = DemandChildSerializer(many=True, read_only=True)
    status = serializers.CharField(read_only=True, help_text="planned, infeasible, executing, filled, partially_filled or unfilled")

    class Meta:
        model = Demand
        fields = [
            "id", "organisation", "client_demand_id", "status", "unit", "quantity", "earliest_start", "deadline", "single_window",
            "chip_classes", "domestic_only", "latency_metro", "max_latency_ms", "min_renewable_share", "max_pue",
            "min_security_level", "max_price", "max_total", "objective", "yuan_per_kg_co2", "residual", "plan", "execution",
            "rounds", "children", "created_at", "updated_at",
        ]
        read_only_fields = fields


class DemandListSerializer(serializers.ModelSerializer):
    status = serializers.CharField(read_only=True)

    class Meta:
        model = Demand
        fields = ["id", "organisation", "client_demand_id", "status", "unit", "quantity", "earliest_start", "deadline", "objective", "created_at"]
        read_only_fields = fields
