"""Websocket routes of the exchange (collected by config/routing.py); formats in docs/websockets.md."""

from django.urls import path

from exchange.consumers import MarketConsumer, UserConsumer
from exchange.ws_auth import TokenAuthMiddleware

# Public: served without the session middleware (config/asgi.py); the origin check still applies.
public_websocket_urlpatterns = [
    path("ws/market/<int:instrument_id>/", MarketConsumer.as_asgi()),
]

websocket_urlpatterns = [
    # Token (API clients) on top of the session user that the AuthMiddlewareStack provides.
    path("ws/user/", TokenAuthMiddleware(UserConsumer.as_asgi())),
]
