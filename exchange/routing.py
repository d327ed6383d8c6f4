"""Websocket routes of the exchange (collected by config/routing.py); formats in docs/websockets.md."""

from django.urls import path

from exchange.consumers import MarketConsumer, UserConsumer
from exchange.ws_auth import TokenAuthMiddleware

websocket_urlpatterns = [
    path("ws/market/<int:instrument_id>/", MarketConsumer.as_asgi()),
    # Token (API clients) on top of the session user that config/asgi.py's AuthMiddlewareStack provides.
    path("ws/user/", TokenAuthMiddleware(UserConsumer.as_asgi())),
]
