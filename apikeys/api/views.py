"""/api/v1/api-keys/: a user's own keys. Created and revoked with the user's own credential (session or
account token), never with an API key (apikeys.scopes)."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import mixins, permissions, status, viewsets
from rest_framework.decorators import action
from rest_framework.response import Response

from apikeys import selectors, services
from apikeys.api import serializers as s
from apikeys.models import ApiKey


class ApiKeyViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    permission_classes = [permissions.IsAuthenticated]
    serializer_class = s.ApiKeySerializer
    filterset_fields: list[str] = []
    ordering_fields = ["id", "created_at", "last_used_at"]

    queryset = ApiKey.objects.none()  # for the schema; get_queryset gives the user's own

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return ApiKey.objects.none()
        return selectors.api_key_list_for_user(self.request.user)

    @extend_schema(request=s.ApiKeyCreateSerializer, responses={201: s.ApiKeyCreatedSerializer})
    def create(self, request):
        """A new key. The answer holds the whole key, once: only a hash of it is kept."""
        data = s.ApiKeyCreateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        key, plaintext = services.api_key_create(user=request.user, **data.validated_data)
        body = s.ApiKeySerializer(key).data | {"key": plaintext}
        return Response(body, status=status.HTTP_201_CREATED, headers={"Cache-Control": "no-store"})

    @extend_schema(request=None, responses={204: None})
    def destroy(self, request, pk=None):
        """Revoke (the row stays, for the record; revoking twice is harmless)."""
        services.api_key_revoke(key=self.get_object())
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(request=None, responses=s.ApiKeySerializer)
    @action(detail=True, methods=["post"])
    def revoke(self, request, pk=None):
        """Revoke, answering with the key as it now is."""
        return Response(s.ApiKeySerializer(services.api_key_revoke(key=self.get_object())).data)
