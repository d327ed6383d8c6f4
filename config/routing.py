"""Websocket routes, collected from the apps that serve them: public ones (no session) and the rest."""

from exchange.routing import public_websocket_urlpatterns as exchange_public
from exchange.routing import websocket_urlpatterns as exchange_websockets

public_websocket_urlpatterns: list = [*exchange_public]
websocket_urlpatterns: list = [*exchange_websockets]


def websocket_app(extra_public: list = (), extra: list = ()):
    """The whole websocket stack (origin check; session auth for the non-public routes)."""
    from exchange.ws_auth import websocket_application

    return websocket_application([*extra, *websocket_urlpatterns], public=[*extra_public, *public_websocket_urlpatterns])
