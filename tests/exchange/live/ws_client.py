"""A trading client, as a separate process, using only the public `websockets` library (no Django).

It keeps a local book from /ws/market/<id>/ (snapshot, then updates) and checks, after every message, that
the update seqs have no gap and that its own top-10 checksum (the documented algorithm, recomputed here)
equals the message's. Meanwhile it trades over /ws/user/ (token auth): places, cancels and amends orders,
each answered by an ack or error frame, and checks the user stream's per-connection seq.

Protocol with the test: prints "READY" once subscribed (its snapshot in) and waits for "GO" on stdin, so every
client sees every trade; prints "PLACED" when its orders are done, then waits for "FINISH <seq>" on stdin,
waits until its book reaches that seq, and prints one JSON line with what it saw.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import random
import sys
import time
import zlib

from websockets.asyncio.client import connect


class LocalBook:
    def __init__(self, snapshot: dict) -> None:
        self.seq = snapshot["seq"]
        self.bids = {p: q for p, q in snapshot["bids_fen_per_lot"]}
        self.asks = {p: q for p, q in snapshot["asks_fen_per_lot"]}

    def levels(self) -> tuple[list, list]:
        return sorted(self.bids.items(), key=lambda x: -x[0]), sorted(self.asks.items())

    def checksum(self) -> int:
        bids, asks = self.levels()
        bids, asks = bids[:10], asks[:10]
        parts = []
        for i in range(max(len(bids), len(asks))):
            if i < len(bids):
                parts.append(f"{bids[i][0]}:{bids[i][1]}")
            if i < len(asks):
                parts.append(f"{asks[i][0]}:{asks[i][1]}")
        return zlib.crc32(":".join(parts).encode("ascii"))


class Client:
    def __init__(self, args) -> None:
        self.args = args
        self.book: LocalBook | None = None
        self.errors: list[str] = []
        self.counts = {"book_messages": 0, "updates": 0, "trades": 0, "tickers": 0, "heartbeats": 0, "resyncs": 0, "conflated": 0,
                       "user_events": 0, "acks": 0, "refusals": 0}
        self.user_seq = 0
        self.organisations: set[int] = set()
        self.pending: dict[int, asyncio.Future] = {}
        self.ids = itertools.count(1)
        self.open_orders: set[int] = set()
        self.latencies: list[float] = []
        self.advanced = asyncio.Event()

    async def read_market(self, ws) -> None:
        async for raw in ws:
            msg = json.loads(raw)
            kind = msg["type"]
            if kind == "snapshot":
                if self.book is not None:
                    self.counts["resyncs"] += 1
                self.book = LocalBook(msg)
                if self.book.checksum() != msg["checksum"]:
                    self.errors.append(f"snapshot {msg['seq']}: checksum {self.book.checksum()} != {msg['checksum']}")
            elif kind == "book":
                book = self.book
                # A message covers seqs first..seq; a conflated one has one update per level that changed.
                if msg["first"] != book.seq + 1:
                    self.errors.append(f"gap: had {book.seq}, message from {msg['first']}")
                if msg.get("conflated"):
                    self.counts["conflated"] += 1
                for u in msg["updates"]:
                    if msg.get("conflated") and not book.seq < u["seq"] <= msg["seq"]:
                        self.errors.append(f"conflated update seq {u['seq']} outside {book.seq}..{msg['seq']}")
                    elif not msg.get("conflated") and u["seq"] != book.seq + 1:
                        self.errors.append(f"gap: had {book.seq}, got {u['seq']}")
                    book.seq = u["seq"]
                    side = book.bids if u["side"] == "buy" else book.asks
                    if u["quantity"]:
                        side[u["price_fen_per_lot"]] = u["quantity"]
                    else:
                        side.pop(u["price_fen_per_lot"], None)
                    if u["price"] != f"{u['price_fen_per_lot'] // 100}.{u['price_fen_per_lot'] % 100:02d}":
                        self.errors.append(f"price {u['price']} for {u['price_fen_per_lot']} fen per lot")
                    self.counts["updates"] += 1
                self.counts["book_messages"] += 1
                if msg["seq"] != book.seq:
                    self.errors.append(f"message seq {msg['seq']} after updates to {book.seq}")
                book.seq = msg["seq"]
                if book.checksum() != msg["checksum"]:
                    self.errors.append(f"seq {book.seq}: checksum {book.checksum()} != {msg['checksum']}")
            elif kind == "heartbeat":
                self.counts["heartbeats"] += 1
                if msg["seq"] != self.book.seq:
                    self.errors.append(f"heartbeat seq {msg['seq']} but book at {self.book.seq}")
            elif kind in ("trade", "ticker"):
                self.counts[kind + "s"] += 1
            else:
                self.errors.append(f"market: unexpected {raw[:200]}")
            self.advanced.set()

    async def read_user(self, ws) -> None:
        async for raw in ws:
            msg = json.loads(raw)
            kind = msg["type"]
            if kind == "order":
                self.counts["user_events"] += 1
                if msg["seq"] != self.user_seq + 1:
                    self.errors.append(f"user stream: seq {msg['seq']} after {self.user_seq}")
                self.user_seq = msg["seq"]
                if msg["organisation"] not in self.organisations:
                    self.errors.append(f"user stream: an event of organisation {msg['organisation']}")
                if msg["status"] != "open":
                    self.open_orders.discard(msg["id"])
            elif kind in ("ack", "error"):
                future = self.pending.pop(msg.get("request_id"), None)
                if future is None:
                    self.errors.append(f"user: answer to nothing {raw[:200]}")
                else:
                    future.set_result(msg)
            elif kind != "heartbeat":
                self.errors.append(f"user: unexpected {raw[:200]}")

    async def request(self, ws, body: dict) -> dict:
        rid = next(self.ids)
        future = asyncio.get_running_loop().create_future()
        self.pending[rid] = future
        started = time.perf_counter()
        await ws.send(json.dumps({**body, "request_id": rid}))
        answer = await asyncio.wait_for(future, 10)
        self.latencies.append(time.perf_counter() - started)
        if answer["type"] == "ack":
            self.counts["acks"] += 1
        elif answer["code"] in ("invalid",) and body["type"] in ("cancel", "amend"):
            self.counts["refusals"] += 1  # the order filled or went meanwhile: a normal race between traders
        else:
            self.errors.append(f"{body['type']} refused: {answer}")
        return answer

    async def trade(self, ws) -> None:
        a, rng = self.args, random.Random(self.args.seed)
        for i in range(a.orders):
            fen = 1500 + rng.randint(-a.spread, a.spread)
            answer = await self.request(ws, {
                "type": "place", "instrument": a.instrument, "side": a.side, "price": f"{fen // 100}.{fen % 100:02d}",
                "quantity": rng.randint(1, 3), "client_order_id": f"{a.name}-{i}",
            })
            if answer["type"] == "ack" and answer["order"]["status"] == "open":
                self.open_orders.add(answer["order"]["id"])
            if i % 5 == 4 and self.open_orders:
                await self.request(ws, {"type": "cancel", "order": rng.choice(sorted(self.open_orders))})
            elif i % 7 == 6 and self.open_orders:
                fen = 1500 + rng.randint(-a.spread, a.spread)
                await self.request(ws, {"type": "amend", "order": rng.choice(sorted(self.open_orders)), "price": f"{fen // 100}.{fen % 100:02d}"})

    async def run(self) -> dict:
        a = self.args
        headers = {"Authorization": f"Token {a.token}"}
        origin = a.origin or http_origin(a.url)  # the server refuses a handshake without one of its Origins
        async with connect(f"{a.url}/ws/market/{a.instrument}/", origin=origin, open_timeout=10) as market, \
                connect(f"{a.url}/ws/user/", origin=origin, additional_headers=headers, open_timeout=10) as user:
            welcome = json.loads(await user.recv())
            assert welcome["type"] == "welcome", welcome
            self.organisations = set(welcome["organisations"])
            tasks = [asyncio.create_task(self.read_market(market)), asyncio.create_task(self.read_user(user))]
            deadline = time.monotonic() + 20
            while self.book is None and time.monotonic() < deadline:  # subscribed: the snapshot is in
                await asyncio.sleep(0.02)
            print("READY", flush=True)
            await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)  # "GO": every client is subscribed
            await self.trade(user)
            print("PLACED", flush=True)
            line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
            target = int(line.split()[1])
            deadline = time.monotonic() + 20
            while (self.book is None or self.book.seq < target) and time.monotonic() < deadline:
                self.advanced.clear()
                try:
                    await asyncio.wait_for(self.advanced.wait(), 1)
                except TimeoutError:
                    pass
            await asyncio.sleep(0.2)  # trailing trades and tickers
            for task in tasks:
                task.cancel()
        bids, asks = self.book.levels()
        lat = sorted(self.latencies)
        return {
            "name": a.name, "seq": self.book.seq, "checksum": self.book.checksum(), "bids": bids, "asks": asks,
            "errors": self.errors, "counts": self.counts, "user_seq": self.user_seq,
            "ack_ms": {"p50": round(lat[len(lat) // 2] * 1000, 2), "p99": round(lat[int(len(lat) * 0.99)] * 1000, 2), "n": len(lat)} if lat else None,
        }


def http_origin(url: str) -> str:
    """ws://host:port -> http://host:port (wss -> https): the Origin a page served by that host would send."""
    scheme, _, rest = url.partition("://")
    return f"{'https' if scheme == 'wss' else 'http'}://{rest.split('/', 1)[0]}"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True, help="ws://host:port")
    p.add_argument("--instrument", type=int, required=True)
    p.add_argument("--token", required=True)
    p.add_argument("--side", choices=["buy", "sell"], required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--orders", type=int, default=30)
    p.add_argument("--spread", type=int, default=8, help="prices are 15.00 +- this many ticks")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--origin", default=None, help="the Origin header to send (default: the --url's host as http(s)://)")
    result = asyncio.run(Client(p.parse_args()).run())
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
