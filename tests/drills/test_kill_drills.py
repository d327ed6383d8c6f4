"""Fault drills (docs/security.md, "Fault drills: kills and restarts").

The production shape runs as real processes: uvicorn serving config.asgi, `manage.py runmatcher`, a Celery
worker, against the test database and a Redis of our own. A seeded stream of orders (client_order_id),
metering batches (event ids) and signed Stripe webhooks (event ids) flows through clients that retry on
failure with the same ids, as real clients do. Each process is SIGKILLed at a seeded point and restarted,
as a supervisor would. At the end every acknowledged effect is there exactly once, the orders and trades
equal an uninterrupted run of the same orders, the ledger verifies and sums to zero, the audit chain
verifies.

DRILL_LONG=1 runs a longer stream with more kills (`DRILL_LONG=1 make test PYTEST_ARGS=tests/drills`, with
DATABASE_URL and REDIS_URL set). DRILL_SEED picks another seed.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import random
import threading
import time
from collections import Counter

import pytest
import redis
from celery import Celery
from django.core.management import call_command

from exchange import services
from exchange.models import Order
from exchange.transport import inflight_key
from ledger.models import JournalEntry, ProviderEvent, TopUp, TopUpStatus
from metering.models import ContractDelivery, UsageEvent
from oversight import audit
from oversight.models import AuditRecord
from tests.drills import kill_harness as harness
from tests.drills.kill_setup import TOP_UP_FEN, drill_market, market_setup, outcome, own_redis, test_database_url  # noqa: F401  (fixtures)
from tests.ledger.payments_helpers import WEBHOOK_SECRET, event, paid_session, sign

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

LONG = os.environ.get("DRILL_LONG", "") not in ("", "0")
SEED = int(os.environ.get("DRILL_SEED", "11"))


# --- the stream ---------------------------------------------------------------------------------------------

def stream(seed: int, *, orders: int, batches: int, webhooks: int) -> list[tuple]:
    """Orders in a fixed sequence; usage batches, webhooks (a few delivered twice, as Stripe does) and the
    periodic jobs' ticks interleaved at seeded places."""
    rng = random.Random(seed)
    steps: list[tuple] = []
    for i in range(orders):
        side = rng.choice(["buy", "sell"])
        steps.append(("order", side, 1500 + rng.randint(-15, 15), rng.randint(1, 5), f"o{i}", rng.choice(["GTC", "GTC", "IOC"])))
    extras = [("usage", b) for b in range(batches)] + [("webhook", i) for i in range(webhooks)]
    extras += [("webhook", rng.randrange(webhooks)) for _ in range(max(webhooks // 4, 1))]  # redeliveries
    rng.shuffle(extras)
    for extra in extras:
        steps.insert(rng.randrange(len(steps) + 1), extra)
    for k in range(len(steps) - len(steps) % 10, 0, -10):
        steps.insert(k, ("tick",))
    return steps


def kill_points(seed: int, steps: list[tuple], rounds: int) -> dict[int, tuple[str, str | float]]:
    """Step index -> (process, when). Per round, at seeded steps: the matcher while a batch is in flight
    (taken from its queue, not yet answered); the web server once while it waits for the matcher's answer
    to an order, once at a seeded moment into a usage batch or webhook; the worker while a job it took is
    unacknowledged."""
    rng = random.Random(seed * 7919)
    by_kind = {kind: [k for k, s in enumerate(steps) if s[0] == kind] for kind in ("order", "usage", "webhook", "tick")}
    plan = (("matcher", by_kind["order"], "inflight"), ("web", by_kind["order"], "inflight"),
            ("web", by_kind["usage"] + by_kind["webhook"], "delay"), ("worker", by_kind["tick"], "unacked"))
    points: dict[int, tuple[str, str | float]] = {}
    n = len(steps)
    for r in range(rounds):
        window = range(int(n * (0.1 + 0.8 * r / rounds)), int(n * (0.1 + 0.8 * (r + 1) / rounds)))
        for name, pool, when in plan:
            # Apart from each other: each restart is over before the next kill.
            candidates = [k for k in pool if k in window and all(abs(k - j) > 3 for j in points)]
            assert candidates, f"no step left for {name} in round {r}"
            points[rng.choice(candidates)] = (name, rng.uniform(0.001, 0.03) if when == "delay" else when)
    return points


def usage_events(dm, batch: int) -> list[dict]:
    start = dm.contract.instrument.delivery_start
    out = []
    for j in range(5):
        at = start + dt.timedelta(minutes=(batch * 5 + j) * 6)
        out.append({"event_id": f"u{batch}-{j}", "contract": dm.contract.pk, "data_centre": dm.market["listing"].data_centre_id,
                    "device_model": dm.market["listing"].device_model_id, "start": at.isoformat(),
                    "end": (at + dt.timedelta(minutes=3)).isoformat(), "device_count": 1})
    return out


# --- the reference: the same orders, in-process, no faults ---------------------------------------------------

def reference_run(dm, steps) -> None:
    m = dm.market
    for s in steps:
        if s[0] != "order":
            continue
        _, side, fen, qty, cid, tif = s
        user, org = (m["buyer_user"], m["buyer"]) if side == "buy" else (m["seller_user"], m["supplier"])
        request = services.OrderRequest(instrument=dm.reference, side=side, quantity=qty, client_order_id=f"ref-{cid}",
                                        price=dm.reference.fen_per_lot_to_price(fen), time_in_force=tif)
        placed = services.order_place(user=user, organisation=org, request=request)
        assert placed.state is not None


# --- the drill ------------------------------------------------------------------------------------------------

def _audit_caught_up() -> bool:
    for source in audit.sources():
        if source.queryset().count() != AuditRecord.objects.filter(kind=source.kind).count():
            return False
    return True


def test_sigkill_matcher_worker_and_web_server_mid_stream(drill_market, own_redis, tmp_path, capsys):  # noqa: F811
    dm = drill_market
    steps = stream(SEED, orders=150 if LONG else 60, batches=30 if LONG else 10, webhooks=len(dm.top_ups))
    points = kill_points(SEED, steps, rounds=3 if LONG else 1)
    assert {name for name, _ in points.values()} == {"matcher", "web", "worker"}, points
    reference_run(dm, steps)

    env = harness.service_env(database_url=test_database_url(), redis_url=own_redis.url(0), MATCHER_REPLY_TIMEOUT="1",
                              MATCHER_HOUSEKEEPING_SECONDS="0.2", STRIPE_WEBHOOK_SECRET=WEBHOOK_SECRET, CELERY_VISIBILITY_TIMEOUT="1",
                              LOG_LEVEL="INFO")
    web, base = harness.web(env, tmp_path)
    procs = {"matcher": harness.matcher(env, tmp_path), "web": web, "worker": harness.worker(env, tmp_path)}
    beat = Celery("drill-beat", broker=own_redis.url(0))
    broker = redis.Redis.from_url(own_redis.url(0))
    crashes = []
    killed_jobs: list[str] = []  # ids of the Celery tasks the worker had taken, unacknowledged, when killed

    def worker_busy() -> bool:
        taken = broker.hvals("unacked")  # kombu's Redis transport: delivery tag -> [message, exchange, routing key]
        killed_jobs.extend(json.loads(raw)[0]["headers"]["id"] for raw in taken)
        return bool(taken)

    acks: dict[str, list] = {"orders": [], "batches": [], "webhooks": []}
    try:
        for p in procs.values():
            p.start()
        seller = harness.RetryingClient(base, token=dm.seller_token)
        buyer = harness.RetryingClient(base, token=dm.buyer_token)
        hooks = harness.RetryingClient(base)
        started = time.monotonic()
        for k, step in enumerate(steps):
            if k in points:
                name, when = points[k]
                if name == "worker":  # the tick below hands it jobs; the kill lands while it runs one
                    for task in ("oversight.tasks.audit_ingest", "metering.tasks.deliveries_settle_due"):
                        beat.send_task(task)
                if when == "inflight":
                    crash = procs[name].crash_when(lambda: broker.llen(inflight_key(0)) > 0)
                elif when == "unacked":
                    crash = procs[name].crash_when(worker_busy)
                else:
                    crash = procs[name].crash_later(when)
                crashes.append((k, name, when, crash))
            kind = step[0]
            if kind == "order":
                _, side, fen, qty, cid, tif = step
                client = buyer if side == "buy" else seller
                attempts = client.attempts
                r = client.call("POST", "/api/v1/orders/", json={
                    "instrument": dm.traded.pk, "side": side, "price": f"{fen // 100}.{fen % 100:02d}", "quantity": qty,
                    "client_order_id": cid, "time_in_force": tif}, done=lambda r: r.status_code not in (202, 429) and r.status_code < 500)
                assert r.status_code in (200, 201), (cid, r.status_code, r.text)
                acks["orders"].append((cid, r.json()["id"], r.status_code, client.attempts - attempts))
            elif kind == "usage":
                attempts = seller.attempts
                r = seller.call("POST", "/api/v1/metering/events/", json={"events": usage_events(dm, step[1])})
                assert r.status_code == 200, r.text
                acks["batches"].append((step[1], [e["status"] for e in r.json()["results"]], seller.attempts - attempts))
            elif kind == "webhook":
                i = step[1]
                payload = event("checkout.session.completed", paid_session(dm.top_ups[i], intent=f"pi_drill_{i}"), f"evt_drill_{i}")
                r = hooks.call("POST", "/api/v1/ledger/webhooks/stripe/", data=payload.encode(),
                               before=lambda payload=payload: {"headers": {"Stripe-Signature": sign(payload), "Content-Type": "application/json"}})
                assert r.status_code == 200 and r.json()["received"], r.text
                acks["webhooks"].append((f"evt_drill_{i}", r.json()["duplicate"]))
            elif kind == "tick":
                beat.send_task("oversight.tasks.audit_ingest")
        streamed = time.monotonic() - started
        for *_, thread in crashes:
            thread.join(timeout=90)
        missed = [(k, name, when) for k, name, when, thread in crashes if when in ("inflight", "unacked") and not thread.caught]
        assert missed == [], "kills that did not land while work was in flight"
        assert all(p.alive() for p in procs.values()), {n: harness.tail(p.log) for n, p in procs.items() if not p.alive()}
        beat.send_task("oversight.tasks.audit_ingest")  # the last tick: the chain catches up with everything above
        harness.wait_for("the worker to bring the audit chain up to date", _audit_caught_up, 60, interval=0.2)
        # The jobs the killed worker had taken were handed out again (CELERY_VISIBILITY_TIMEOUT) and run to an
        # end (whether a run succeeds is the job's business: on a crowded shared PostgreSQL one may fail).
        log = procs["worker"].log

        def held(job: str) -> bool:  # still in the broker: unacknowledged, or queued again
            raws = [*broker.hvals("unacked"), *broker.lrange("celery", 0, -1)]
            return any(job in (raw.decode() if isinstance(raw, bytes) else raw) for raw in raws)

        def settled(job: str, text: str) -> bool:
            """Received again and run to an end; or (the kill came the instant after the job was seen taken)
            it ended and was acknowledged before the kill, so nothing is owed."""
            again = text.split(f"[{job}] received")
            ended = f"[{job}] succeeded" in again[-1] or f"[{job}] raised" in again[-1]
            return ended and (len(again) >= 3 or not held(job))

        harness.wait_for("the killed worker's jobs to run again", lambda: all(settled(job, log.read_text()) for job in killed_jobs), 30, interval=0.2)
        # Reported: 0 only when the one job seen taken was acknowledged in the instant before the kill.
        redelivered = [job for job in set(killed_jobs) if len(log.read_text().split(f"[{job}] received")) >= 3]
    finally:
        for p in procs.values():
            p.stop()
        beat.close()

    # Every acknowledged order is there once, with the id it was acknowledged with; orders and trades are
    # exactly those of the uninterrupted run (nothing lost, nothing matched twice).
    stored = Counter(Order.objects.filter(instrument=dm.traded).values_list("client_order_id", flat=True))
    assert {cid: n for cid, n in stored.items() if n != 1} == {}
    ids = dict(Order.objects.filter(instrument=dm.traded).values_list("client_order_id", "pk"))
    assert all(ids[cid] == pk for cid, pk, _, _ in acks["orders"])
    assert len(acks["orders"]) == len(stored) == sum(1 for s in steps if s[0] == "order")
    crashed, reference = outcome(dm.traded), outcome(dm.reference)
    assert reference["trades"], "the stream should trade"
    assert crashed == reference
    # Every usage event once; the contract's delivery equals the sum of what was credited; a batch answered
    # at its first attempt has no duplicates (only a retry of a batch that had committed sees them).
    events = UsageEvent.objects.filter(contract=dm.contract)
    assert events.count() == 5 * len(acks["batches"]) == len(set(events.values_list("event_id", flat=True)))
    delivery = ContractDelivery.objects.get(contract=dm.contract)
    assert (delivery.events, delivery.delivered_micro) == (events.count(), sum(events.values_list("credited_micro", flat=True)))
    for batch, statuses, attempts in acks["batches"]:
        assert set(statuses) <= {"accepted", "duplicate"}, (batch, statuses)
        assert attempts > 1 or set(statuses) == {"accepted"}, (batch, statuses)
    # Every webhook's event stored once; every top-up credited once, whatever the redeliveries and kills.
    assert ProviderEvent.objects.filter(event_id__startswith="evt_drill_").count() == len({e for e, _ in acks["webhooks"]}) == len(dm.top_ups)
    for top_up in TopUp.objects.filter(pk__in=[t.pk for t in dm.top_ups]):
        assert top_up.status == TopUpStatus.SUCCEEDED and top_up.entry.postings.get(amount_fen__gt=0).amount_fen == top_up.amount_fen
    credits = JournalEntry.objects.filter(idempotency_key__in=[f"topup:{t.pk}:credit" for t in dm.top_ups])
    assert credits.count() == len(dm.top_ups)
    assert sum(t.top_up.amount_fen for t in credits) == len(dm.top_ups) * TOP_UP_FEN + sum(range(len(dm.top_ups)))
    # The ledger balances (each entry and all postings sum to zero; balances match postings); the audit
    # chain has every source row once and verifies.
    call_command("ledger_verify")
    kinds = Counter(AuditRecord.objects.values_list("kind", "object_id"))
    assert [key for key, n in kinds.items() if n > 1] == []
    call_command("audit_verify")

    with capsys.disabled():
        kills = {n: p.kills for n, p in procs.items()}
        retried = sum(1 for *_, a in acks["orders"] if a > 1) + sum(1 for *_, a in acks["batches"] if a > 1)
        print("\nkill drill:", json.dumps({"seed": SEED, "jobs_redelivered": len(redelivered), "steps": len(steps), "seconds": round(streamed, 1), "kills": kills,
                                          "retried_requests": retried, "client_attempts": seller.attempts + buyer.attempts + hooks.attempts,
                                          "longest_outage_s": round(max(seller.longest_outage, buyer.longest_outage, hooks.longest_outage), 2),
                                          "trades": len(crashed["trades"])}))
    rounds = 3 if LONG else 1
    assert kills == {"matcher": rounds, "web": 2 * rounds, "worker": rounds}
    # A matcher killed mid-batch found the batch in its in-flight list at restart and re-processed it.
    assert procs["matcher"].log.read_text().count("re-processing") == rounds


def _server_book(base: str, instrument_id: int) -> tuple[int, int]:
    book = harness.requests.get(f"{base}/api/v1/instruments/{instrument_id}/book/", timeout=5).json()
    return book["seq"], book["checksum"]


def _place_all(client_for, dm, steps) -> list[tuple[str, int]]:
    acked = []
    for _, side, fen, qty, cid, tif in steps:
        r = client_for(side).call("POST", "/api/v1/orders/", json={
            "instrument": dm.traded.pk, "side": side, "price": f"{fen // 100}.{fen % 100:02d}", "quantity": qty,
            "client_order_id": cid, "time_in_force": tif}, done=lambda r: r.status_code not in (202, 429) and r.status_code < 500)
        assert r.status_code in (200, 201), (cid, r.status_code, r.text)
        acked.append((cid, r.json()["id"]))
    return acked


def _assert_orders_as_reference(dm, acked) -> dict:
    ids = dict(Order.objects.filter(instrument=dm.traded).values_list("client_order_id", "pk"))
    assert len(ids) == Order.objects.filter(instrument=dm.traded).count() == len(acked)
    assert all(ids[cid] == pk for cid, pk in acked)
    crashed, reference = outcome(dm.traded), outcome(dm.reference)
    assert reference["trades"], "the stream should trade"
    assert crashed == reference
    return crashed


def test_redis_restart_mid_stream_loses_no_order_and_market_clients_resync(drill_market, own_redis, tmp_path, capsys):  # noqa: F811
    """Redis (channel layer, matcher queue, cache) is restarted empty while orders flow and two market-data
    clients watch the book. Nothing is restarted by hand: the web server and the matcher carry on, orders
    are all there (order state lives in PostgreSQL; a command lost with Redis is retried by its client with
    the same client_order_id), and each client ends with the server's book (seq and checksum)."""
    dm = drill_market
    steps = [s for s in stream(SEED + 1, orders=40, batches=0, webhooks=1) if s[0] == "order"]
    restart_at = random.Random(SEED).randrange(len(steps) // 3, 2 * len(steps) // 3)
    reference_run(dm, steps)
    env = harness.service_env(database_url=test_database_url(), redis_url=own_redis.url(0), MATCHER_REPLY_TIMEOUT="1",
                              MATCHER_HOUSEKEEPING_SECONDS="0.2", WS_HEARTBEAT_SECONDS="1", LOG_LEVEL="INFO")
    web, base = harness.web(env, tmp_path)
    matcher = harness.matcher(env, tmp_path)
    clients = {"buy": harness.RetryingClient(base, token=dm.buyer_token), "sell": harness.RetryingClient(base, token=dm.seller_token)}
    watchers = []
    try:
        matcher.start()
        web.start()
        watchers = [harness.MarketWatcher(base.replace("http://", "ws://"), dm.traded.pk).start() for _ in range(2)]
        harness.wait_for("market clients' first snapshots", lambda: all(w.snapshots for w in watchers), 20)
        acked = _place_all(clients.get, dm, steps[:restart_at])
        # Mid-request: the restart lands while the next orders are on their way.
        restart = threading.Thread(target=own_redis.restart, kwargs={"down_for": 1.0})
        restart.start()
        acked += _place_all(clients.get, dm, steps[restart_at:])
        restart.join()
        server = _server_book(base, dm.traded.pk)
        took = harness.wait_for("every market client to hold the server's book again",
                                lambda: all(w.state() == server for w in watchers), 30, interval=0.1)
        assert web.alive() and matcher.alive() and (web.starts, matcher.starts) == (1, 1), "nothing was restarted by hand"
    finally:
        for w in watchers:
            w.stop()
        web.stop()
        matcher.stop()
    assert all(w.snapshots >= 2 for w in watchers), "each client resynchronised after the restart"
    crashed = _assert_orders_as_reference(dm, acked)
    call_command("ledger_verify")
    with capsys.disabled():
        print("\nredis restart:", json.dumps({"orders": len(acked), "trades": len(crashed["trades"]), "book_seq": server[0],
                                             "resync_s": round(took, 2), "snapshots": [w.snapshots for w in watchers],
                                             "connects": [w.connects for w in watchers],
                                             "longest_outage_s": round(max(c.longest_outage for c in clients.values()), 2)}))


def test_postgres_restart_mid_stream_recovers_without_manual_steps(drill_market, own_redis, tmp_path, capsys):  # noqa: F811
    """The web server and the matcher run against a PostgreSQL cluster of our own (a copy of the test
    database), which is crashed (immediate shutdown) and started again while orders flow. Nothing is
    restarted by hand: requests fail for a moment, then succeed (Django's health-checked connections); the
    matcher waits, reconnects and goes on. Every order is there once and the book equals the uninterrupted
    run's; `ledger_verify` passes on that database."""
    dm = drill_market
    steps = [s for s in stream(SEED + 2, orders=30, batches=0, webhooks=1) if s[0] == "order"]
    restart_at = random.Random(SEED + 2).randrange(len(steps) // 3, 2 * len(steps) // 3)
    reference_run(dm, steps)
    cluster = harness.PostgresCluster(tmp_path / "pg")
    cluster.init()
    cluster.start()
    web = matcher = None
    try:
        cluster.clone_from(test_database_url(), "suanli_drill")
        env = harness.service_env(database_url=cluster.url("suanli_drill"), redis_url=own_redis.url(0), MATCHER_REPLY_TIMEOUT="1",
                                  MATCHER_HOUSEKEEPING_SECONDS="0.2", LOG_LEVEL="INFO")
        web, base = harness.web(env, tmp_path)
        matcher = harness.matcher(env, tmp_path)
        clients = {"buy": harness.RetryingClient(base, token=dm.buyer_token), "sell": harness.RetryingClient(base, token=dm.seller_token)}
        matcher.start()
        web.start()
        acked = _place_all(clients.get, dm, steps[:restart_at])
        retries_before = sum(c.retries for c in clients.values())
        restart = threading.Thread(target=cluster.restart, kwargs={"mode": "immediate", "down_for": 1.0})
        restart.start()  # a crash: no shutdown checkpoint, crash recovery at start
        acked += _place_all(clients.get, dm, steps[restart_at:])
        restart.join()
        assert sum(c.retries for c in clients.values()) > retries_before, "the restart went unnoticed: nothing was drilled"
        assert harness.requests.get(f"{base}/healthz", timeout=5).status_code == 200
        assert web.alive() and matcher.alive() and (web.starts, matcher.starts) == (1, 1), "nothing was restarted by hand"
        # The matcher saw the outage: either a batch failed and it reconnected, or (usually) the connection
        # pool replaced the dead connections when the matcher next borrowed one, and logged the refusals.
        log = matcher.log.read_text()
        assert "reconnecting" in log or "psycopg.pool: error connecting" in log, log[-2000:]
        web.stop()
        matcher.stop()
        check_env = {**env, "LOG_LEVEL": "WARNING"}
        verify = harness.subprocess.run([harness.sys.executable, "manage.py", "ledger_verify"], cwd=harness.ROOT, env=check_env,
                                        capture_output=True, text=True, timeout=120)
        assert verify.returncode == 0, verify.stdout + verify.stderr
        shown = harness.subprocess.run(
            [harness.sys.executable, "manage.py", "shell", "-c",
             f"from tests.drills.kill_setup import outcome_json; print(outcome_json({dm.reference.pk}, {dm.traded.pk}))"],
            cwd=harness.ROOT, env=check_env, capture_output=True, text=True, timeout=120)
        assert shown.returncode == 0, shown.stderr
    finally:
        for p in (web, matcher):
            if p is not None:
                p.stop()
        cluster.discard()
    seen = json.loads(shown.stdout.strip().splitlines()[-1])
    assert seen["pending"] == 0
    assert {cid: pks for cid, pks in seen["ids"].items() if len(pks) != 1} == {}
    assert all(seen["ids"][cid] == [pk] for cid, pk in acked) and len(seen["ids"]) == len(acked)
    assert seen["reference"]["trades"], "the stream should trade"
    assert seen["traded"] == seen["reference"]
    with capsys.disabled():
        print("\npostgres restart:", json.dumps({"orders": len(acked), "trades": len(seen["traded"]["trades"]),
                                                "retried_requests": sum(c.retries for c in clients.values()) - retries_before,
                                                "longest_outage_s": round(max(c.longest_outage for c in clients.values()), 2)}))


@pytest.mark.django_db(transaction=False)
def test_channel_layer_reads_outlast_its_blocking_receive():
    """An idle receive blocks `brpop_timeout` seconds on the server; a client read timeout no longer than
    that times out first, and the user socket waiting on it closes (it did, after 5 s without events)."""
    from channels.layers import get_channel_layer

    layer = get_channel_layer()
    timeout = layer.create_pool(0).make_connection().socket_timeout  # what a connection of the layer gets
    assert timeout is None or timeout > layer.brpop_timeout + 1, timeout
