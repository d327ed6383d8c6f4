"""Bench-only ASGI app: the project's application (config.asgi) plus /ws/echo/, a trivial consumer that
sends every text frame straight back. bench/exchange_bench.py --case ws serves this module under one
uvicorn, so websocket order entry (/ws/user/) and the echo baseline run in the same server process."""

from channels.generic.websocket import AsyncWebsocketConsumer
from channels.routing import ProtocolTypeRouter
from django.urls import path

from config.asgi import django_asgi_app
from config.routing import websocket_app


class EchoConsumer(AsyncWebsocketConsumer):
    async def receive(self, text_data=None, bytes_data=None):
        await self.send(text_data=text_data, bytes_data=bytes_data)


application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": websocket_app(extra=[path("ws/echo/", EchoConsumer.as_asgi())]),
    }
)
