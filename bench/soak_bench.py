"""Soak: orders, cancels, metering batches and market-data subscribers at once for minutes, on the production
shape, then "nothing lost" checks.

Usage::

    .venv/bin/python bench/soak_bench.py [--seconds 600] [--order-rate 15] [--cancel-rate 5] [--metering-rate 1]
        [--metering-batch 50] [--subscribers 20] [--connections 4] [--fresh]

DATABASE_URL names the bench database (default postgres://postgres@127.0.0.1:5432/suanli_soak; created if
missing, then migrated); REDIS_URL the Redis database of the matcher transport and the channel layer (default
redis://127.0.0.1:6379/10, flushed at start).

Stack: ``manage.py runmatcher`` (one shard, MATCHER_TRANSPORT=redis) and one uvicorn process serving
config.asgi (REST and websockets; bench/exchange_bench.py's ``uvicorn_start``), both on PostgreSQL. Market:
bench/exchange_bench.py's (20 buyers, 5 suppliers, one traded day instrument) plus bench/metering_bench.py's
delivering contracts (4 of 2,000 lots; traded through the inline matcher during setup).

Load (bounded: each stream paces itself to its rate and waits for each answer, so a slow server slows the
load instead of piling it up), all from this process (asyncio, keep-alive HTTP/1.1 on loopback):
- orders: POST /api/v1/orders/, exchange_bench's mix (60% GTC 1-10 ticks behind the mid, 40% IOC through it)
  at ``--order-rate`` per second over ``--connections`` connections;
- cancels: DELETE /api/v1/orders/<id>/ of one of the 20 newest orders acknowledged open, at ``--cancel-rate``
  (a 400 when the order was filled meanwhile: counted by status, not an error);
- metering: POST /api/v1/metering/events/ batches of ``--metering-batch`` events (1% repeats of an event
  already sent, answered as duplicates) at ``--metering-rate`` batches per second;
- ``--subscribers`` websockets on /ws/market/<instrument>/ rebuilding the book from the snapshot and the
  updates (a gap or a checksum mismatch is counted and answered with a resync).
Every ``--sample`` seconds the RSS of the uvicorn and matcher processes is read from /proc.

Reported: count, errors (5xx, transport errors) and p50/p99 latency per operation; RSS medians of the first
and last minute (a quarter of the run if shorter) and their ratio; the load average. Checks after the load:
every order acknowledged (201/200) is stored, in a state its acknowledgement and later answers allow (an order
acknowledged open and not cancelled may be open or filled (or expired); a cancel answered 200 leaves it
cancelled; an order answered filled or cancelled stays so); stored orders = 201 answers + 202 answers at most;
exchange_bench's book/ledger checks (trades = contracts, lots bought = sold, no hold on a final order,
``ledger_verify``); every accepted metering event is stored once (and none of the repeats); metering_bench's
delivery checks; each subscriber's book (seq, checksum and every level) equals a fresh snapshot's once the
load has stopped. The last line printed is JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import secrets
import statistics
import sys
import tempfile
import time
import zlib
from collections import defaultdict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "bench"))

import exchange_bench as xb  # noqa: E402
import metering_bench as mb  # noqa: E402

DEFAULT_URL = "postgres://postgres@127.0.0.1:5432/suanli_soak"
DEFAULT_REDIS = "redis://127.0.0.1:6379/10"


# --- Minimal keep-alive HTTP/1.1 client -------------------------------------------------------------------


class Http:
    def __init__(self, port: int) -> None:
        self.port, self.reader, self.writer = port, None, None

    async def request(self, method: str, path: str, token: str, body: bytes = b"") -> tuple[int, bytes]:
        for attempt in (1, 2):
            if self.writer is None:
                self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
            head = (f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\nAuthorization: Token {token}\r\n"
                    f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()
            try:
                self.writer.write(head + body)
                line = await self.reader.readline()
                if not line:
                    raise ConnectionError("closed")
                status = int(line.split(b" ", 2)[1])
                length, close = 0, False
                while (h := await self.reader.readline()) not in (b"\r\n", b""):
                    name, _, value = h.partition(b":")
                    name = name.strip().lower()
                    if name == b"content-length":
                        length = int(value)
                    elif name == b"connection" and value.strip().lower() == b"close":
                        close = True
                data = await self.reader.readexactly(length) if length else b""
                if close:
                    self.close()
                return status, data
            except (ConnectionError, asyncio.IncompleteReadError, OSError):
                self.close()
                if attempt == 2 or method != "GET":
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


class Stats:
    """Per operation: latencies, answers by status, transport errors."""

    def __init__(self) -> None:
        self.lat: dict[str, list[float]] = defaultdict(list)
        self.status: dict[str, dict[int, int]] = defaultdict(lambda: defaultdict(int))
        self.errors: dict[str, list[str]] = defaultdict(list)

    def record(self, op: str, t0: float, status: int) -> None:
        self.lat[op].append(time.perf_counter() - t0)
        self.status[op][status] += 1

    def summary(self) -> dict:
        out = {}
        for op in sorted(set(self.lat) | set(self.errors)):
            lat = sorted(self.lat[op])
            p50, p99 = (round(lat[min(len(lat) - 1, int(q * len(lat)))] * 1000, 1) if lat else None for q in (0.5, 0.99))
            st = self.status[op]
            out[op] = {"count": len(lat), "p50_ms": p50, "p99_ms": p99, "statuses": {str(k): v for k, v in sorted(st.items())},
                       "5xx": sum(v for k, v in st.items() if k >= 500), "transport_errors": len(self.errors[op]),
                       "error_samples": self.errors[op][:3]}
        return out


async def paced(rate: float, until: float, step) -> None:
    """Call `step` about `rate` times a second until `until` (never faster; slower if answers are slow)."""
    interval, t_next = 1.0 / rate, time.monotonic()
    while time.monotonic() < until:
        await step()
        t_next += interval
        delay = t_next - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        else:
            t_next = time.monotonic()


# --- Market-data subscriber --------------------------------------------------------------------------------


def checksum(bids: dict[int, int], asks: dict[int, int]) -> int:
    b, a = sorted(bids.items(), reverse=True)[:10], sorted(asks.items())[:10]
    parts = []
    for i in range(10):
        if i < len(b):
            parts.append(f"{b[i][0]}:{b[i][1]}")
        if i < len(a):
            parts.append(f"{a[i][0]}:{a[i][1]}")
    return zlib.crc32(":".join(parts).encode())


class Subscriber:
    def __init__(self, port: int, instrument: int) -> None:
        self.port, self.instrument = port, instrument
        self.bids: dict[int, int] = {}
        self.asks: dict[int, int] = {}
        self.seq = -1
        self.counts = defaultdict(int)
        self.ws = None

    def snapshot(self, msg: dict) -> None:
        self.bids = {p: q for p, q in msg["bids_fen_per_lot"]}
        self.asks = {p: q for p, q in msg["asks_fen_per_lot"]}
        self.seq = msg["seq"]
        self.counts["snapshots"] += 1

    async def run(self, stop: asyncio.Event) -> None:
        from websockets.asyncio.client import connect

        url = f"ws://127.0.0.1:{self.port}/ws/market/{self.instrument}/"
        while not stop.is_set():
            try:
                async with connect(url, origin=f"http://127.0.0.1:{self.port}", compression=None, open_timeout=60, max_queue=None) as ws:
                    self.ws = ws
                    self.counts["connects"] += 1
                    async for text in ws:
                        self.on(json.loads(text))
            except Exception as exc:  # counted; the subscriber reconnects (a 4008 close, a restart)
                if stop.is_set():
                    return
                self.counts["disconnects"] += 1
                self.counts["last_error:" + type(exc).__name__] += 1
                await asyncio.sleep(0.5)

    def on(self, msg: dict) -> None:
        kind = msg.get("type")
        if kind == "snapshot":
            self.snapshot(msg)
        elif kind == "book":
            self.counts["book_messages"] += 1
            if msg["first"] != self.seq + 1:
                self.counts["gaps"] += 1
                asyncio.ensure_future(self.ws.send(json.dumps({"type": "resync"})))
                return
            for u in msg["updates"]:
                side = self.bids if u["side"] == "buy" else self.asks
                if u["quantity"]:
                    side[u["price_fen_per_lot"]] = u["quantity"]
                else:
                    side.pop(u["price_fen_per_lot"], None)
            self.seq = msg["seq"]
            if checksum(self.bids, self.asks) != msg["checksum"]:
                self.counts["checksum_mismatches"] += 1
                asyncio.ensure_future(self.ws.send(json.dumps({"type": "resync"})))
        elif kind == "trade":
            self.counts["trades"] += 1
        elif kind == "heartbeat" and msg.get("seq", -1) > self.seq:
            self.counts["heartbeat_ahead"] += 1


async def fresh_snapshot(port: int, instrument: int) -> dict:
    from websockets.asyncio.client import connect

    async with connect(f"ws://127.0.0.1:{port}/ws/market/{instrument}/", origin=f"http://127.0.0.1:{port}", open_timeout=60) as ws:
        return json.loads(await ws.recv())


# --- Memory ------------------------------------------------------------------------------------------------


def rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


# --- The soak ----------------------------------------------------------------------------------------------


async def soak(args, port: int, spec: dict, mspec: dict, pids: dict[str, int], tag: str) -> dict:
    stats = Stats()
    rng = random.Random(7)
    acks: dict[str, dict] = {}  # client_order_id -> {id, token, status (at ack), filled, cancelled}
    open_ids: list[str] = []
    unconfirmed = [0]
    metering = {"accepted": 0, "duplicates": 0, "rejected": 0, "sent_ids": []}
    rss: list[tuple[float, dict[str, float]]] = []
    stop = asyncio.Event()
    t_start = time.monotonic()
    until = t_start + args.seconds
    payloads = xb._order_payloads(rng, spec, tag)
    instrument = spec["instruments"][0]

    async def order_stream(conn: Http) -> None:
        async def step() -> None:
            token, body = next(payloads)
            t0 = time.perf_counter()
            try:
                status, data = await conn.request("POST", xb.ORDER_PATH, token, body)
            except Exception as exc:
                stats.errors["order"].append(repr(exc)[:200])
                return
            stats.record("order", t0, status)
            if status in (200, 201, 202):
                o = json.loads(data)
                if status == 202:
                    unconfirmed[0] += 1
                # 202 (the matcher did not answer in time): queued, no id yet; it must be stored all the same.
                acks[o["client_order_id"]] = {"id": o.get("id"), "token": token, "status": o.get("status", "pending"),
                                              "filled": o.get("filled_quantity", 0), "cancelled": False, "code": status}
                if o["status"] == "open":
                    open_ids.append(o["client_order_id"])
        await paced(args.order_rate / args.connections, until, step)

    async def cancel_stream(conn: Http) -> None:
        async def step() -> None:
            if not open_ids:
                return
            # One of the newest: older resting orders are mostly filled by the IOC flow already (a 400 then).
            coid = open_ids.pop(rng.randrange(max(0, len(open_ids) - 20), len(open_ids)))
            a = acks[coid]
            t0 = time.perf_counter()
            try:
                status, data = await conn.request("DELETE", f"{xb.ORDER_PATH}{a['id']}/", a["token"])
            except Exception as exc:
                stats.errors["cancel"].append(repr(exc)[:200])
                return
            stats.record("cancel", t0, status)
            if status == 200:
                a["cancelled"] = True
                a["cancel_status"] = json.loads(data)["status"]
        await paced(args.cancel_rate, until, step)

    async def metering_stream(conn: Http) -> None:
        round_no = [0]

        async def step() -> None:
            round_no[0] += 1
            batch = mb._events(mspec, rng, round_no[0], args.metering_batch, 0.0, args.metering_batch, tag)[0]
            if metering["sent_ids"] and rng.random() < 0.5:  # a retry of an event already sent
                batch[-1] = dict(batch[-1], event_id=rng.choice(metering["sent_ids"]))
            t0 = time.perf_counter()
            try:
                status, data = await conn.request("POST", "/api/v1/metering/events/", mspec["token"], json.dumps({"events": batch}).encode())
            except Exception as exc:
                stats.errors["metering"].append(repr(exc)[:200])
                return
            stats.record("metering", t0, status)
            if status == 200:
                ans = json.loads(data)
                metering["accepted"] += ans["accepted"]
                metering["duplicates"] += ans["duplicates"]
                metering["rejected"] += ans["rejected"]
                metering["sent_ids"].extend(e["event_id"] for e in batch[:5])
        await paced(args.metering_rate, until, step)

    async def sampler() -> None:
        while not stop.is_set():
            rss.append((time.monotonic() - t_start, {name: rss_mb(pid) for name, pid in pids.items()}))
            try:
                await asyncio.wait_for(stop.wait(), args.sample)
            except TimeoutError:
                pass

    subs = [Subscriber(port, instrument) for _ in range(args.subscribers)]
    sub_tasks = [asyncio.create_task(s.run(stop)) for s in subs]
    sampler_task = asyncio.create_task(sampler())
    conns = [Http(port) for _ in range(args.connections + 2)]
    loads = [order_stream(c) for c in conns[: args.connections]]
    loads += [cancel_stream(conns[-2]), metering_stream(conns[-1])]
    await asyncio.gather(*loads)
    elapsed = time.monotonic() - t_start
    load_end = os.getloadavg()
    # Quiet: let the matcher and the feeds catch up, then compare every subscriber's book with a fresh snapshot.
    await asyncio.sleep(3)
    snap = await fresh_snapshot(port, instrument)
    for _ in range(20):
        if all(s.seq == snap["seq"] for s in subs):
            break
        await asyncio.sleep(0.5)
        snap = await fresh_snapshot(port, instrument)
    want = ({p: q for p, q in snap["bids_fen_per_lot"]}, {p: q for p, q in snap["asks_fen_per_lot"]})
    books_match = sum(1 for s in subs if s.seq == snap["seq"] and (s.bids, s.asks) == want and checksum(s.bids, s.asks) == snap["checksum"])
    stop.set()
    for s in subs:
        if s.ws is not None:
            await s.ws.close()
    await asyncio.gather(*sub_tasks, return_exceptions=True)
    await sampler_task
    for c in conns:
        c.close()
    sub_counts: dict[str, int] = defaultdict(int)
    for s in subs:
        for k, v in s.counts.items():
            sub_counts[k] += v
    return {"elapsed": elapsed, "stats": stats, "acks": acks, "unconfirmed": unconfirmed[0], "metering": metering, "rss": rss,
            "subscribers": {"count": len(subs), "books_match_snapshot": books_match, "snapshot_seq": snap["seq"],
                            "snapshot_checksum": snap["checksum"], **dict(sub_counts)},
            "load_end": load_end}


def rss_summary(rss: list[tuple[float, dict[str, float]]], seconds: float) -> dict:
    window = min(60.0, seconds / 4)
    out = {}
    for name in rss[0][1] if rss else ():
        first = [r[name] for t, r in rss if t <= window]
        last = [r[name] for t, r in rss if t >= seconds - window]
        f, la = statistics.median(first or [0]), statistics.median(last or [0])
        out[name] = {"first_mb": round(f, 1), "last_mb": round(la, 1), "ratio": round(la / f, 3) if f else None,
                     "max_mb": round(max(r[name] for _, r in rss), 1)}
    out["window_s"] = window
    return out


def order_checks(acks: dict[str, dict], tag: str, created: int, unconfirmed: int) -> dict:
    from exchange.models import Order

    stored = {o.client_order_id: o for o in Order.objects.filter(client_order_id__startswith=f"{tag}-")}
    missing, wrong = [], []
    allowed_after = {"open": {"open", "filled", "cancelled", "expired"}, "pending": {"open", "filled", "cancelled", "expired", "rejected"}}
    for coid, a in acks.items():
        o = stored.get(coid)
        if o is None or a["id"] not in (None, o.pk):
            missing.append(coid)
            continue
        if a["cancelled"]:
            ok = o.status == a["cancel_status"]
        elif a["status"] in allowed_after:
            # "cancelled" from open only when the cancel's answer was lost (counted) or the instrument closed.
            ok = o.status in allowed_after[a["status"]] and o.filled_quantity >= a["filled"]
        else:
            ok = o.status == a["status"] and o.filled_quantity == a["filled"]
        if not ok:
            wrong.append(f"{coid}: ack {a['status']} cancel {a.get('cancel_status')} db {o.status}")
    return {"acknowledged": len(acks), "stored_tagged": len(stored), "missing": len(missing), "missing_samples": missing[:5],
            "wrong_state": len(wrong), "wrong_samples": wrong[:5],
            "ok": not missing and not wrong and created <= len(stored) <= created + unconfirmed}


def metering_checks(mspec: dict, tag: str, metering: dict) -> dict:
    from django.db.models import Count

    from metering.models import UsageEvent

    mine = UsageEvent.objects.filter(event_id__startswith=f"{tag}-")
    repeated = mine.values("event_id").annotate(n=Count("pk")).filter(n__gt=1).count()
    out = mb.checks(mspec, metering["accepted"])
    out.update(tagged_stored=mine.count(), stored_twice=repeated, duplicates_answered=metering["duplicates"],
               rejected_answered=metering["rejected"])
    out["ok"] = bool(out["deliveries_consistent"] and out["ledger_ok"] and repeated == 0 and mine.count() == metering["accepted"])
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=600)
    p.add_argument("--order-rate", type=float, default=15, help="orders per second (all connections)")
    p.add_argument("--cancel-rate", type=float, default=5, help="cancels per second")
    p.add_argument("--metering-rate", type=float, default=1, help="metering batches per second")
    p.add_argument("--metering-batch", type=int, default=50, help="events per metering batch")
    p.add_argument("--subscribers", type=int, default=20, help="market-data websockets")
    p.add_argument("--connections", type=int, default=4, help="HTTP connections for orders")
    p.add_argument("--sample", type=float, default=5, help="seconds between RSS samples")
    p.add_argument("--buyers", type=int, default=20)
    p.add_argument("--sellers", type=int, default=5)
    p.add_argument("--fresh", action="store_true", help="drop and recreate the bench database first")
    args = p.parse_args()

    url = os.environ.get("DATABASE_URL", DEFAULT_URL)
    redis_url = os.environ.get("REDIS_URL", DEFAULT_REDIS)
    xb.database_ensure(url, fresh=args.fresh)
    xb._django_setup(url, redis_url, 1)
    import redis
    from django.core.management import call_command
    from django.db import connection
    from django.test import override_settings

    from exchange import transport

    call_command("migrate", verbosity=0)
    redis.Redis.from_url(redis_url).flushdb()
    load_start = os.getloadavg()
    spec = xb.market_prepare(buyers=args.buyers, sellers=args.sellers, shards=1)
    tag = f"s{secrets.token_hex(3)}"
    with override_settings(MATCHER_TRANSPORT="inline"):  # the metering contracts trade during setup
        transport._client = None
        mspec = mb.market_prepare(contracts=4, tag=f"{tag}m")  # its orders are not the soak's
    transport._client = None
    connection.close()

    logdir = tempfile.mkdtemp(prefix="soak-")
    env = xb._server_env(dict(os.environ), url, redis_url, 1, "config.settings")
    services: list[xb.Service] = []
    try:
        matcher = xb.Service("matcher0", [sys.executable, "manage.py", "runmatcher", "--shard", "0", "--shards", "1"], env, logdir)
        services.append(matcher)
        matcher.wait_for_log("serving", 60)
        port = xb._free_port()
        web = xb.uvicorn_start("uvicorn", port, env, logdir)
        services.append(web)
        print(f"soak {tag}: uvicorn :{port} + matcher, {args.seconds:.0f} s; orders {args.order_rate}/s, cancels {args.cancel_rate}/s, "
              f"metering {args.metering_rate} x {args.metering_batch} events/s, {args.subscribers} subscribers; logs in {logdir}", flush=True)
        result = asyncio.run(soak(args, port, spec, mspec, {"uvicorn": web.proc.pid, "matcher": matcher.proc.pid}, tag))
        ops = result["stats"].summary()
        created = ops.get("order", {}).get("statuses", {}).get("201", 0)
        for op, o in ops.items():  # before the checks, which need a database connection the shared server may refuse
            print(f"{op} {o}", flush=True)
        with open(web.log_path) as f:
            log = f.read()
        # On a shared PostgreSQL server other users can take every connection (max_connections): say so.
        server_errors = {"logged_500": log.count("Internal Server Error"), "postgres_refused_connections": log.count("too many clients")}
        print(f"server log: {server_errors}", flush=True)
        connection.close()
        for _ in range(60):
            try:
                connection.ensure_connection()
                break
            except Exception:
                time.sleep(1)
        xchecks = xb.run_checks(spec["instruments"], [tag], created, result["unconfirmed"])
        ochecks = order_checks(result["acks"], tag, created, result["unconfirmed"])
        mchecks = metering_checks(mspec, tag, result["metering"])
    finally:
        for svc in reversed(services):
            svc.stop()
    subs = result["subscribers"]
    mem = rss_summary(result["rss"], result["elapsed"])
    five_xx = sum(o["5xx"] for o in ops.values())
    transport_errors = sum(o["transport_errors"] for o in ops.values())
    books_ok = subs["books_match_snapshot"] == subs["count"]
    for op, o in ops.items():
        print(f"{op:9s} {o['count']:7d}  p50 {o['p50_ms']} ms  p99 {o['p99_ms']} ms  statuses {o['statuses']}  5xx {o['5xx']}  "
              f"transport errors {o['transport_errors']} {o['error_samples']}")
    print(f"memory (MB, median of first vs last {mem['window_s']:.0f} s): "
          + ", ".join(f"{k} {v['first_mb']} -> {v['last_mb']} (x{v['ratio']}, max {v['max_mb']})" for k, v in mem.items() if k != "window_s"))
    print(f"subscribers: {subs}")
    print(f"orders: {ochecks}")
    print(f"exchange checks: {xchecks}")
    print(f"metering: {mchecks}")
    print(f"load average: start {load_start[0]:.1f}, end {result['load_end'][0]:.1f} (1 min), {result['load_end'][2]:.1f} (15 min)")
    summary = {
        "seconds": round(result["elapsed"], 1),
        **{f"{op}_count": o["count"] for op, o in ops.items()},
        **{f"{op}_p50_ms": o["p50_ms"] for op, o in ops.items()},
        **{f"{op}_p99_ms": o["p99_ms"] for op, o in ops.items()},
        "http_5xx": five_xx, "transport_errors": transport_errors, **server_errors,
        "rss_first_mb": {k: v["first_mb"] for k, v in mem.items() if k != "window_s"},
        "rss_last_mb": {k: v["last_mb"] for k, v in mem.items() if k != "window_s"},
        "subscribers": subs["count"], "books_match": subs["books_match_snapshot"], "ws_gaps": subs.get("gaps", 0),
        "ws_checksum_mismatches": subs.get("checksum_mismatches", 0),
        "orders_acknowledged": ochecks["acknowledged"], "orders_missing": ochecks["missing"], "orders_wrong_state": ochecks["wrong_state"],
        "metering_events_accepted": result["metering"]["accepted"], "metering_stored_twice": mchecks["stored_twice"],
        "loadavg_start": round(load_start[0], 2), "loadavg_end": round(result["load_end"][0], 2),
        "nothing_lost": bool(ochecks["ok"] and xchecks.get("ok") and mchecks["ok"] and books_ok),
        "ok": bool(five_xx == 0 and transport_errors == 0 and ochecks["ok"] and xchecks.get("ok") and mchecks["ok"] and books_ok),
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
