"""Market-data fan-out: latency from the publish call to every websocket subscriber of one instrument.

Usage::

    .venv/bin/python bench/fanout_bench.py [--scenarios 1000x50,5000x10] [--seconds 10] [--rounds 2]
        [--kind book|plain] [--client raw|websockets] [--client-procs 2] [--server-procs 1]
        [--ws-impl websockets-sansio] [--fresh]

DATABASE_URL names the bench database (default postgres://postgres@127.0.0.1:5432/suanli_fbench; created and
migrated if missing; the market of bench/exchange_bench.py is set up with 2 buyers and 2 suppliers, and its
first open instrument is the one watched). REDIS_URL (default redis://127.0.0.1:6379/11, flushed at start)
is the channel layer shared by the server and the publisher.

Stack: ``--server-procs`` uvicorn processes (``--workers``; each keeps its own MarketHub group member) serving
config.asgi (origin check; the market stream without session middleware) and the Redis channel layer.
Subscribers connect to /ws/market/<id>/ from ``--client-procs`` processes, read their snapshot, then wait.
``--client raw`` (default) is a minimal asyncio websocket client (handshake, frame parsing, pong, close;
no masking work since it sends nothing but pongs), so that the load generator, which shares the 2 cores,
costs less than the server; ``--client websockets`` is the `websockets` library client, for comparison.
This process is the publisher: it calls exchange.publish.publish([Publication.market(id, payload)]) -- the
code the matcher runs after a batch commits (envelope, one group_send per message over the Redis layer from
the publisher loop) -- at the scenario's rate.

``--kind book`` (default): each publication is a real book message (one level update, seq n, the checksum of
the publisher's book), so a socket that is behind gets conflated frames. The book's seq is set in BookState
before each round, so snapshots and updates line up. ``--kind plain``: an opaque message (never conflated).
Every publication n has its publish time (time.time_ns() just before the call); each subscriber records,
per frame, the seqs it covers (`first`..`seq`) and time.time_ns() on receipt. Latency of publication n at
a subscriber = receipt of the first frame covering n - publish time of n; same machine, same clock.

A scenario ``NxR`` is N subscribers and R publications per second. For each round: publish for ``--seconds``
(plus 1 s unmeasured), wait 2 s for stragglers, then count. Reported: p50/p99/max over every (publication,
subscriber) pair of the window, deliveries expected vs received, frames per delivery (< 1: conflated),
sockets closed by the server (4008), and CPU per delivery of the server, the clients, Redis and the
publisher, from /proc. Goals: 1000x50 p99 < 30 ms; 5000x10 p99 < 150 ms. The last line printed is JSON.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import statistics
import sys
import tempfile
import time
from array import array
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "bench"))

import exchange_bench as xb  # noqa: E402

DEFAULT_URL = "postgres://postgres@127.0.0.1:5432/suanli_fbench"
DEFAULT_REDIS = "redis://127.0.0.1:6379/11"
GOALS = {(1000, 50): 30.0, (5000, 10): 150.0}


def _raise_fd_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _int_after(buf: bytes, key: bytes, start: int, end: int) -> int | None:
    i = buf.find(key, start, end)
    if i < 0:
        return None
    i += len(key)
    while buf[i] == 32:
        i += 1
    j = i
    while 48 <= buf[j] <= 57:
        j += 1
    return int(buf[i:j])


def _subscriber_main(index: int, port: int, instrument: int, sockets: int, client: str, ready, go, results) -> None:
    import asyncio
    import base64

    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    _raise_fd_limit()
    firsts, seqs, stamps = array("q"), array("q"), array("q")  # per received frame that covers publications
    counts = {"connected": 0, "connect_errors": 0, "snapshots": 0, "received": 0, "closed": 0}
    close_codes: dict[str, int] = {}
    errors: list[str] = []
    now = time.time_ns

    def on_text(buf, start: int, end: int) -> None:
        t_recv = now()
        counts["received"] += 1
        first = _int_after(buf, b'"first":', start, min(end, start + 80))
        if first is None:
            return  # snapshot, heartbeat
        firsts.append(first)
        seqs.append(_int_after(buf, b'"seq":', start, end))
        stamps.append(t_recv)

    class Raw(asyncio.Protocol):
        """Just enough of RFC 6455 for a subscriber: handshake, unmasked server frames, pong, close."""

        def __init__(self, opened: asyncio.Future) -> None:
            self.opened, self.state, self.buf, self.transport = opened, 0, b"", None

        def connection_made(self, transport) -> None:
            self.transport = transport
            key = base64.b64encode(os.urandom(16))
            # The server refuses a handshake without one of its Origins (exchange.ws_auth).
            transport.write(b"GET /ws/market/%d/ HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nOrigin: http://127.0.0.1:%d\r\n"
                            b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n"
                            % (instrument, port, port, key))

        def data_received(self, data: bytes) -> None:
            buf = self.buf + data if self.buf else data
            if self.state == 0:
                i = buf.find(b"\r\n\r\n")
                if i < 0:
                    self.buf = buf
                    return
                if not buf.startswith(b"HTTP/1.1 101"):
                    self.opened.set_exception(RuntimeError(buf[:60].decode("latin1")))
                    self.transport.close()
                    return
                self.state = 1
                buf = buf[i + 4:]
            pos, n = 0, len(buf)
            while n - pos >= 2:
                size, head = buf[pos + 1] & 0x7F, 2
                if size == 126:
                    if n - pos < 4:
                        break
                    size, head = int.from_bytes(buf[pos + 2:pos + 4], "big"), 4
                elif size == 127:
                    if n - pos < 10:
                        break
                    size, head = int.from_bytes(buf[pos + 2:pos + 10], "big"), 10
                end = pos + head + size
                if end > n:
                    break
                op = buf[pos] & 0x0F
                if op == 1:
                    if self.state == 1:
                        self.state = 2
                        if b'"snapshot"' in buf[pos + head:pos + head + 40]:
                            counts["snapshots"] += 1
                        if not self.opened.done():
                            self.opened.set_result(None)
                    else:
                        on_text(buf, pos + head, end)
                elif op == 9:  # ping -> pong (client frames are masked; a zero mask leaves the payload as is)
                    payload = buf[pos + head:end]
                    self.transport.write(bytes((0x8A, 0x80 | len(payload))) + b"\0\0\0\0" + payload)
                elif op == 8:
                    code = int.from_bytes(buf[pos + head:pos + head + 2], "big") if size >= 2 else 1005
                    close_codes[str(code)] = close_codes.get(str(code), 0) + 1
                    self.transport.close()
                pos = end
            self.buf = buf[pos:] if pos < n else b""

        def connection_lost(self, exc) -> None:
            counts["closed"] += 1
            if not self.opened.done():
                self.opened.set_exception(exc or ConnectionError("closed before the snapshot"))

    async def open_raw(loop):
        opened = loop.create_future()
        transport, _ = await loop.create_connection(lambda: Raw(opened), "127.0.0.1", port)
        await asyncio.wait_for(opened, 60)
        return transport

    async def open_websockets(loop):
        from websockets.asyncio.client import connect

        ws = await connect(f"ws://127.0.0.1:{port}/ws/market/{instrument}/", origin=f"http://127.0.0.1:{port}", compression=None,
                           ping_interval=None, open_timeout=60, max_queue=None)
        first = await ws.recv()
        if '"snapshot"' in first[:40]:
            counts["snapshots"] += 1

        async def reader() -> None:
            try:
                async for text in ws:
                    data = text.encode()
                    on_text(data, 0, len(data))
            except Exception as exc:
                if len(errors) < 5:
                    errors.append(repr(exc)[:200])
            counts["closed"] += 1
            close_codes[str(ws.close_code)] = close_codes.get(str(ws.close_code), 0) + 1

        ws.reader = asyncio.create_task(reader())
        return ws

    async def one(conns: list, sem: asyncio.Semaphore, opener) -> None:
        loop = asyncio.get_running_loop()
        async with sem:
            for attempt in range(3):
                try:
                    conns.append(await opener(loop))
                    counts["connected"] += 1
                    return
                except Exception as exc:
                    if attempt == 2:
                        counts["connect_errors"] += 1
                        if len(errors) < 5:
                            errors.append(f"connect: {exc!r}"[:200])
                        return
                    await asyncio.sleep(0.5)

    async def main() -> None:
        conns: list = []
        sem = asyncio.Semaphore(50)
        t = time.monotonic()
        opener = open_raw if client == "raw" else open_websockets
        await asyncio.gather(*(one(conns, sem, opener) for _ in range(sockets)))
        ready.put((index, counts["connected"], time.monotonic() - t))
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, go.get)  # the window starts
        stop = await loop.run_in_executor(None, go.get)  # publisher done (and stragglers waited for)
        assert stop == "stop"
        results.put({"index": index, "firsts": firsts.tobytes(), "seqs": seqs.tobytes(), "stamps": stamps.tobytes(),
                     "counts": dict(counts), "close_codes": dict(close_codes), "errors": errors})
        for c in conns:
            if client == "raw":
                c.close()
            else:
                await c.close()

    asyncio.run(main())


def _pct(ordered, q: float) -> float:
    return ordered[min(int(q * len(ordered)), len(ordered) - 1)] if ordered else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenarios", default="1000x50,5000x10", help="comma-separated SUBSCRIBERSxRATE")
    parser.add_argument("--seconds", type=float, default=10, help="measured window of each round")
    parser.add_argument("--rounds", type=int, default=2, help="rounds per scenario (fresh sockets each)")
    parser.add_argument("--kind", choices=("book", "plain"), default="book", help="book messages (conflated when behind) or opaque ones")
    parser.add_argument("--client", choices=("raw", "websockets"), default="raw", help="subscriber implementation")
    parser.add_argument("--client-procs", type=int, default=2)
    parser.add_argument("--server-procs", type=int, default=1, help="uvicorn --workers")
    parser.add_argument("--ws-impl", default="websockets-sansio", help="uvicorn --ws implementation (websockets-sansio, websockets, wsproto)")
    parser.add_argument("--fresh", action="store_true")
    args = parser.parse_args()
    _raise_fd_limit()

    url = os.environ.get("DATABASE_URL", DEFAULT_URL)
    redis_url = os.environ.get("REDIS_URL", DEFAULT_REDIS)
    xb.database_ensure(url, fresh=args.fresh)
    xb._django_setup(url, redis_url, 1)
    os.environ["CHANNEL_PREFIX"] = xb.PREFIX  # the server's prefix (xb._server_env); settings read it at setup
    from django.conf import settings
    from django.core.management import call_command
    from django.db import connection

    settings.CHANNEL_LAYERS["default"]["CONFIG"]["prefix"] = xb.PREFIX
    call_command("migrate", verbosity=0)
    import redis

    redis.Redis.from_url(redis_url).flushdb()
    spec = xb.market_prepare(buyers=2, sellers=2, shards=1)
    instrument = spec["instruments"][0]
    from exchange.publish import cny

    cny(instrument, 1500)  # the unit cache: no query inside the publish loop
    connection.close()

    logdir = tempfile.mkdtemp(prefix="fbench-")
    env = xb._server_env(dict(os.environ), url, redis_url, 1, "config.settings")
    port = xb._free_port()
    app = "config.asgi:application"
    argv = [sys.executable, "-c",
            "import resource,sys;s,h=resource.getrlimit(resource.RLIMIT_NOFILE);"
            "resource.setrlimit(resource.RLIMIT_NOFILE,(h,h));import uvicorn;"
            f"sys.argv=['uvicorn','{app}','--lifespan','off','--host','127.0.0.1','--port','{port}','--ws','{args.ws_impl}',"
            f"'--workers','{args.server_procs}',"
            "'--log-level','warning','--no-access-log','--backlog','4096','--timeout-graceful-shutdown','3'];"
            "uvicorn.main()"]
    uv = xb.Service("uvicorn", argv, env, logdir)
    summary: dict[str, Any] = {"instrument": instrument, "ws_impl": args.ws_impl, "server_procs": args.server_procs,
                               "kind": args.kind, "client": args.client, "seconds": args.seconds,
                               "client_procs": args.client_procs, "scenarios": {}}
    publisher = Publisher(instrument, args.kind)
    try:
        deadline = time.monotonic() + 60
        import urllib.request

        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
                    if r.status == 200 and len(_descendants(uv.proc.pid)) >= (args.server_procs if args.server_procs > 1 else 0):
                        break
            except OSError:
                pass
            if uv.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"uvicorn did not start:\n{uv.tail()}")
            time.sleep(0.2)
        time.sleep(1.0 if args.server_procs > 1 else 0)  # every worker listening
        print(f"uvicorn x{args.server_procs} --ws {args.ws_impl} {app} on :{port}, instrument {instrument}, "
              f"{args.kind} messages, {args.client} clients x{args.client_procs}, logs in {logdir}")
        for item in args.scenarios.split(","):
            subs, rate = item.lower().split("x")
            subs, rate = int(subs), float(rate)
            rows = []
            for r in range(args.rounds):
                res = run_round(port=port, instrument=instrument, subscribers=subs, rate=rate, seconds=args.seconds,
                                procs=args.client_procs, client=args.client, uv=uv, publisher=publisher)
                res["round"] = r + 1
                rows.append(res)
                print_round(subs, rate, res)
            summary["scenarios"][item] = summarise(subs, rate, rows)
    finally:
        uv.stop()
    for key, item in (("fanout_1k_p99_ms", "1000x50"), ("fanout_5k_p99_ms", "5000x10")):  # issue #5's names
        summary[key] = summary["scenarios"][item]["p99_ms"] if item in summary["scenarios"] else None
    for item, s in summary["scenarios"].items():
        print(f"{item}: p50 {s['p50_ms']} ms, p99 {s['p99_ms']} ms (goal < {s['goal_p99_ms']}): "
              f"{'met' if s['goal_met'] else 'NOT met'}; delivered {s['delivered_share']:.4f}; "
              f"frames/delivery {s['frames_per_delivery']}; server CPU {s['cpu_us_per_delivery']['server']} us per delivery")
    print(json.dumps(summary))


def _descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        for child in xb._children(todo.pop()):
            out.append(child)
            todo.append(child)
    return out


class Publisher:
    """Publications with seq n = 1, 2, ... across rounds; `stamps[n]` is when n was published."""

    def __init__(self, instrument: int, kind: str) -> None:
        self.instrument, self.kind = instrument, kind
        self.n = 0
        self.stamps = array("q", [0])
        self.bids: dict[int, int] = {}

    def align_snapshot(self) -> None:
        """Book kind: the committed book seq is the last one published, so a new socket's snapshot is in line."""
        from django.db import connection

        from exchange.models import BookState

        BookState.objects.update_or_create(instrument_id=self.instrument, defaults={"book_seq": self.n})
        connection.close()

    def publish_one(self) -> int:
        from exchange.publish import Publication, publish
        from exchange.selectors import checksum

        self.n += 1
        n = self.n
        if self.kind == "book":
            price, quantity = 1400 + n % 20, n % 7  # 20 levels, one changes per publication (0 = gone)
            if quantity:
                self.bids[price] = quantity
            else:
                self.bids.pop(price, None)
            payload = {"type": "book", "checksum": checksum(sorted(self.bids.items(), reverse=True), []),
                       "updates": [{"side": "buy", "price": price, "quantity": quantity, "seq": n}]}
        else:
            payload = {"type": "bench", "instrument": self.instrument, "first": n, "seq": n, "pad": "x" * 120}
        t = time.time_ns()
        self.stamps.append(t)
        publish([Publication.market(self.instrument, payload)])
        return t


