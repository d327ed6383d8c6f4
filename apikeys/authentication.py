"""DRF authentication by API key: `Authorization: Api-Key sl_...` (or `Bearer sl_...`).

The scope check runs here, where the view is known (DRF authenticates lazily, from the view's `initial`),
so it covers every view whatever its permission classes; the views' role checks then run as for the user.
"""

from __future__ import annotations

from rest_framework import authentication, exceptions

from apikeys.models import ApiKey
from apikeys.scopes import KEYS_FORBIDDEN, required_scope
from apikeys.services import KEY_PREFIX, api_key_authenticate

KEYWORDS = ("api-key", "bearer")


def key_from_header(value: str) -> str | None:
    """The API key in an Authorization header value, or None (another scheme, or a DRF token as Bearer)."""
    scheme, _, key = value.partition(" ")
    key = key.strip()
    if scheme.lower() in KEYWORDS and key.startswith(KEY_PREFIX):
        return key
    return None


class ApiKeyAuthentication(authentication.BaseAuthentication):
    keyword = "Api-Key"

    def authenticate(self, request):
        header = authentication.get_authorization_header(request).decode("latin1")
        if not header:
            return None
        raw = key_from_header(header)
        if raw is None:
            scheme = header.partition(" ")[0].lower()
            if scheme == "api-key":
                raise exceptions.AuthenticationFailed("Malformed API key: expected sl_<prefix>_<secret>.")
            return None  # another scheme: TokenAuthentication's or nobody's
        key = api_key_authenticate(raw)
        if key is None:
            raise exceptions.AuthenticationFailed("Invalid, expired or revoked API key.")
        scope_check(key, request.method, request.parser_context.get("view") if request.parser_context else None)
        return key.user, key

    def authenticate_header(self, request) -> str:
        return self.keyword


def scope_check(key: ApiKey, method: str, view) -> None:
    needed = required_scope(method, view)
    if needed == KEYS_FORBIDDEN:
        raise exceptions.PermissionDenied("API keys cannot manage API keys; sign in to the portal or use your account token.")
    if not key.has_scope(needed):
        raise exceptions.PermissionDenied(f"This API key lacks the {needed!r} scope (it has: {', '.join(key.scopes)}).")
