"""Websocket routes, collected from the apps that serve them."""

from exchange.routing import websocket_urlpatterns as exchange_websockets

websocket_urlpatterns: list = [*exchange_websockets]