def run_round(*, port: int, instrument: int, subscribers: int, rate: float, seconds: float, procs: int, client: str,
              uv: xb.Service, publisher: Publisher) -> dict[str, Any]:
    """Fresh subscriber processes and sockets; publish 1 s unmeasured then `seconds` measured."""
    if publisher.kind == "book":
        publisher.align_snapshot()
    ctx = mp.get_context("spawn")
    ready, results = ctx.Queue(), ctx.Queue()
    shares = [subscribers // procs + (1 if i < subscribers % procs else 0) for i in range(procs)]
    gos = [ctx.Queue() for _ in range(procs)]
    workers = [ctx.Process(target=_subscriber_main, args=(i, port, instrument, shares[i], client, ready, gos[i], results), daemon=True)
               for i in range(procs) if shares[i]]
    for w in workers:
        w.start()
    pids = [w.pid for w in workers]
    try:
        got = [ready.get(timeout=600) for _ in workers]
        connected = sum(g[1] for g in got)
        connect_s = max(g[2] for g in got)
        server_pids = [uv.proc.pid, *_descendants(uv.proc.pid)]
        meter = xb.CpuMeter({"server": lambda: server_pids, "clients": lambda: pids, "redis": xb._redis_server,
                             "publisher": lambda: [os.getpid()]})
        w0 = time.time_ns() + 1_000_000_000
        w1 = w0 + int(seconds * 1e9)
        for q in gos:
            q.put("go")
        time.sleep(0.2)
        period, started = 1.0 / rate, False
        window = []  # publication numbers in the measured window
        late = []  # how far behind schedule each publish started (the publisher itself lagging)
        next_at = time.monotonic()
        while True:
            t = time.time_ns()
            if t > w1:
                break
            if not started and t >= w0:
                meter.start()
                started = True
            t = publisher.publish_one()
            if w0 <= t <= w1:
                window.append(publisher.n)
                late.append(time.monotonic() - next_at)
            next_at += period
            delay = next_at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        cpu = meter.stop()
        time.sleep(2.0)  # stragglers
        for q in gos:
            q.put("stop")
        parts = [results.get(timeout=120) for _ in workers]
    finally:
        for w in workers:
            w.join(timeout=20)
            if w.is_alive():
                w.kill()
    lo, hi = (window[0], window[-1]) if window else (1, 0)
    stamps = publisher.stamps
    lat = array("d")
    frames = 0
    counts: dict[str, int] = {}
    codes: dict[str, int] = {}
    errors: list[str] = []
    for p in parts:
        firsts, seqs, recv = array("q"), array("q"), array("q")
        firsts.frombytes(p["firsts"])
        seqs.frombytes(p["seqs"])
        recv.frombytes(p["stamps"])
        for first, seq, t_recv in zip(firsts, seqs, recv, strict=True):
            a, b = max(first, lo), min(seq, hi)
            if a > b:
                continue
            frames += 1
            lat.extend([(t_recv - stamps[n]) / 1e6 for n in range(a, b + 1)])
        for k, v in p["counts"].items():
            counts[k] = counts.get(k, 0) + v
        for k, v in p["close_codes"].items():
            codes[k] = codes.get(k, 0) + v
        errors += p["errors"]
    ordered = sorted(lat)
    delivered = len(ordered)
    published = len(window)
    expected = published * connected
    return {
        "connected": connected, "connect_s": round(connect_s, 2), "published": published, "expected": expected,
        "delivered": delivered, "delivered_share": delivered / expected if expected else 0.0,
        "frames_per_delivery": round(frames / delivered, 4) if delivered else 0.0,
        "p50_ms": _pct(ordered, 0.5), "p90_ms": _pct(ordered, 0.9), "p99_ms": _pct(ordered, 0.99),
        "max_ms": ordered[-1] if ordered else float("nan"),
        "publisher_late_p99_ms": _pct(sorted(late), 0.99) * 1000 if late else 0.0,
        "closed_during_run": codes, "errors": errors[:3], "cpu": cpu,
        "cpu_us_per_delivery": {k: round(v * 1e6 / max(delivered, 1), 2) for k, v in cpu.items()},
        "load": os.getloadavg()[0],
    }


def print_round(subs: int, rate: float, r: dict[str, Any]) -> None:
    print(f"{subs}x{rate:g} round {r['round']} (load {r['load']:.1f}): {r['connected']} sockets ({r['connect_s']} s to connect), "
          f"{r['published']} published, {r['delivered']}/{r['expected']} delivered ({r['delivered_share']:.4f}, "
          f"{r['frames_per_delivery']} frames per delivery); "
          f"p50 {r['p50_ms']:.1f} p90 {r['p90_ms']:.1f} p99 {r['p99_ms']:.1f} max {r['max_ms']:.0f} ms; "
          f"publisher late p99 {r['publisher_late_p99_ms']:.1f} ms; close codes {r['closed_during_run']} {r['errors'][:2]}")
    print("  CPU us per delivery: " + ", ".join(f"{k} {v:,.1f}" for k, v in r["cpu_us_per_delivery"].items())
          + " | CPU s: " + ", ".join(f"{k} {v:.2f}" for k, v in r["cpu"].items()))


def summarise(subs: int, rate: float, rows: list[dict[str, Any]]) -> dict[str, Any]:
    def med(key):
        return round(statistics.median(r[key] for r in rows), 2)

    goal = GOALS.get((subs, int(rate)))
    out = {
        "subscribers": subs, "rate": rate, "rounds": len(rows), "connected": min(r["connected"] for r in rows),
        "p50_ms": med("p50_ms"), "p90_ms": med("p90_ms"), "p99_ms": med("p99_ms"), "max_ms": med("max_ms"),
        "delivered_share": round(statistics.median(r["delivered_share"] for r in rows), 5),
        "frames_per_delivery": round(statistics.median(r["frames_per_delivery"] for r in rows), 4),
        "connect_s": med("connect_s"),
        "cpu_us_per_delivery": {k: round(statistics.median(r["cpu_us_per_delivery"][k] for r in rows), 2)
                                for k in rows[0]["cpu_us_per_delivery"]},
        "goal_p99_ms": goal,
        "per_round_p99_ms": [round(r["p99_ms"], 1) for r in rows],
    }
    out["goal_met"] = bool(goal is not None and out["p99_ms"] < goal and out["delivered_share"] >= 0.999)
    return out


if __name__ == "__main__":
    main()
