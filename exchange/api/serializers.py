from __future__ import annotations

import re

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from common.api import StrictFieldsMixin
from exchange.models import Order, OrderType, SelfTradePrevention, Side, TimeInForce, Trade
from marketplace.models import Instrument, Listing

CLIENT_ORDER_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,64}$")


class OrderInSerializer(StrictFieldsMixin, serializers.Serializer):
    instrument = serializers.PrimaryKeyRelatedField(queryset=Instrument.objects.select_related("product"))
    side = serializers.ChoiceField(choices=Side.choices)
    type = serializers.ChoiceField(choices=OrderType.choices, default=OrderType.LIMIT)
    price = serializers.DecimalField(max_digits=14, decimal_places=4, required=False, allow_null=True, help_text="CNY per standard unit")
    quantity = serializers.IntegerField(min_value=1, help_text="lots")
    time_in_force = serializers.ChoiceField(choices=TimeInForce.choices, default=TimeInForce.GTC)
    expires_at = serializers.DateTimeField(required=False, allow_null=True)
    post_only = serializers.BooleanField(default=False)
    min_quantity = serializers.IntegerField(min_value=0, default=0)
    stp = serializers.ChoiceField(choices=SelfTradePrevention.choices, default=SelfTradePrevention.CANCEL_NEWEST)
    client_order_id = serializers.CharField(max_length=64, help_text="Your id for the order; a retry with the same id returns the same order")
    listing = serializers.PrimaryKeyRelatedField(queryset=Listing.objects.all(), required=False, allow_null=True, help_text="Sell orders: the listing to reserve capacity on (default: the first with room)")
    organisation = serializers.IntegerField(required=False, help_text="Needed when you trade for several organisations")

    def validate_client_order_id(self, value: str) -> str:
        if not CLIENT_ORDER_ID.match(value):
            raise serializers.ValidationError("Use 1-64 letters, digits and . _ : -")
        return value


class OrderAmendSerializer(StrictFieldsMixin, serializers.Serializer):
    price = serializers.DecimalField(max_digits=14, decimal_places=4, required=False)
    quantity = serializers.IntegerField(min_value=1, required=False, help_text="new total quantity in lots, filled part included")


class CancelAllSerializer(StrictFieldsMixin, serializers.Serializer):
    instrument = serializers.PrimaryKeyRelatedField(queryset=Instrument.objects.all(), required=False, allow_null=True)
    organisation = serializers.IntegerField(required=False)


def _price(obj, fen):
    return None if fen is None else str(obj.instrument.fen_per_lot_to_price(fen))


class FillSerializer(serializers.ModelSerializer):
    price = serializers.SerializerMethodField()
    trade = serializers.IntegerField(source="pk")

    class Meta:
        model = Trade
        fields = ["trade", "seq", "price", "quantity", "created_at"]

    @extend_schema_field(OpenApiTypes.DECIMAL)
    def get_price(self, obj: Trade):
        return _price(obj, obj.price_fen_per_lot)


class OrderSerializer(serializers.ModelSerializer):
    price = serializers.SerializerMethodField()
    instrument_code = serializers.CharField(source="instrument.code", read_only=True)
    fills = serializers.SerializerMethodField()

    class Meta:
        model = Order
        fields = [
            "id", "client_order_id", "instrument", "instrument_code", "organisation", "side", "type", "price", "quantity",
            "time_in_force", "expires_at", "post_only", "min_quantity", "stp", "status", "filled_quantity",
            "open_quantity", "reason", "fee_fen", "listing", "created_at", "updated_at", "fills",
        ]
        read_only_fields = fields

    @extend_schema_field(OpenApiTypes.DECIMAL)
    def get_price(self, obj: Order):
        return _price(obj, obj.price_fen_per_lot)

    @extend_schema_field(FillSerializer(many=True))
    def get_fills(self, obj: Order):
        if "fills" in self.context:  # answered from the matcher's reply, not re-read
            return self.context["fills"]
        # Uses prefetched maker_trades/taker_trades (see exchange.selectors.order_list_for_user).
        trades = sorted([*obj.maker_trades.all(), *obj.taker_trades.all()], key=lambda t: t.seq)
        return FillSerializer(trades, many=True).data


class MyFillSerializer(serializers.ModelSerializer):
    price = serializers.SerializerMethodField()
    instrument_code = serializers.CharField(source="instrument.code")
    side = serializers.SerializerMethodField()
    order = serializers.SerializerMethodField()
    liquidity = serializers.SerializerMethodField()
    fee_fen = serializers.SerializerMethodField()

    class Meta:
        model = Trade
        fields = ["id", "seq", "instrument", "instrument_code", "side", "order", "price", "quantity", "value_fen", "liquidity", "fee_fen", "created_at"]

    def _mine(self, obj: Trade) -> Order:
        orgs = self.context["organisations"]
        return obj.maker_order if obj.maker_order.organisation_id in orgs else obj.taker_order

    @extend_schema_field(OpenApiTypes.DECIMAL)
    def get_price(self, obj: Trade):
        return _price(obj, obj.price_fen_per_lot)

    def get_side(self, obj: Trade) -> str:
        return self._mine(obj).side

    def get_order(self, obj: Trade) -> int:
        return self._mine(obj).pk

    def get_liquidity(self, obj: Trade) -> str:
        return "maker" if self._mine(obj) is obj.maker_order else "taker"

    def get_fee_fen(self, obj: Trade) -> int:
        return obj.buyer_fee_fen if self._mine(obj).side == Side.BUY else obj.seller_fee_fen


class PublicTradeSerializer(serializers.ModelSerializer):
    price = serializers.SerializerMethodField()

    class Meta:
        model = Trade
        fields = ["id", "instrument", "seq", "price", "quantity", "taker_side", "created_at"]

    @extend_schema_field(OpenApiTypes.DECIMAL)
    def get_price(self, obj: Trade):
        return _price(obj, obj.price_fen_per_lot)


def order_data(order: Order, state: dict | None = None) -> dict:
    """The API's view of an order. With the matcher's reply (`state`), the in-memory order is updated from
    it and nothing is read back from the database."""
    if state is None:
        from exchange.selectors import order_with_fills

        return OrderSerializer(order_with_fills().get(pk=order.pk)).data
    for name in ("status", "filled_quantity", "open_quantity", "quantity", "price_fen_per_lot", "reason", "fee_fen"):
        setattr(order, name, state[name])
    price = order.instrument.fen_per_lot_to_price
    fills = [
        {"trade": f["trade"], "seq": f["seq"], "price": str(price(f["price_fen_per_lot"])), "quantity": f["quantity"], "created_at": f["created_at"]}
        for f in state["fills"]
    ]
    data = OrderSerializer(order, context={"fills": fills}).data
    if state.get("updated_at"):
        data["updated_at"] = state["updated_at"]
    return data
