from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from common.money import format_cny
from ledger.models import Account, Posting


@extend_schema_field(OpenApiTypes.DECIMAL)
class CnyFromFenField(serializers.Field):
    """Renders integer fen as a CNY decimal string, e.g. 12345 -> "123.45"."""

    def __init__(self, **kwargs):
        kwargs["read_only"] = True
        super().__init__(**kwargs)

    def to_representation(self, value: int) -> str:
        return format_cny(value)


class AccountSerializer(serializers.ModelSerializer):
    organisation_name = serializers.CharField(source="organisation.name", read_only=True, default=None, allow_null=True)
    balance = CnyFromFenField(source="balance_fen")

    class Meta:
        model = Account
        fields = ["id", "organisation", "organisation_name", "kind", "name", "balance", "balance_fen"]
        read_only_fields = fields


class BalancesSerializer(serializers.Serializer):
    organisation = serializers.IntegerField()
    currency = serializers.CharField()
    available = serializers.CharField()
    held = serializers.CharField()
    escrow = serializers.CharField()
    receivable = serializers.CharField()
    balances_fen = serializers.DictField(child=serializers.IntegerField())


class StatementLineSerializer(serializers.ModelSerializer):
    entry = serializers.IntegerField(source="entry_id")
    entry_kind = serializers.CharField(source="entry.kind")
    memo = serializers.CharField(source="entry.memo")
    reference = serializers.CharField(source="entry.reference")
    created_at = serializers.DateTimeField(source="entry.created_at")
    account_kind = serializers.CharField(source="account.kind")
    organisation = serializers.IntegerField(source="account.organisation_id", allow_null=True)
    amount = CnyFromFenField(source="amount_fen")
    balance_after = CnyFromFenField(source="balance_after_fen")

    class Meta:
        model = Posting
        fields = ["id", "entry", "entry_kind", "created_at", "organisation", "account", "account_kind", "amount", "amount_fen",
                  "balance_after", "balance_after_fen", "memo", "reference"]
        read_only_fields = fields
