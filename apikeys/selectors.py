from __future__ import annotations

from django.db.models import QuerySet

from apikeys.models import ApiKey


def api_key_list_for_user(user) -> QuerySet[ApiKey]:
    """The user's own keys, newest first; nobody lists another user's keys (operators use the admin)."""
    return ApiKey.objects.filter(user=user).order_by("-created_at", "-id")
