"""REST's round trip to the matcher over Redis: client CPU per order request, exchange.transport.RedisClient
against the same round trip through redis-py's pipeline object (how it was sent before the nineteenth session).

A stand-in matcher in another process takes each queued message and answers it at once, so the round trips
are real; the figure is this thread's CPU per request (`time.thread_time`), the web worker's share.

    REDIS_URL=redis://127.0.0.1:6379/12 .venv/bin/python bench/transport_bench.py [--requests 5000] [--rounds 3]

The Redis database is flushed. The last line is JSON: medians over rounds, microseconds per request.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/12")


def stand_in_matcher(url: str, queue: str) -> None:
    import redis

    r = redis.Redis.from_url(url)
    while True:
        _, raw = r.brpop([queue])
        message = json.loads(raw)
        if message.get("stop"):
            return
        r.lpush(message["reply"], json.dumps([{"op": c["op"], "ok": True} for c in message["commands"]]))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    import django

    django.setup()
    import orjson
    import redis
    from django.conf import settings

    from exchange import transport

    url = settings.REDIS_URL
    r = redis.Redis.from_url(url)
    r.flushdb()
    queue = transport.queue_key(0)
    matcher = multiprocessing.Process(target=stand_in_matcher, args=(url, queue), daemon=True)
    matcher.start()
    command = {"op": "place", "instrument": 1, "side": "buy", "price": "15.00", "quantity": 3, "client_order_id": "x" * 24}
    client = transport.RedisClient()

    def pipeline_way() -> None:
        key = f"suanli:reply:{uuid.uuid4().hex}"
        pipe = client.redis.pipeline(transaction=False)
        pipe.lpush(queue, orjson.dumps({"reply": key, "commands": [command]}))
        pipe.blpop([key], timeout=4)
        got = pipe.execute()[-1]
        orjson.loads(got[1])

    def transport_way() -> None:
        client.request([command], timeout=4)

    results: dict[str, list[float]] = {"pipeline_us": [], "transport_us": []}
    for n in range(args.rounds):
        for name, fn in (("pipeline_us", pipeline_way), ("transport_us", transport_way)):
            for _ in range(200):
                fn()
            began = time.thread_time()
            for _ in range(args.requests):
                fn()
            results[name].append((time.thread_time() - began) / args.requests * 1e6)
        print(f"round {n + 1}: " + ", ".join(f"{k} {v[-1]:.1f}" for k, v in results.items()))
    r.lpush(queue, json.dumps({"stop": True}))
    matcher.join(5)
    r.flushdb()
    out = {k: round(statistics.median(v), 1) for k, v in results.items()}
    out["ratio"] = round(out["transport_us"] / out["pipeline_us"], 2)
    out.update(requests=args.requests, rounds=args.rounds)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
