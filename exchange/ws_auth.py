"""Who is on the other end of a websocket.

- The portal's pages connect with the session cookie (channels' AuthMiddlewareStack, in config/asgi.py).
- API clients send their DRF token, as `Authorization: Token <key>` (preferred: query strings end up in
  access logs) or `?token=<key>`. TokenAuthMiddleware wraps the routes that need a user; a token that is
  given but unknown leaves the connection anonymous, so the consumer refuses it.

Origin: channels' AllowedHostsOriginValidator refuses a handshake WITHOUT an Origin header unless
ALLOWED_HOSTS contains "*". Browsers always send Origin (that is what the check protects: a foreign page
riding on the user's cookies); programs usually do not, and they authenticate with a token, not a cookie.
`ApiClientOriginValidator` refuses a foreign Origin exactly like AllowedHostsOriginValidator and admits a
missing one; `websocket_application` is the whole stack config/asgi.py uses. Public routes (the market
stream) get the origin check but no session middleware.
"""

from __future__ import annotations

from urllib.parse import parse_qs

from channels.auth import AuthMiddlewareStack
from channels.db import database_sync_to_async
from channels.security.websocket import OriginValidator
from django.conf import settings
from django.contrib.auth.models import AnonymousUser


def token_from_scope(scope: dict) -> str | None:
    for name, value in scope.get("headers", []):
        if name == b"authorization":
            scheme, _, key = value.decode("latin1").partition(" ")
            if scheme.lower() in ("token", "bearer") and key.strip():
                return key.strip()
    values = parse_qs(scope.get("query_string", b"").decode("latin1")).get("token")
    return values[0] if values else None


@database_sync_to_async
def _user_for_token(key: str):
    from rest_framework.authtoken.models import Token

    token = Token.objects.select_related("user").filter(key=key).first()
    if token is None or not token.user.is_active:
        return AnonymousUser()
    return token.user


class TokenAuthMiddleware:
    """Sets scope["user"] from a DRF token when the client sends one; otherwise leaves the session user."""

    def __init__(self, inner) -> None:
        self.inner = inner

    async def __call__(self, scope, receive, send):
        key = token_from_scope(scope)
        if key is not None:
            scope = dict(scope, user=await _user_for_token(key), auth="token")
        return await self.inner(scope, receive, send)


class ApiClientOriginValidator(OriginValidator):
    """A present Origin must be one of ALLOWED_HOSTS; a missing one is a non-browser client and passes."""

    def valid_origin(self, parsed_origin) -> bool:
        if parsed_origin is None:
            return True
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
    inner = AuthMiddlewareStack(URLRouter(routes) if isinstance(routes, list | tuple) else routes)
    if public:
        inner = PublicRoutes(list(public), inner)
    return ApiClientOriginValidator(inner, allowed)
