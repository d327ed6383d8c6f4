"""django-filter sets for the regulator's lists. Prices filter in fen per lot (the exchange's integer unit,
exact whatever the instrument's lot size); sizes in lots."""

from __future__ import annotations

import django_filters
from django import forms
from django.db.models import Q

from common.filters import UtcIsoDateTimeFilter
from exchange.models import Contract, ContractStatus, Order, OrderEvent, OrderEventKind, OrderStatus, Side, Trade
from ledger.models import EntryKind, JournalEntry
from metering.models import ContractDelivery, DeliveryStatus, UsageEvent
from oversight.models import Alert, AlertKind, AlertStatus, Severity


class IdFilter(django_filters.NumberFilter):
    """An object's id: a whole number the database can hold (a bigger or fractional one is a 400, not a 500)."""

    field_class = forms.IntegerField

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("min_value", 1)
        kwargs.setdefault("max_value", 2**63 - 1)
        super().__init__(*args, **kwargs)


class _Ranges(django_filters.FilterSet):
    since = UtcIsoDateTimeFilter(field_name="created_at", lookup_expr="gte", help_text="from this time (inclusive)")
    until = UtcIsoDateTimeFilter(field_name="created_at", lookup_expr="lt", help_text="before this time")
    price_fen_min = django_filters.NumberFilter(field_name="price_fen_per_lot", lookup_expr="gte", help_text="fen per lot")
    price_fen_max = django_filters.NumberFilter(field_name="price_fen_per_lot", lookup_expr="lte", help_text="fen per lot")
    quantity_min = django_filters.NumberFilter(field_name="quantity", lookup_expr="gte", help_text="lots")
    quantity_max = django_filters.NumberFilter(field_name="quantity", lookup_expr="lte", help_text="lots")


class TradeFilter(_Ranges):
    product = IdFilter(field_name="instrument__product_id")
    organisation = IdFilter(method="either_side", help_text="buyer or seller")
    taker_side = django_filters.ChoiceFilter(choices=Side.choices)

    class Meta:
        model = Trade
        fields = ["instrument", "product", "organisation", "buyer", "seller", "taker_side"]

    def either_side(self, queryset, name, value):
        return queryset.filter(Q(buyer_id=value) | Q(seller_id=value))


class OrderFilter(_Ranges):
    product = IdFilter(field_name="instrument__product_id")
    status = django_filters.MultipleChoiceFilter(choices=OrderStatus.choices)
    side = django_filters.ChoiceFilter(choices=Side.choices)

    class Meta:
        model = Order
        fields = ["instrument", "product", "organisation", "user", "status", "side", "client_order_id"]


class OrderEventFilter(_Ranges):
    instrument = IdFilter(field_name="order__instrument_id")
    product = IdFilter(field_name="order__instrument__product_id")
    organisation = IdFilter(field_name="order__organisation_id")
    side = django_filters.ChoiceFilter(field_name="order__side", choices=Side.choices)
    kind = django_filters.MultipleChoiceFilter(choices=OrderEventKind.choices)

    class Meta:
        model = OrderEvent
        fields = ["order", "instrument", "product", "organisation", "actor", "kind", "side"]


class ContractFilter(_Ranges):
    product = IdFilter(field_name="instrument__product_id")
    organisation = IdFilter(method="either_side", help_text="buyer or seller")
    status = django_filters.MultipleChoiceFilter(choices=ContractStatus.choices)

    class Meta:
        model = Contract
        fields = ["instrument", "product", "organisation", "buyer", "seller", "status", "listing"]

    def either_side(self, queryset, name, value):
        return queryset.filter(Q(buyer_id=value) | Q(seller_id=value))


class JournalEntryFilter(django_filters.FilterSet):
    since = UtcIsoDateTimeFilter(field_name="created_at", lookup_expr="gte")
    until = UtcIsoDateTimeFilter(field_name="created_at", lookup_expr="lt")
    kind = django_filters.MultipleChoiceFilter(choices=EntryKind.choices)
    organisation = IdFilter(method="touching", help_text="entries with a posting on this organisation's accounts")
    account = IdFilter(method="on_account")

    class Meta:
        model = JournalEntry
        fields = ["kind", "reference", "organisation", "account"]

    def touching(self, queryset, name, value):
        return queryset.filter(postings__account__organisation_id=value).distinct()

    def on_account(self, queryset, name, value):
        return queryset.filter(postings__account_id=value).distinct()


class AlertFilter(django_filters.FilterSet):
    kind = django_filters.MultipleChoiceFilter(choices=AlertKind.choices)
    status = django_filters.MultipleChoiceFilter(choices=AlertStatus.choices)
    severity = django_filters.MultipleChoiceFilter(choices=Severity.choices)
    since = UtcIsoDateTimeFilter(field_name="created_at", lookup_expr="gte")

    class Meta:
        model = Alert
        fields = ["kind", "status", "severity", "organisation", "instrument"]


class UsageEventFilter(django_filters.FilterSet):
    since = UtcIsoDateTimeFilter(field_name="started_at", lookup_expr="gte", help_text="usage starting at or after")
    until = UtcIsoDateTimeFilter(field_name="started_at", lookup_expr="lt", help_text="usage starting before")
    buyer = IdFilter(field_name="contract__buyer_id")
    energy_estimated = django_filters.BooleanFilter()

    class Meta:
        model = UsageEvent
        fields = ["supplier", "buyer", "contract", "data_centre", "device_model", "energy_estimated"]


class DeliveryFilter(django_filters.FilterSet):
    supplier = IdFilter(field_name="contract__seller_id")
    buyer = IdFilter(field_name="contract__buyer_id")
    status = django_filters.MultipleChoiceFilter(choices=DeliveryStatus.choices)
    settled_since = UtcIsoDateTimeFilter(field_name="settled_at", lookup_expr="gte")

    class Meta:
        model = ContractDelivery
        fields = ["supplier", "buyer", "status", "settled_since"]
