"""What one matcher batch costs, by batch size: the single writer's price per batch and per order, in process.

Usage::

    .venv/bin/python bench/matcher_bench.py [--sizes 1,4,16,128] [--orders 1200] [--rounds 3] [--fresh] [--profile FILE]

The exchange bench (bench/exchange_bench.py) shows the single writer busy 89-98% of the time in every shape,
and REST's small batches (4-8 orders) costing each order 4-5 times what a websocket batch of ~120 costs it.
This one measures the writer alone: `exchange.matcher.Matcher.process` called directly with batches of
`place` commands (the web's command format, exchange.services.order_command) against the exchange bench's
market on PostgreSQL (DATABASE_URL, default postgres://postgres@127.0.0.1:5432/suanli_xbench; created and
migrated if missing), publishing to Redis (REDIS_URL, default redis://127.0.0.1:6379/12) as runmatcher does.
Orders are the exchange bench's mix (half buys, half sells; 60% GTC limits resting 1-10 ticks behind the
mid, 40% IOC limits 10 ticks through it), so batches trade. For each size, `--orders` orders are processed
per round in batches of that size, and the round reports per batch and per order:

- `cpu`: this process's CPU (the matcher's Python, psycopg and Redis client included),
- `pg`: the PostgreSQL backend's CPU (from /proc: the database runs on this machine),
- `wall`: elapsed time (the writer's serial chain: its CPU plus PostgreSQL's plus the waits between them).

Medians over rounds are printed; the last line is JSON with `b{size}_cpu_us`, `b{size}_pg_us`,
`b{size}_wall_us` per batch and `b{size}_order_wall_us` per order, and the machine's speed at the start
(`ref_python_loop_ms`, `ref_select1_cpu_us`: see `machine_reference`), since its figures move with it. `--profile FILE` writes a cProfile of the
smallest size's batches (cProfile overstates call-heavy code: compare with wall time before acting on it).
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import random
import statistics
import subprocess
import sys
import time
from decimal import Decimal

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.exchange_bench import DEFAULT_REDIS, DEFAULT_URL, PREFIX, _django_setup, database_ensure, order_terms  # noqa: E402

TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")


def _backend_cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS_PER_SECOND


def traders() -> tuple[list[tuple], list[tuple]]:
    """(user, organisation) of the bench's buyer and supplier traders."""
    from marketplace.models import Membership

    rows = [(m.user, m.organisation) for m in Membership.objects.filter(organisation__name__startswith=f"{PREFIX}-").select_related("user", "organisation")]
    return [r for r in rows if r[1].kind == "buyer"], [r for r in rows if r[1].kind == "supplier"]


def commands(rng: random.Random, instrument, buyers, sellers, tag: str):
    """Endless `place` commands, the exchange bench's order mix, made as the web makes them
    (exchange.services.order_command)."""
    from exchange import services

    n = 0
    while True:
        n += 1
        side = "buy" if rng.random() < 0.5 else "sell"
        ticks, qty, tif = order_terms(rng, side)
        user, org = rng.choice(buyers if side == "buy" else sellers)
        yield services.order_command(user=user, organisation=org, request=services.OrderRequest(
            instrument=instrument, side=side, quantity=qty, client_order_id=f"{tag}-{n}", price=Decimal(ticks) / 100, time_in_force=tif))


def machine_reference(connection) -> dict[str, float]:
    """This machine's speed at the time of the run, to put figures from different hours side by side (here
    it drifts by a quarter within the hour and by half from day to day): the best of 5 of a fixed pure-Python
    loop (ms), and of 5 x 200 `SELECT 1` round trips through Django's cursor (writer CPU per trip, us)."""
    loops, trips = [], []
    for _ in range(5):
        t = time.perf_counter()
        total = 0
        for i in range(1_000_000):
            total += i
        loops.append((time.perf_counter() - t) * 1e3)
        c = time.process_time()
        with connection.cursor() as cur:
            for _ in range(200):
                cur.execute("SELECT 1")
                cur.fetchall()
        trips.append((time.process_time() - c) / 200 * 1e6)
    return {"ref_python_loop_ms": round(min(loops), 1), "ref_select1_cpu_us": round(min(trips), 1)}


