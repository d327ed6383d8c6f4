from __future__ import annotations

import datetime as dt
import functools
import re
from decimal import Decimal

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import ISO_8601, serializers
from rest_framework.settings import api_settings

from common.api import ReusedFieldsMixin, StrictFieldsMixin, id_of
from exchange.models import Order, OrderType, SelfTradePrevention, Side, TimeInForce, Trade
from exchange.selectors import instrument_get_cached
from marketplace.models import Instrument, Listing

CLIENT_ORDER_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,64}$")


class CachedInstrumentField(serializers.PrimaryKeyRelatedField):
    """An instrument id, resolved through the per-process cache (exchange.selectors.instrument_get_cached)."""

    def to_internal_value(self, data):
        pk = id_of(data)
        if pk is None:
            self.fail("incorrect_type", data_type=type(data).__name__)
        instrument = instrument_get_cached(pk)
        if instrument is None:
            self.fail("does_not_exist", pk_value=data)
        return instrument


class OrderInSerializer(ReusedFieldsMixin, StrictFieldsMixin, serializers.Serializer):
    """An order as sent (REST POST /orders/, websocket `place`). Its fields are built once per thread
    (common.api.ReusedFieldsMixin): every order is validated through it."""

    instrument = CachedInstrumentField(queryset=Instrument.objects.select_related("product"))
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


# The plain form's rules, read from OrderInSerializer's declared fields (choices, defaults, precision), so the
# short way below cannot drift from the serializer: only the types it takes are its own.
_DECLARED = OrderInSerializer._declared_fields
_WHOLE, _PLACES = _DECLARED["price"].max_digits - _DECLARED["price"].decimal_places, _DECLARED["price"].decimal_places
_PRICE = re.compile(rf"[0-9]{{1,{_WHOLE}}}(\.[0-9]{{1,{_PLACES}}})?")
_PRICE_STEP = Decimal(1).scaleb(-_PLACES)
_OPTIONAL_CHOICES = tuple((name, frozenset(_DECLARED[name].choices), _DECLARED[name].default) for name in ("type", "time_in_force", "stp"))
_SIDES = frozenset(_DECLARED["side"].choices)
_PLAIN_KEYS = frozenset(_DECLARED) - {"expires_at", "listing"}


def _int(value) -> bool:
    return type(value) is int  # not bool, not a string of digits: those go the serializer's way


def _plain_order(data) -> dict | None:
    """OrderInSerializer's validated_data for an order in its plain form (JSON numbers for ids and
    quantities, a decimal string for the price, booleans as JSON booleans, no expiry, no listing), built
    without DRF's field machinery; None for anything else, which the serializer then validates and, if
    wrong, answers field by field as before. It accepts nothing the serializer refuses and gives what the
    serializer gives (tests/exchange/test_order_serializer_reuse.py compares the two). DRF's validation was
    a sixth of the websocket server's CPU per order (bench/RESULTS.md, fifteenth session)."""
    if type(data) is not dict or not data.keys() <= _PLAIN_KEYS:
        return None
    iid, side, qty, cid = data.get("instrument"), data.get("side"), data.get("quantity"), data.get("client_order_id")
    if not (_int(iid) and id_of(iid) and type(side) is str and side in _SIDES and _int(qty) and qty >= _DECLARED["quantity"].min_value
            and type(cid) is str and CLIENT_ORDER_ID.fullmatch(cid)):
        return None
    v = {"instrument": None, "side": side, "quantity": qty, "client_order_id": cid}
    for name, values, default in _OPTIONAL_CHOICES:
        if name not in data:
            v[name] = default
            continue
        value = data[name]
        if type(value) is not str or value not in values:
            return None
        v[name] = value
    if "price" in data:
        price = data["price"]
        if price is None:
            v["price"] = None
        elif type(price) is str and _PRICE.fullmatch(price):
            v["price"] = Decimal(price).quantize(_PRICE_STEP)
        else:
            return None
    post_only = data.get("post_only", _DECLARED["post_only"].default)
    min_qty = data.get("min_quantity", _DECLARED["min_quantity"].default)
    if type(post_only) is not bool or not (_int(min_qty) and min_qty >= _DECLARED["min_quantity"].min_value):
        return None
    v["post_only"], v["min_quantity"] = post_only, min_qty
    if "organisation" in data:
        if not _int(data["organisation"]):
            return None
        v["organisation"] = data["organisation"]
    v["instrument"] = instrument_get_cached(iid)
    return v if v["instrument"] is not None else None


def order_in_validated(data) -> dict:
    """An order as sent, validated: OrderInSerializer's validated_data (a plain order without DRF's field
    machinery, see `_plain_order`); raises ValidationError with the serializer's field-level errors."""
    plain = _plain_order(data)
    if plain is not None:
        return plain
    serializer = OrderInSerializer(data=data)
    serializer.is_valid(raise_exception=True)
    return dict(serializer.validated_data)


class OrderPendingSerializer(serializers.Serializer):
    client_order_id = serializers.CharField()
    instrument = serializers.IntegerField()
    status = serializers.CharField()
    confirmed = serializers.BooleanField()
    detail = serializers.CharField()


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


_DATETIME = serializers.DateTimeField()


def _iso(value: str | None, tz=None) -> str | None:
    """An ISO timestamp from the matcher, rendered as DRF renders datetimes: in `tz` (the current time zone,
    read once per payload by the caller: DRF reads it per field, through an asgiref Local), ISO 8601 with UTC
    as "Z". Another DATETIME_FORMAT goes through DRF's field."""
    if value is None:
        return None
    fmt = api_settings.DATETIME_FORMAT
    if tz is None or not isinstance(fmt, str) or fmt.lower() != ISO_8601:
        return _DATETIME.to_representation(dt.datetime.fromisoformat(value))
    return _iso_in(value, tz)


@functools.lru_cache(maxsize=1024)
def _iso_in(value: str, tz) -> str:
    """`_iso`'s ISO 8601 rendering, remembered: a matcher batch's orders and fills share its few clock readings
    (an order's created_at, updated_at and fills' times are mostly one), 6% of the websocket server's CPU."""
    text = dt.datetime.fromisoformat(value).astimezone(tz).isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text


def order_payload(state: dict, instrument: Instrument) -> dict:
    """An order as OrderSerializer renders it, built from the matcher's reply without touching the database
    (order entry's hot path; tests/exchange check it equals a GET of the same order)."""
    price = instrument.fen_per_lot_to_price
    tz = _DATETIME.default_timezone()
    return {
        "id": state["id"], "client_order_id": state["client_order_id"], "instrument": state["instrument"],
        "instrument_code": instrument.code, "organisation": state["organisation"], "side": state["side"],
        "type": state["type"], "price": None if state["price_fen_per_lot"] is None else str(price(state["price_fen_per_lot"])),
        "quantity": state["quantity"], "time_in_force": state["time_in_force"], "expires_at": _iso(state["expires_at"], tz),
        "post_only": state["post_only"], "min_quantity": state["min_quantity"], "stp": state["stp"], "status": state["status"],
        "filled_quantity": state["filled_quantity"], "open_quantity": state["open_quantity"], "reason": state["reason"],
        "fee_fen": state["fee_fen"], "listing": state["listing"], "created_at": _iso(state["created_at"], tz),
        "updated_at": _iso(state["updated_at"], tz),
        "fills": [
            {"trade": f["trade"], "seq": f["seq"], "price": str(price(f["price_fen_per_lot"])), "quantity": f["quantity"], "created_at": _iso(f["created_at"], tz)}
            for f in state["fills"]
        ],
    }
