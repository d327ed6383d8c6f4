"""Bench-only ASGI app: the project's application (config.asgi) plus /ws/echo/, a trivial consumer that
sends every text frame straight back. bench/exchange_bench.py --case ws serves this module under one
uvicorn, so websocket order entry (/ws/user/) and the echo baseline run in the same server process."""

from channels.generic.websocket import AsyncWebsocketConsumer
from channels.routing import ProtocolTypeRouter, URLRouter
from django.urls import path

from config.asgi import django_asgi_app
from config.routing import websocket_urlpatterns
from exchange.ws_auth import websocket_application


class EchoConsumer(AsyncWebsocketConsumer):
    async def receive(self, text_data=None, bytes_data=None):
        await self.send(text_data=text_data, bytes_data=bytes_data)


application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": websocket_application(URLRouter([path("ws/echo/", EchoConsumer.as_asgi()), *websocket_urlpatterns])),
    }
)