def run_size(matcher, stream, size: int, orders: int, backend_pid: int, profile: cProfile.Profile | None = None) -> dict:
    batches = [[next(stream) for _ in range(size)] for _ in range(max(1, orders // size))]  # made before the clock starts
    cpu0, pg0, wall0 = time.process_time(), _backend_cpu_s(backend_pid), time.perf_counter()
    refused = 0
    for batch in batches:
        if profile is not None:
            profile.enable()
        replies = matcher.process(batch)
        if profile is not None:
            profile.disable()
        refused += sum(1 for r in replies if "error" in r)
    wall = time.perf_counter() - wall0
    cpu, pg = time.process_time() - cpu0, _backend_cpu_s(backend_pid) - pg0
    n = len(batches)
    if refused:
        raise SystemExit(f"{refused} of {n * size} orders refused: the bench market needs funds or capacity (--fresh)")
    return {
        "size": size, "batches": n,
        "cpu_us": cpu / n * 1e6, "pg_us": pg / n * 1e6, "wall_us": wall / n * 1e6,
        "order_wall_us": wall / (n * size) * 1e6,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1,4,16,128", help="batch sizes, comma-separated")
    parser.add_argument("--orders", type=int, default=1200, help="orders per size and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--fresh", action="store_true", help="drop and recreate the bench database first")
    parser.add_argument("--profile", help="write a cProfile of the smallest size's batches here")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    url, redis_url = os.environ.get("DATABASE_URL", DEFAULT_URL), os.environ.get("REDIS_URL", DEFAULT_REDIS)

    database_ensure(url, fresh=args.fresh)
    env = dict(os.environ, DATABASE_URL=url, REDIS_URL=redis_url, DJANGO_SETTINGS_MODULE="config.settings")
    subprocess.run([sys.executable, "manage.py", "migrate", "-v", "0"], cwd=ROOT, env=env, check=True)
    _django_setup(url, redis_url, 1)
    import redis

    redis.Redis.from_url(redis_url).flushdb()
    from django.db import connection

    from bench.exchange_bench import market_prepare
    from exchange.matcher import Matcher
    from marketplace.models import Instrument

    spec = market_prepare(buyers=100, sellers=20, shards=1)
    instrument = Instrument.objects.select_related("product").get(pk=spec["instruments"][0])
    buyers, sellers = traders()
    rng = random.Random(7)
    stream = commands(rng, instrument, buyers, sellers, f"mb-{time.time_ns()}")
    matcher = Matcher()
    backend = _pid(connection)
    run_size(matcher, stream, 16, 320, backend)  # warm: books loaded, caches filled
    reference = machine_reference(connection)
    print(f"machine now: a 10^6-step Python loop {reference['ref_python_loop_ms']} ms, SELECT 1 {reference['ref_select1_cpu_us']} us of CPU", flush=True)
    profile = cProfile.Profile() if args.profile else None
    rows: dict[int, list[dict]] = {s: [] for s in sizes}
    for r in range(args.rounds):
        for size in sizes:
            row = run_size(matcher, stream, size, args.orders, backend, profile if size == min(sizes) else None)
            rows[size].append(row)
            print(f"round {r + 1} batch {size:4d}: {row['batches']} batches; per batch cpu {row['cpu_us']:8.0f} us, "
                  f"PostgreSQL {row['pg_us']:7.0f} us, wall {row['wall_us']:8.0f} us; per order wall {row['order_wall_us']:6.0f} us", flush=True)
    if profile is not None:
        profile.dump_stats(args.profile)
        print(f"profile: {args.profile}")
    summary: dict[str, float] = dict(reference)
    print("medians:")
    for size in sizes:
        med = {k: statistics.median(x[k] for x in rows[size]) for k in ("cpu_us", "pg_us", "wall_us", "order_wall_us")}
        print(f"  batch {size:4d}: per batch cpu {med['cpu_us']:.0f} us, PostgreSQL {med['pg_us']:.0f} us, wall {med['wall_us']:.0f} us; "
              f"per order cpu {med['cpu_us'] / size:.0f} us, PostgreSQL {med['pg_us'] / size:.0f} us, wall {med['order_wall_us']:.0f} us")
        for k, v in med.items():
            summary[f"b{size}_{k}"] = round(v, 1)
    print(json.dumps(summary))


def _pid(connection) -> int:
    connection.ensure_connection()
    with connection.cursor() as cur:
        cur.execute("SELECT pg_backend_pid()")
        return cur.fetchone()[0]


if __name__ == "__main__":
    main()
