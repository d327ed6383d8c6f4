from __future__ import annotations

from rest_framework import serializers

from apikeys.models import ApiKey, Scope
from common.api import StrictFieldsMixin


class ApiKeySerializer(serializers.ModelSerializer):
    """A key as listed: never its secret, only the prefix that identifies it."""

    prefix = serializers.SerializerMethodField(help_text="The key's visible start, sl_<prefix>_; the secret is not stored.")
    scopes = serializers.ListField(child=serializers.ChoiceField(choices=Scope.choices))
    active = serializers.SerializerMethodField()

    class Meta:
        model = ApiKey
        fields = ["id", "name", "prefix", "scopes", "created_at", "last_used_at", "expires_at", "revoked_at", "active"]
        read_only_fields = fields

    def get_prefix(self, key: ApiKey) -> str:
        return f"sl_{key.prefix}_"

    def get_active(self, key: ApiKey) -> bool:
        return key.is_usable()


class ApiKeyCreatedSerializer(ApiKeySerializer):
    key = serializers.CharField(help_text="The whole key. Shown in this answer only: store it now.")

    class Meta(ApiKeySerializer.Meta):
        fields = [*ApiKeySerializer.Meta.fields, "key"]
        read_only_fields = fields


class ApiKeyCreateSerializer(StrictFieldsMixin, serializers.Serializer):
    name = serializers.CharField(max_length=100)
    scopes = serializers.ListField(
        child=serializers.ChoiceField(choices=Scope.choices), allow_empty=True, default=list,
        help_text="Any of read, trade, withdraw; read is always included. Trade and withdraw are separate: "
                  "a trading key cannot request payouts.",
    )
    expires_at = serializers.DateTimeField(required=False, allow_null=True)
