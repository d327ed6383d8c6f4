"""Market-data fan-out: latency from the publish call to every websocket subscriber of one instrument.

Usage::

    .venv/bin/python bench/fanout_bench.py [--scenarios 1000x50,5000x10] [--seconds 10] [--rounds 2]
        [--client-procs 2] [--ws-impl websockets] [--fresh]

DATABASE_URL names the bench database (default postgres://postgres@127.0.0.1:5432/suanli_fbench; created and
migrated if missing; the market of bench/exchange_bench.py is set up with 2 buyers and 2 suppliers, and its
first open instrument is the one watched). REDIS_URL (default redis://127.0.0.1:6379/11, flushed at start)
is the channel layer shared by the server and the publisher.

Stack: one uvicorn process serving config.asgi (the production websocket stack: origin check, session auth,
exchange.consumers.MarketConsumer with its per-process MarketHub) and the Redis channel layer. Subscribers
connect to /ws/market/<id>/ from ``--client-procs`` processes (asyncio, the `websockets` client, many
sockets each; fd limit raised), read their snapshot, then wait. This process is the publisher: it calls
exchange.publish.publish([Publication.market(id, payload)]) -- the code the matcher runs after a batch
commits (envelope, one group_send per message over the Redis layer from the publisher loop) -- at the
scenario's rate, each payload carrying time.time_ns() taken just before the call and one level update
(a book message's size). Each subscriber records time.time_ns() on receipt; same machine, same clock.

A scenario ``NxR`` is N subscribers and R publications per second. For each round: publish for ``--seconds``
(plus 1 s unmeasured), wait 2 s for stragglers, then count. Reported: p50/p99/max of publish-to-receipt over
every (message, subscriber) pair of the window, deliveries expected vs received, sockets closed by the server
(4008: outbox over WS_MAX_OUTBOX), and CPU per delivered message of the server, the clients, Redis and the
publisher, from /proc. Goals: 1000x50 p99 < 30 ms; 5000x10 p99 < 150 ms. The last line printed is JSON.

Conflation: the current code does not conflate book updates; every matcher batch that changes the book is
one message to every socket (exchange/publish.py envelopes, exchange/consumers.py MarketConsumer._accept).
So a scenario's rate is simply the message rate each subscriber receives.
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


def _subscriber_main(index: int, port: int, instrument: int, sockets: int, ready, go, results) -> None:
    import asyncio

    from websockets.asyncio.client import connect

    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    _raise_fd_limit()
    lat = array("d")
    counts = {"connected": 0, "connect_errors": 0, "snapshots": 0, "received": 0, "in_window": 0, "closed": 0}
    close_codes: dict[str, int] = {}
    window = [0, 0]  # wall-clock ns of the measured publications
    errors: list[str] = []

    async def one(k: int, conns: list, sem: asyncio.Semaphore) -> None:
        async with sem:
            for attempt in range(3):
                try:
                    ws = await connect(f"ws://127.0.0.1:{port}/ws/market/{instrument}/", compression=None,
                                       ping_interval=None, open_timeout=60, max_queue=None)
                    break
                except Exception as exc:
                    if attempt == 2:
                        counts["connect_errors"] += 1
                        if len(errors) < 5:
                            errors.append(f"connect: {exc!r}"[:200])
                        return
                    await asyncio.sleep(0.5)
            first = await ws.recv()
            if '"snapshot"' in first[:40]:
                counts["snapshots"] += 1
            counts["connected"] += 1
            conns.append(ws)

    async def reader(ws) -> None:
        now = time.time_ns
        try:
            async for text in ws:
                t_recv = now()
                counts["received"] += 1
                i = text.rfind('"t":')
                if i < 0:
                    continue  # heartbeat, snapshot
                t = int(text[i + 4 : -1])
                if window[0] <= t <= window[1]:
                    counts["in_window"] += 1
                    lat.append((t_recv - t) / 1e6)
        except Exception as exc:
            if len(errors) < 5:
                errors.append(repr(exc)[:200])
        code = ws.close_code
        counts["closed"] += 1
        close_codes[str(code)] = close_codes.get(str(code), 0) + 1

    async def main() -> None:
        conns: list = []
        sem = asyncio.Semaphore(50)
        t = time.monotonic()
        await asyncio.gather(*(one(k, conns, sem) for k in range(sockets)))
        tasks = [asyncio.create_task(reader(ws)) for ws in conns]
        ready.put((index, counts["connected"], time.monotonic() - t))
        loop = asyncio.get_running_loop()
        w0, w1 = await loop.run_in_executor(None, go.get)
        window[0], window[1] = w0, w1
        stop = await loop.run_in_executor(None, go.get)  # publisher done (and stragglers waited for)
        assert stop == "stop"
        results.put({"index": index, "lat": lat.tobytes(), "counts": dict(counts), "close_codes": dict(close_codes),
                     "errors": errors})
        for ws in conns:
            await ws.close()
        for task in tasks:
            task.cancel()

    asyncio.run(main())


# --- What-if (--whatif): server-side changes tried without editing exchange/, served as this module's app ---

_whatif_app = None


def _build_whatif():
    """config.asgi's application, except /ws/market/: (1) no session/auth middleware on the public market
    stream (channels' session wrapper runs on every send), origin check kept; (2) WS_MAX_OUTBOX read once
    (consumers.max_outbox() reads settings through the LazySettings proxy on every push)."""
    from channels.routing import URLRouter
    from django.conf import settings
    from django.urls import path

    from config.asgi import application as project
    from exchange import consumers
    from exchange.ws_auth import ApiClientOriginValidator

    limit = consumers.max_outbox()
    consumers.max_outbox = lambda: limit
    allowed = settings.ALLOWED_HOSTS or (["localhost", "127.0.0.1", "[::1]"] if settings.DEBUG else [])
    market = ApiClientOriginValidator(URLRouter([path("ws/market/<int:instrument_id>/", consumers.MarketConsumer.as_asgi())]), allowed)

    async def app(scope, receive, send):
        if scope["type"] == "websocket" and scope["path"].startswith("/ws/market/"):
            return await market(scope, receive, send)
        return await project(scope, receive, send)

    return app


async def whatif_application(scope, receive, send):
    global _whatif_app
    if _whatif_app is None:
        _whatif_app = _build_whatif()
    return await _whatif_app(scope, receive, send)


def _pct(ordered, q: float) -> float:
    return ordered[min(int(q * len(ordered)), len(ordered) - 1)] if ordered else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenarios", default="1000x50,5000x10", help="comma-separated SUBSCRIBERSxRATE")
    parser.add_argument("--seconds", type=float, default=10, help="measured window of each round")
    parser.add_argument("--rounds", type=int, default=2, help="rounds per scenario (fresh sockets each)")
    parser.add_argument("--client-procs", type=int, default=2)
    parser.add_argument("--ws-impl", default="websockets", help="uvicorn --ws implementation (websockets, websockets-sansio, wsproto)")
    parser.add_argument("--whatif", action="store_true", help="serve _build_whatif()'s variant of the market stream")
    parser.add_argument("--fresh", action="store_true")
    args = parser.parse_args()
    _raise_fd_limit()

    from urllib.parse import urlsplit

    url = os.environ.get("DATABASE_URL", DEFAULT_URL)
    redis_url = os.environ.get("REDIS_URL", DEFAULT_REDIS)
    db_name = urlsplit(url).path.lstrip("/")
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
    app = "bench.fanout_bench:whatif_application" if args.whatif else "config.asgi:application"
    argv = [sys.executable, "-c",
            "import resource,sys;s,h=resource.getrlimit(resource.RLIMIT_NOFILE);"
            "resource.setrlimit(resource.RLIMIT_NOFILE,(h,h));import uvicorn;"
            f"sys.argv=['uvicorn','{app}','--lifespan','off','--host','127.0.0.1','--port','{port}','--ws','{args.ws_impl}',"
            "'--log-level','warning','--no-access-log','--backlog','4096','--timeout-graceful-shutdown','3'];"
            "uvicorn.main()"]
    uv = xb.Service("uvicorn", argv, env, logdir)
    summary: dict[str, Any] = {"instrument": instrument, "ws_impl": args.ws_impl, "whatif": args.whatif, "seconds": args.seconds, "client_procs": args.client_procs,
                               "conflated": False, "scenarios": {}}
    try:
        deadline = time.monotonic() + 60
        import urllib.request

        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if uv.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"uvicorn did not start:\n{uv.tail()}")
            time.sleep(0.2)
        print(f"uvicorn x1 --ws {args.ws_impl} {app} on :{port}, instrument {instrument}, logs in {logdir}")
        for item in args.scenarios.split(","):
            subs, rate = item.lower().split("x")
            subs, rate = int(subs), float(rate)
            rows = []
            for r in range(args.rounds):
                res = run_round(port=port, instrument=instrument, subscribers=subs, rate=rate, seconds=args.seconds,
                                procs=args.client_procs, uv=uv, db_name=db_name)
                res["round"] = r + 1
                rows.append(res)
                print_round(subs, rate, res)
            summary["scenarios"][item] = summarise(subs, rate, rows)
    finally:
        uv.stop()
    for item, s in summary["scenarios"].items():
        print(f"{item}: p50 {s['p50_ms']} ms, p99 {s['p99_ms']} ms (goal < {s['goal_p99_ms']}): "
              f"{'met' if s['goal_met'] else 'NOT met'}; delivered {s['delivered_share']:.4f}; "
              f"server CPU {s['cpu_us_per_delivery']['server']} us per delivery")
    print(json.dumps(summary))


def run_round(*, port: int, instrument: int, subscribers: int, rate: float, seconds: float, procs: int,
              uv: xb.Service, db_name: str) -> dict[str, Any]:
    """Fresh subscriber processes and sockets; publish 1 s unmeasured then `seconds` measured."""
    from exchange.publish import Publication, publish

    ctx = mp.get_context("spawn")
    ready, results = ctx.Queue(), ctx.Queue()
    shares = [subscribers // procs + (1 if i < subscribers % procs else 0) for i in range(procs)]
    gos = [ctx.Queue() for _ in range(procs)]
    workers = [ctx.Process(target=_subscriber_main, args=(i, port, instrument, shares[i], ready, gos[i], results), daemon=True)
               for i in range(procs) if shares[i]]
    for w in workers:
        w.start()
    pids = [w.pid for w in workers]
    try:
        got = [ready.get(timeout=600) for _ in workers]
        connected = sum(g[1] for g in got)
        connect_s = max(g[2] for g in got)
        meter = xb.CpuMeter({"server": lambda: [uv.proc.pid], "clients": lambda: pids, "redis": xb._redis_server,
                             "publisher": lambda: [os.getpid()]})
        w0 = time.time_ns() + 1_000_000_000
        w1 = w0 + int(seconds * 1e9)
        for q in gos:
            q.put((w0, w1))
        time.sleep(0.2)
        period, n, published, started = 1.0 / rate, 0, 0, False
        late = []  # how far behind schedule each publish started (the publisher itself lagging)
        next_at = time.monotonic()
        while True:
            t = time.time_ns()
            if t > w1:
                break
            if not started and t >= w0:
                meter.start()
                started = True
            n += 1
            publish([Publication.market(instrument, {
                "type": "bench", "instrument": instrument,
                "updates": [{"side": "buy", "price": "14.99", "price_fen_per_lot": 1499, "quantity": 7, "seq": n}],
                "n": n, "t": t})])
            if w0 <= t <= w1:
                published += 1
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
    lat = array("d")
    counts: dict[str, int] = {}
    codes: dict[str, int] = {}
    errors: list[str] = []
    for p in parts:
        lat.frombytes(p["lat"])
        for k, v in p["counts"].items():
            counts[k] = counts.get(k, 0) + v
        for k, v in p["close_codes"].items():
            codes[k] = codes.get(k, 0) + v
        errors += p["errors"]
    ordered = sorted(lat)
    delivered = len(ordered)
    expected = published * connected
    return {
        "connected": connected, "connect_s": round(connect_s, 2), "published": published, "expected": expected,
        "delivered": delivered, "delivered_share": delivered / expected if expected else 0.0,
        "p50_ms": _pct(ordered, 0.5), "p90_ms": _pct(ordered, 0.9), "p99_ms": _pct(ordered, 0.99),
        "max_ms": ordered[-1] if ordered else float("nan"),
        "publisher_late_p99_ms": _pct(sorted(late), 0.99) * 1000 if late else 0.0,
        "closed_during_run": codes, "errors": errors[:3], "cpu": cpu,
        "cpu_us_per_delivery": {k: round(v * 1e6 / max(delivered, 1), 2) for k, v in cpu.items()},
        "load": os.getloadavg()[0],
    }


def print_round(subs: int, rate: float, r: dict[str, Any]) -> None:
    print(f"{subs}x{rate:g} round {r['round']} (load {r['load']:.1f}): {r['connected']} sockets ({r['connect_s']} s to connect), "
          f"{r['published']} published, {r['delivered']}/{r['expected']} delivered ({r['delivered_share']:.4f}); "
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
