"""Metering benchmark: usage events per second through the bulk endpoint on PostgreSQL, rating and escrow
release included, against a COPY of the same rows in the same run.

Usage::

    .venv/bin/python bench/metering_bench.py [--workers 2] [--clients 4] [--batch 10000] [--batches 12] [--rounds 3]
        [--contracts 8] [--dup-rate 0.01] [--fresh]

DATABASE_URL names the bench database (default postgres://postgres@127.0.0.1:5432/suanli_mbench; created if
missing, then migrated).

Setup (each run): a supplier with a data centre of 2,000 H100 all listed for a day product (lot 1 PFLOPS-hour
FP16, 15.00 CNY), a funded buyer, and ``--contracts`` contracts of 2,000 lots each, traded through the order
API with the inline matcher; their instrument's window is then moved to [now - 12 h, now + 12 h] (trading
closes before delivery, so a real window would start in the future). One trader token for the supplier.

Each round: (1) COPY: the round's rows, as the server would store them, are COPYed in one ``COPY ... FROM
STDIN`` into a scratch table created ``LIKE metering_usageevent INCLUDING ALL`` (same columns, primary key
and unique index) -- the ceiling of what PostgreSQL can take on this machine at that moment; (2) ingest:
``--clients`` client processes POST ``--batches`` pre-serialised batches of ``--batch`` events in all to
/api/v1/metering/events/ on gunicorn (``--workers`` sync workers, the production shape), each sending its
next batch when the answer to the last arrives. Each batch mixes the contracts; ``--dup-rate`` of its events
repeat an event id already sent (a retry), which must be answered ``duplicate``. Events are 1-2 H100 for
1-2 minutes somewhere in the past 11 hours (small, so no contract fills up).

events_per_s = events answered (accepted + duplicate) / wall time of the ingest phase; copy_ratio =
events_per_s / COPY rows per s of the same round. Rating is in the request: when the answer arrives the
events are rated, the contracts' delivered quantities updated and escrow released in the ledger, so
rating_lag_s = the 99th percentile of batch answer times (send to last byte). Medians of the rounds are
reported. After the rounds the bench checks: stored events = accepted answers, no duplicate was accepted,
each contract's delivered = the sum of its credited events, released = V * delivered // Q, and the ledger
verifies. The last line printed is JSON.
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing as mp
import os
import random
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from exchange_bench import Service, _free_port, database_ensure, gunicorn_start  # noqa: E402

DEFAULT_URL = "postgres://postgres@127.0.0.1:5432/suanli_mbench"
LOTS = 2000  # per contract: 8 x 2,000 PFLOPS-hours; a round of 120,000 events delivers about 3,000


def _django_setup(url: str) -> None:
    os.environ.update(DJANGO_SETTINGS_MODULE="config.settings", DATABASE_URL=url, MATCHER_TRANSPORT="inline", LOG_LEVEL="WARNING")
    os.environ.pop("REDIS_URL", None)
    import django

    django.setup()


def market_prepare(*, contracts: int, tag: str) -> dict:
    """Fresh contracts for this run (previous runs' contracts may be full)."""
    import datetime as dt
    from decimal import Decimal

    from django.test import Client
    from django.utils import timezone
    from rest_framework.authtoken.models import Token

    from exchange.models import Contract
    from ledger import services as ledger
    from ledger.models import AccountKind
    from marketplace import services as market
    from marketplace.models import DeviceModel, Instrument, Membership, Organisation, Product, User
    from tests.factories import credit_code

    product, _ = Product.objects.get_or_create(code="MBENCH-AI", defaults=dict(
        name="Metering bench AI", unit="FP16_PFH", chip_class="training", min_security_level=1, lot_size=Decimal(1),
        tick_size=Decimal("0.01"), reference_price=Decimal("15.00"), window="day", max_order_lots=100000,
    ))
    market.instruments_roll()
    h100, _ = DeviceModel.objects.get_or_create(vendor="NVIDIA", name="H100 SXM", defaults=dict(
        chip_class="training", is_domestic=False, fp16_tflops=Decimal(989), fp32_tflops=Decimal(67), fp64_tflops=Decimal(34),
        memory_gb=80, power_w=700,
    ))

    def org(name: str, kind: str, n: int) -> Organisation:
        o, _ = Organisation.objects.get_or_create(name=name, defaults=dict(
            credit_code=credit_code(70000 + n), kind=kind, size_class="small", founded_on="2020-01-01", registration_region="Shanghai Qingpu",
        ))
        return o

    supplier, buyer = org("MBench Supplier", "supplier", 1), org("MBench Buyer", "buyer", 2)
    dc = supplier.data_centres.first()
    if dc is None:
        dc = market.data_centre_save(
            fields=dict(owner=supplier, name="MBench DC", region="qingpu", pue=Decimal("1.20"), renewable_share=Decimal("40"),
                        carbon_intensity=Decimal("570"), security_level=3, interconnect_gbps=400),
            latencies=[{"metro": "shanghai", "rtt_ms": Decimal("2.0")}],
            devices=[market.DeviceLine(device_model=h100, count=2000)],
        )
    users = {}
    for o, name in ((supplier, "mbench-seller"), (buyer, "mbench-buyer")):
        u, created = User.objects.get_or_create(username=name)
        if created:
            Membership.objects.create(user=u, organisation=o, role="trader")
        users[name] = u
    clearing = ledger.platform_account(kind=AccountKind.PROVIDER_CLEARING, name="offline")
    ledger.transfer(source=clearing, destination=ledger.account_for(organisation=buyer, kind="available"),
                    amount_fen=contracts * LOTS * 1600, idempotency_key=f"mbench:fund:{tag}", kind="top_up")
    # A fresh instrument per run: earlier runs sold much of their window's capacity.
    traded = set(Contract.objects.values_list("instrument_id", flat=True))
    inst = next((i for i in Instrument.objects.filter(product=product, status="open").order_by("delivery_start") if i.pk not in traded), None)
    assert inst is not None, "every listed window of the bench product has been used: run with --fresh"
    listing = dc.listings.filter(product=product).first() or market.listing_create(
        data_centre=dc, product=product, device_model=h100, device_count=2000,
        available_from=timezone.now() - dt.timedelta(days=1), available_until=timezone.now() + dt.timedelta(days=30),
    )
    client = Client()
    ids = []
    for k in range(contracts):
        for user, side in ((users["mbench-seller"], "sell"), (users["mbench-buyer"], "buy")):
            client.force_login(user)
            body = {"instrument": inst.pk, "side": side, "price": "15.00", "quantity": LOTS, "client_order_id": f"{tag}-{k}-{side}"}
            if side == "sell":
                body["listing"] = listing.pk
            r = client.post("/api/v1/orders/", body, content_type="application/json")
            assert r.status_code == 201, r.content
        ids.append(r.json()["fills"][0]["trade"])
    contract_ids = list(Contract.objects.filter(trade_id__in=ids).order_by("pk").values_list("pk", flat=True))
    now = timezone.now().replace(microsecond=0)
    window = now - dt.timedelta(hours=12)
    Instrument.objects.filter(pk=inst.pk).update(
        opens_at=window - dt.timedelta(days=2), gate_closure=window - dt.timedelta(hours=1), status="closed",
        delivery_start=window, delivery_end=window + dt.timedelta(days=1),
    )
    token, _ = Token.objects.get_or_create(user=users["mbench-seller"])
    return {"contracts": contract_ids, "dc": dc.pk, "model": h100.pk, "token": token.key, "supplier": supplier.pk,
            "window_start": window.timestamp(), "now": now.timestamp()}


def _events(spec: dict, rng: random.Random, round_no: int, count: int, dup_rate: float, batch: int, tag: str) -> list[list[dict]]:
    """count events in batches; dup_rate of each batch repeats an id sent before (in this or a previous batch)."""
    import datetime as dt

    batches, sent = [], []
    base = spec["now"] - 11 * 3600
    n = 0
    while n < count:
        rows = []
        size = min(batch, count - n)
        dups = int(size * dup_rate) if sent else 0
        for _ in range(size - dups):
            start = base + rng.randrange(0, 10 * 3600)
            minutes = rng.randint(1, 2)
            rows.append({
                "event_id": f"{tag}-r{round_no}-{n}", "contract": rng.choice(spec["contracts"]), "data_centre": spec["dc"],
                "device_model": spec["model"],
                "start": dt.datetime.fromtimestamp(start, dt.UTC).isoformat().replace("+00:00", "Z"),
                "end": dt.datetime.fromtimestamp(start + 60 * minutes, dt.UTC).isoformat().replace("+00:00", "Z"),
                "device_count": rng.randint(1, 2), "utilisation_pct": rng.randint(50, 100),
            })
            n += 1
        rows += [dict(rng.choice(sent)) for _ in range(dups)]
        rng.shuffle(rows)
        sent.extend(r for r in rows[:50])
        batches.append(rows)
        n += dups
    return batches


def _client_main(port: int, token: str, bodies: list[bytes], start_at: float, out: mp.Queue) -> None:
    while time.time() < start_at:
        time.sleep(0.001)
    lat, accepted, dups, rejected, errors = [], 0, 0, 0, 0
    for body in bodies:
        t = time.perf_counter()
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        conn.request("POST", "/api/v1/metering/events/", body=body,
                     headers={"Content-Type": "application/json", "Authorization": f"Token {token}"})
        r = conn.getresponse()
        data = r.read()
        conn.close()
        lat.append(time.perf_counter() - t)
        if r.status != 200:
            errors += 1
            continue
        ans = json.loads(data)
        accepted, dups, rejected = accepted + ans["accepted"], dups + ans["duplicates"], rejected + ans["rejected"]
    out.put({"lat": lat, "accepted": accepted, "duplicates": dups, "rejected": rejected, "errors": errors, "end": time.time()})


def copy_phase(batches: list[list[dict]], spec: dict) -> float:
    """COPY the round's rows (as ingest would store them) into a scratch table; rows per second."""
    import datetime as dt

    from django.db import connection

    rows = []
    now = dt.datetime.now(dt.UTC).isoformat()
    for batch in batches:
        for e in batch:
            st, en = dt.datetime.fromisoformat(e["start"]), dt.datetime.fromisoformat(e["end"])
            ds = e["device_count"] * int((en - st).total_seconds())
            rows.append("\t".join(map(str, (
                spec["supplier"], e["event_id"], e["contract"], e["data_centre"], e["device_model"], e["start"], e["end"],
                e["device_count"], ds, ds * 98900 // 360, ds * 98900 // 360, "1.000", "t", e["utilisation_pct"], now,
            ))))
    seen, unique = set(), []
    for r in rows:
        key = r.split("\t", 2)[1]
        if key not in seen:
            seen.add(key)
            unique.append(r)
    payload = ("\n".join(unique) + "\n").encode()
    cols = ("supplier_id, event_id, contract_id, data_centre_id, device_model_id, started_at, ended_at, device_count, "
            "device_seconds, units_micro, credited_micro, energy_kwh, energy_estimated, utilisation_pct, received_at")
    with connection.cursor() as cur:
        cur.execute("DROP TABLE IF EXISTS bench_usage_copy")
        cur.execute("CREATE TABLE bench_usage_copy (LIKE metering_usageevent INCLUDING ALL)")
    raw = connection.connection
    t = time.perf_counter()
    with raw.cursor() as cur:
        with cur.copy(f"COPY bench_usage_copy ({cols}) FROM STDIN") as copy:
            copy.write(payload)
    raw.commit()
    elapsed = time.perf_counter() - t
    with connection.cursor() as cur:
        cur.execute("DROP TABLE bench_usage_copy")
    return len(rows) / elapsed


def checks(spec: dict, accepted: int) -> dict:
    from django.db.models import Count, Sum

    from ledger.verify import ledger_verify
    from metering.models import ContractDelivery, UsageEvent
    from metering.services.money import released_for

    stored = UsageEvent.objects.filter(contract_id__in=spec["contracts"])
    per = {r["contract_id"]: r for r in stored.values("contract_id").annotate(n=Count("pk"), credited=Sum("credited_micro"))}
    ok = stored.count() == accepted
    for d in ContractDelivery.objects.filter(pk__in=spec["contracts"]):
        row = per.get(d.pk, {"n": 0, "credited": 0})
        ok &= d.events == row["n"] and d.delivered_micro == (row["credited"] or 0)
        ok &= d.released_fen == released_for(value_fen=d.value_fen, quantity_micro=d.quantity_micro, delivered_micro=d.delivered_micro)
    ledger_ok = ledger_verify().ok
    return {"stored_events": stored.count(), "accepted_answers": accepted, "deliveries_consistent": bool(ok), "ledger_ok": ledger_ok}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--batch", type=int, default=10_000)
    p.add_argument("--batches", type=int, default=12, help="batches per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--contracts", type=int, default=8)
    p.add_argument("--dup-rate", type=float, default=0.01)
    p.add_argument("--fresh", action="store_true", help="drop and recreate the bench database")
    args = p.parse_args()

    url = os.environ.get("DATABASE_URL", DEFAULT_URL)
    if "postgres" not in urlsplit(url).scheme:
        sys.exit("metering_bench needs PostgreSQL (DATABASE_URL=postgres://...)")
    database_ensure(url, fresh=args.fresh)
    _django_setup(url)
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    tag = secrets.token_hex(3)
    spec = market_prepare(contracts=args.contracts, tag=tag)
    print(f"contracts {spec['contracts']} ({LOTS} PFLOPS-hours each), tag {tag}")

    env = dict(os.environ, DJANGO_SETTINGS_MODULE="config.settings", DATABASE_URL=url, SECRET_KEY="mbench-" + secrets.token_hex(24),
               LOG_LEVEL="WARNING", DEBUG="0", PYTHONUNBUFFERED="1", SUANLI_EMBEDDED_SCHEDULER="0", MATCHER_TRANSPORT="inline")
    env.pop("REDIS_URL", None)
    logdir = tempfile.mkdtemp(prefix="mbench-")
    port = _free_port()
    web: Service = gunicorn_start("web", port, args.workers, env, logdir, "sync")
    rng = random.Random(7)
    rounds, total_accepted = [], 0
    try:
        for k in range(args.rounds):
            batches = _events(spec, rng, k, args.batch * args.batches, args.dup_rate, args.batch, tag)
            events = sum(len(b) for b in batches)
            copy_rate = copy_phase(batches, spec)
            bodies = [json.dumps({"events": b}).encode() for b in batches]
            shares = [bodies[i::args.clients] for i in range(args.clients)]
            out: mp.Queue = mp.Queue()
            start_at = time.time() + 1.0
            procs = [mp.Process(target=_client_main, args=(port, spec["token"], s, start_at, out)) for s in shares]
            for pr in procs:
                pr.start()
            parts = [out.get() for _ in procs]
            for pr in procs:
                pr.join()
            wall = max(pp["end"] for pp in parts) - start_at
            lat = sorted(x for pp in parts for x in pp["lat"])
            answered = sum(pp["accepted"] + pp["duplicates"] for pp in parts)
            row = {
                "events": events, "accepted": sum(pp["accepted"] for pp in parts), "duplicates": sum(pp["duplicates"] for pp in parts),
                "rejected": sum(pp["rejected"] for pp in parts), "http_errors": sum(pp["errors"] for pp in parts),
                "events_per_s": answered / wall, "copy_rows_per_s": copy_rate,
                "batch_p50_s": lat[len(lat) // 2], "batch_p99_s": lat[min(len(lat) - 1, int(len(lat) * 0.99))],
            }
            row["copy_ratio"] = row["events_per_s"] / copy_rate
            total_accepted += row["accepted"]
            rounds.append(row)
            print(f"round {k + 1}: {row['events']} events ({row['accepted']} accepted, {row['duplicates']} duplicate, "
                  f"{row['rejected']} rejected, {row['http_errors']} HTTP errors) {row['events_per_s']:,.0f} events/s; "
                  f"COPY {copy_rate:,.0f} rows/s; ratio {row['copy_ratio']:.3f}; batch p50 {row['batch_p50_s']:.3f} s "
                  f"p99 {row['batch_p99_s']:.3f} s")
    finally:
        web.stop()
    result_checks = checks(spec, total_accepted)
    print("checks:", result_checks)

    def med(key: str) -> float:
        return statistics.median(r[key] for r in rounds)

    summary = {
        "events_per_s": round(med("events_per_s")), "copy_rows_per_s": round(med("copy_rows_per_s")),
        "copy_ratio": round(med("copy_ratio"), 3), "rating_lag_s": round(med("batch_p99_s"), 3),
        "batch_p50_s": round(med("batch_p50_s"), 3), "batch": args.batch, "workers": args.workers, "clients": args.clients,
        "dup_rate": args.dup_rate, "rounds": args.rounds, "duplicates_answered": sum(r["duplicates"] for r in rounds),
        "rejected": sum(r["rejected"] for r in rounds), "http_errors": sum(r["http_errors"] for r in rounds), **result_checks,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
