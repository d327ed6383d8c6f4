"""Who is on the other end of a websocket.

- The portal's pages connect with the session cookie (channels' AuthMiddlewareStack, in config/asgi.py).
- API clients send an API key, `Authorization: Api-Key sl_...` (or `Bearer sl_...`), or their account's DRF
  token, `Authorization: Token <key>`; `?token=<key or sl_...>` also works (but query strings end up in
  access logs). TokenAuthMiddleware wraps the routes that need a user; a credential that is given but
  unknown, revoked or expired leaves the connection anonymous, so the consumer refuses it (4401). An API
  key's scopes are in scope["api_key_scopes"]: the user stream needs "read", order entry "trade".

Origin: every websocket handshake must carry an Origin whose host is in ALLOWED_HOSTS (channels'
OriginValidator); a foreign or MISSING Origin is refused with HTTP 403, on every route, market included.
Browsers always send it; programs must send one of ours too (e.g. the `websockets` library's `origin=`).

Revocation: a socket re-checks its credential (user active; key not revoked or expired; token or session
still there) every WS_AUTH_RECHECK_SECONDS (default 30) and at once when a signal (apikeys.signals) says
the user's credentials changed; if the check fails it closes with 4401.
"""

from __future__ import annotations

import logging
from urllib.parse import parse_qs

from channels.auth import AuthMiddlewareStack
from channels.db import database_sync_to_async
from channels.security.websocket import OriginValidator
from django.conf import settings
from django.contrib.auth.models import AnonymousUser

log = logging.getLogger(__name__)


API_KEY_PREFIX = "sl_"
CLOSE_CREDENTIALS_GONE = 4401


def token_from_scope(scope: dict) -> str | None:
    """The credential the client sent: a DRF token or an API key (sl_...), from the header or ?token=."""
    for name, value in scope.get("headers", []):
        if name == b"authorization":
            scheme, _, key = value.decode("latin1").partition(" ")
            if scheme.lower() in ("token", "bearer", "api-key") and key.strip():
                return key.strip()
    values = parse_qs(scope.get("query_string", b"").decode("latin1")).get("token")
    return values[0] if values else None


@database_sync_to_async
def _credential_scope(key: str) -> dict:
    """What TokenAuthMiddleware adds to the scope for `key`: the user and how they authenticated."""
    if key.startswith(API_KEY_PREFIX):
        from apikeys.services import api_key_authenticate

        api_key = api_key_authenticate(key)
        if api_key is None:
            return {"user": AnonymousUser(), "auth": "api_key"}
        return {"user": api_key.user, "auth": "api_key", "api_key_id": api_key.pk, "api_key_scopes": list(api_key.scopes)}
    from marketplace.authentication import token_user

    user = token_user(key)  # REST's lookup and cache (forgotten at once on ORM changes); re-checked below
    if user is None or not user.is_active:
        return {"user": AnonymousUser(), "auth": "token"}
    return {"user": user, "auth": "token", "auth_token": key}


class TokenAuthMiddleware:
    """Sets scope["user"] from an API key or DRF token when the client sends one; otherwise leaves the
    session user."""

    def __init__(self, inner) -> None:
        self.inner = inner

    async def __call__(self, scope, receive, send):
        key = token_from_scope(scope)
        if key is not None:
            scope = dict(scope, **await _credential_scope(key))
        return await self.inner(scope, receive, send)


def socket_has_scope(scope: dict, needed: str) -> bool:
    """API-key sockets are limited to the key's scopes; session and account-token sockets act as the user."""
    if scope.get("auth") != "api_key":
        return True
    return needed in scope.get("api_key_scopes", ())


# --- revocation -------------------------------------------------------------------------------------------


def recheck_seconds() -> float:
    return float(getattr(settings, "WS_AUTH_RECHECK_SECONDS", 30))


def user_sockets_group(user_id: int) -> str:
    return f"user-sockets.{user_id}"


def user_sockets_recheck(user_id: int) -> None:
    """After commit: tell the user's sockets (every process) to re-check their credential now."""
    from django.db import transaction

    def send() -> None:
        from channels.layers import get_channel_layer

        from exchange.publish import _deliver

        layer = get_channel_layer()
        if layer is None:
            return
        try:
            _deliver(layer, [(user_sockets_group(user_id), {"type": "auth.recheck"})])
        except Exception:  # the periodic re-check is the backstop
            log.exception("could not ask user %s's sockets to re-check their credentials", user_id)

    transaction.on_commit(send)


def credential_still_valid(scope: dict) -> bool:
    """The socket's user is still active and the credential it connected with still stands."""
    from django.contrib.auth import get_user_model

    user = scope.get("user")
    if user is None or not user.is_authenticated:
        return False
    if not get_user_model().objects.filter(pk=user.pk, is_active=True).exists():
        return False
    kind = scope.get("auth")
    if kind == "api_key":
        from apikeys.services import api_key_still_valid

        return api_key_still_valid(scope["api_key_id"])
    if kind == "token":
        from rest_framework.authtoken.models import Token

        return Token.objects.filter(key=scope.get("auth_token"), user_id=user.pk).exists()
    session = scope.get("session")
    session_key = getattr(session, "session_key", None)
    if session_key:
        from importlib import import_module

        from django.contrib.auth import SESSION_KEY

        store = import_module(settings.SESSION_ENGINE).SessionStore(session_key)
        return str(store.get(SESSION_KEY)) == str(user.pk)  # signed out (or another user): the session is gone
    return True


class ApiClientOriginValidator(OriginValidator):
    """The Origin must be present and one of ALLOWED_HOSTS, for browsers and programs alike (a missing
    Origin used to be admitted as a program's; issue #11 refuses it)."""

    def valid_origin(self, parsed_origin) -> bool:
        if parsed_origin is None:
            return False
        return self.validate_origin(parsed_origin)


class PublicRoutes:
    """Routes whose sockets need no user go to `public` as they are; the rest through `inner`.

    Channels' session middleware wraps `send` and checks the session on every message a socket sends;
    the public market stream has no use for it, and it cost more than the rest of a delivery."""

    def __init__(self, public_patterns: list, inner) -> None:
        from channels.routing import URLRouter

        self.patterns = [p.pattern for p in public_patterns]
        self.public = URLRouter(public_patterns)
        self.inner = inner

    async def __call__(self, scope, receive, send):
        path = scope.get("path_remaining", scope["path"]).lstrip("/")
        if any(pattern.match(path) for pattern in self.patterns):
            return await self.public(scope, receive, send)
        return await self.inner(scope, receive, send)


def websocket_application(routes, *, public: list = ()):
    """Origin check for every websocket; session auth (portal) for `routes` (URL patterns, or an ASGI app
    such as a URLRouter); `public` URL patterns get no session or user."""
    from channels.routing import URLRouter

    allowed = settings.ALLOWED_HOSTS
    if settings.DEBUG and not allowed:
        allowed = ["localhost", "127.0.0.1", "[::1]"]
    from exchange.consumers import DirectWrites

    inner = DirectWrites(AuthMiddlewareStack(URLRouter(routes) if isinstance(routes, list | tuple) else routes))
    if public:
        inner = PublicRoutes(list(public), inner)
    return ApiClientOriginValidator(inner, allowed)
