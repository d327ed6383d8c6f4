"""Shared by the websocket tests: the application stack, sockets, REST calls from async bodies, book rebuilding."""

from __future__ import annotations

from channels.testing import WebsocketCommunicator  # noqa: F401  (re-exported for the tests)

from exchange.selectors import checksum

TIMEOUT = 5


def ws_app():
    """The websocket stack config/asgi.py serves (config.routing.websocket_app)."""
    from config.routing import websocket_app

    return websocket_app()


async def open_socket(path: str, *, app=None, token: str | None = None, origin: bytes | None = b"http://testserver", headers=()):
    hdrs = list(headers)
    if origin is not None:
        hdrs.append((b"origin", origin))
    if token is not None:
        hdrs.append((b"authorization", f"Token {token}".encode()))
    comm = WebsocketCommunicator(app or ws_app(), path, headers=hdrs)
    connected, code = await comm.connect(timeout=TIMEOUT)
    return comm, connected, code


def place(api, user, instrument, **fields):
    api.force_authenticate(user)
    body = {"instrument": instrument.pk, "side": "buy", "price": "15.00", "quantity": 1, "client_order_id": "c1"} | fields
    response = api.post("/api/v1/orders/", body, format="json")
    assert response.status_code in (200, 201), response.json()
    return response.json()


class LocalBook:
    """A client's copy of the book: a snapshot, then updates applied in order."""

    def __init__(self, snapshot: dict) -> None:
        self.seq = snapshot["seq"]
        self.levels = {"buy": dict(map(tuple, snapshot["bids_fen_per_lot"])), "sell": dict(map(tuple, snapshot["asks_fen_per_lot"]))}

    def apply(self, message: dict) -> None:
        """A message covers seqs `first`..`seq`; unless conflated, its updates are those seqs one by one."""
        assert message["first"] == self.seq + 1, f"gap: {self.seq} then {message['first']}"
        for update in message["updates"]:
            if not message.get("conflated"):
                assert update["seq"] == self.seq + 1, f"gap: {self.seq} then {update['seq']}"
            assert self.seq < update["seq"] <= message["seq"]
            self.seq = update["seq"]
            side = self.levels[update["side"]]
            if update["quantity"]:
                side[update["price_fen_per_lot"]] = update["quantity"]
            else:
                side.pop(update["price_fen_per_lot"], None)
        self.seq = message["seq"]

    def bids(self) -> list[tuple[int, int]]:
        return sorted(self.levels["buy"].items(), key=lambda level: -level[0])

    def asks(self) -> list[tuple[int, int]]:
        return sorted(self.levels["sell"].items())

    def checksum(self) -> int:
        return checksum(self.bids(), self.asks())


def release_worker_connections(timeout: float = 5.0) -> None:
    """Consumers run database work on the event loop's pool threads (PostgreSQL), which give their connections
    back when each call ends (tests/conftest.py undoes channels' test communicator's no-op for them). Wait
    for those threads to end, so no call is still running when the test database is flushed."""
    import threading
    import time

    deadline = time.monotonic() + timeout
    for thread in [t for t in threading.enumerate() if t.name.startswith("asyncio_")]:
        thread.join(max(deadline - time.monotonic(), 0.01))
