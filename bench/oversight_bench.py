"""Oversight benchmark: the regulator's trade tape and CSV export over a million trades in PostgreSQL.

Usage::

    .venv/bin/python bench/oversight_bench.py [--trades 1000000] [--repeat 15] [--keep]

A scratch database (default suanli_oversight_bench on postgres://postgres@127.0.0.1:5432, override with
OVERSIGHT_BENCH_URL) is created, migrated, filled, measured and dropped (``--keep`` keeps it).

Data: 12 suppliers, 40 buyers, 60 instruments of one product; 200,000 orders and ``--trades`` trades in the
real exchange tables, generated set-based (INSERT ... SELECT generate_series), spread over 30 days, prices
within 10% of the reference, 1-40 lots. Then ANALYZE (the whole database).

Cases, each through the real view (DRF, django-filter, keyset pagination, serializer) with a regulator's
token-less forced authentication, ``--repeat`` times, median reported:

* ``page_newest``: the first page, no filter;
* ``page_instrument_day``: one instrument, one day;
* ``page_organisation_price``: one organisation on either side, a price range;
* ``page_product_size``: product and a size range;
* ``page_rare_old``: one organisation on one instrument in a narrow price band in the first two days (few,
  old matches: the case a keyset walk down the primary key would do worst);
* ``page_deep``: the 20th page of one instrument's trades, reached by following ``next`` cursors (the time
  of the 20th request alone).

``tape_page_ms`` is the slowest of those medians. The export streams the whole tape (``?export=csv``)
through the view and counts rows: ``export_rows_per_s``; the baseline in the same run is PostgreSQL's own
``COPY (SELECT the same columns) TO STDOUT CSV`` read by psycopg, the ceiling for any exporter.
Then (unless ``--no-audit``) the million trades are appended to the audit chain by ``audit_ingest`` and the
chain verified, alone and with every record compared against its source row.
The last line printed is JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time
from urllib.parse import urlsplit, urlunsplit

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

DEFAULT_URL = "postgres://postgres@127.0.0.1:5432/suanli_oversight_bench"
INSTRUMENTS, SUPPLIERS, BUYERS, ORDERS = 60, 12, 40, 200_000


def admin_execute(url: str, sql: str) -> None:
    import psycopg

    parts = urlsplit(url)
    admin = urlunsplit(parts._replace(path="/postgres"))
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql)


def seed(trades: int) -> dict:
    import datetime as dt
    from decimal import Decimal

    from django.db import connection
    from django.utils import timezone

    from marketplace.models import Instrument, Organisation, PlatformRole, Product, User

    product = Product.objects.create(code="BENCH-FP16", name="Bench", unit="FP16_PFH", chip_class="training", lot_size=Decimal("1"),
                                     tick_size=Decimal("0.01"), reference_price=Decimal("15.00"), window="day")
    start = timezone.now().replace(hour=0, minute=0, second=0, microsecond=0) - dt.timedelta(days=30)
    instruments = [
        Instrument.objects.create(
            product=product, code=f"BENCH-{i:03d}", status="open", delivery_start=start + dt.timedelta(days=i + 31),
            delivery_end=start + dt.timedelta(days=i + 32), opens_at=start, gate_closure=start + dt.timedelta(days=i + 31),
            tick_size=product.tick_size, lot_size=product.lot_size, min_order_lots=1, max_order_lots=100000,
            reference_price=product.reference_price, price_band_bps=1000, maker_fee_bps=5, taker_fee_bps=10)
        for i in range(INSTRUMENTS)
    ]
    orgs = [Organisation.objects.create(name=f"Bench org {i}", credit_code=f"B{i:017d}", kind="supplier" if i < SUPPLIERS else "buyer",
                                        size_class="small", founded_on=dt.date(2020, 1, 1), registration_region="Shanghai")
            for i in range(SUPPLIERS + BUYERS)]
    suppliers, buyers = [o.pk for o in orgs[:SUPPLIERS]], [o.pk for o in orgs[SUPPLIERS:]]
    trader = User.objects.create(username="bench-trader")
    regulator = User.objects.create(username="bench-regulator", platform_role=PlatformRole.REGULATOR)
    inst_ids = [i.pk for i in instruments]
    t0 = time.perf_counter()
    with connection.cursor() as cur:
        cur.execute(
            """
            INSERT INTO exchange_order (instrument_id, organisation_id, user_id, client_order_id, side, type, time_in_force,
                price_fen_per_lot, quantity, min_quantity, post_only, stp, status, filled_quantity, open_quantity, reason,
                maker_value_fen, taker_value_fen, fee_fen, created_at, updated_at)
            SELECT (%(inst)s::bigint[])[1 + g %% %(ni)s],
                   CASE WHEN g %% 2 = 0 THEN (%(sup)s::bigint[])[1 + (g / 2) %% %(ns)s] ELSE (%(buy)s::bigint[])[1 + (g / 2) %% %(nb)s] END,
                   %(user)s, 'o' || g, CASE WHEN g %% 2 = 0 THEN 'sell' ELSE 'buy' END, 'limit', 'GTC',
                   1350 + (g * 7919) %% 301, 40, 0, false, 'cancel_newest', 'filled', 40, 0, '', 0, 0, 0,
                   %(start)s + g * interval '10 seconds', %(start)s + g * interval '10 seconds'
            FROM generate_series(0::bigint, %(n)s - 1) AS g
            """,
            {"inst": inst_ids, "ni": INSTRUMENTS, "sup": suppliers, "ns": SUPPLIERS, "buy": buyers, "nb": BUYERS,
             "user": trader.pk, "start": start, "n": ORDERS},
        )
        cur.execute("SELECT min(id) FROM exchange_order")
        first_order = cur.fetchone()[0]
        seconds = 30 * 86400 / trades
        # Trade i: instrument i mod 60 with seq i div 60 + 1; maker a sell order and taker a buy order of that
        # instrument; price 13.50-16.50 CNY (1350-1650 fen per lot), 1-40 lots; times spread over 30 days.
        cur.execute(
            """
            INSERT INTO exchange_trade (instrument_id, seq, maker_order_id, taker_order_id, buyer_id, seller_id, price_fen_per_lot,
                quantity, value_fen, taker_side, buyer_fee_fen, seller_fee_fen, created_at)
            SELECT (%(inst)s::bigint[])[1 + g %% %(ni)s], g / %(ni)s + 1,
                   %(first)s + ((g * 2) %% %(no)s), %(first)s + ((g * 2 + 1) %% %(no)s),
                   (%(buy)s::bigint[])[1 + (g * 7) %% %(nb)s], (%(sup)s::bigint[])[1 + (g * 3) %% %(ns)s],
                   p, q, p * q, 'buy', (p * q * 10 + 9999) / 10000, (p * q * 5 + 5000) / 10000,
                   %(start)s + g * (%(secs)s * interval '1 second')
            FROM (SELECT g, 1350 + (g * 7919) %% 301 AS p, 1 + (g * 104729) %% 40 AS q FROM generate_series(0::bigint, %(n)s - 1) AS g) s
            """,
            {"inst": inst_ids, "ni": INSTRUMENTS, "first": first_order, "no": ORDERS, "buy": buyers, "nb": BUYERS,
             "sup": suppliers, "ns": SUPPLIERS, "start": start, "secs": seconds, "n": trades},
        )
        cur.execute("ANALYZE")  # what autovacuum would have done; without it the planner thinks a product has one instrument
    return {"regulator": regulator, "instrument": instruments[7], "product": product, "organisation": buyers[5],
            "start": start, "seed_s": time.perf_counter() - t0}


def timed(client, url: str, params: dict | None = None) -> tuple[float, dict]:
    t = time.perf_counter()
    response = client.get(url, params or {})
    ms = (time.perf_counter() - t) * 1000
    assert response.status_code == 200, response.content[:500]
    return ms, response.json()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trades", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--no-audit", action="store_true", help="skip appending the trades to the audit chain and verifying it")
    args = parser.parse_args()
    url = os.environ.get("OVERSIGHT_BENCH_URL", DEFAULT_URL)
    name = urlsplit(url).path.lstrip("/")
    admin_execute(url, f'DROP DATABASE IF EXISTS "{name}"')
    admin_execute(url, f'CREATE DATABASE "{name}"')
    os.environ["DATABASE_URL"] = url
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    os.environ["REDIS_URL"] = ""
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection
    from rest_framework.test import APIClient

    try:
        t = time.perf_counter()
        call_command("migrate", verbosity=0)
        print(f"migrated in {time.perf_counter() - t:.1f} s")
        s = seed(args.trades)
        print(f"seeded {args.trades:,} trades and {ORDERS:,} orders in {s['seed_s']:.1f} s")
        client = APIClient()
        client.force_authenticate(s["regulator"])
        tape = "/api/v1/oversight/trades/"
        import datetime as dt

        day = s["start"] + dt.timedelta(days=12)
        cases = {
            "page_newest": {},
            "page_instrument_day": {"instrument": s["instrument"].pk, "since": day.isoformat(), "until": (day + dt.timedelta(days=1)).isoformat()},
            "page_organisation_price": {"organisation": s["organisation"], "price_fen_min": 1500, "price_fen_max": 1520},
            "page_product_size": {"product": s["product"].pk, "quantity_min": 30, "quantity_max": 35},
            # rare and old: one organisation on one instrument, a narrow price band, in the first two days
            "page_rare_old": {"organisation": s["organisation"], "instrument": s["instrument"].pk, "price_fen_min": 1400,
                              "price_fen_max": 1420, "until": (s["start"] + dt.timedelta(days=2)).isoformat()},
        }
        medians = {}
        for case, params in cases.items():
            timed(client, tape, params)  # warm
            runs = [timed(client, tape, params)[0] for _ in range(args.repeat)]
            medians[case] = statistics.median(runs)
            print(f"{case:26s} median {medians[case]:7.1f} ms  (min {min(runs):.1f}, max {max(runs):.1f})")
        deep = []
        for _ in range(max(3, args.repeat // 3)):
            ms, body = timed(client, tape, {"instrument": s["instrument"].pk})
            for _ in range(19):
                ms, body = timed(client, body["next"])
            deep.append(ms)
        medians["page_deep"] = statistics.median(deep)
        print(f"{'page_deep (20th page)':26s} median {medians['page_deep']:7.1f} ms")

        # Export: the whole tape through the view, then COPY as the baseline.
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        t = time.perf_counter()
        response = client.get(tape, {"export": "csv"})
        rows = -1  # the header
        size = 0
        for block in response.streaming_content:
            rows += block.count(b"\n")
            size += len(block)
        export_s = time.perf_counter() - t
        assert rows == args.trades, rows
        export_rate = rows / export_s
        rss_growth_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024
        print(f"export: {rows:,} rows, {size / 1e6:.0f} MB in {export_s:.1f} s = {export_rate:,.0f} rows/s; peak RSS grew {rss_growth_mb:.1f} MB")
        t = time.perf_counter()
        copied = 0
        with connection.cursor() as cur:
            sql = ("COPY (SELECT t.id, t.created_at, t.instrument_id, i.code, p.code, t.seq, t.buyer_id, t.seller_id, t.taker_side, "
                   "round(t.price_fen_per_lot / 100.0 / i.lot_size, 2), t.price_fen_per_lot, t.quantity, t.value_fen, t.buyer_fee_fen, "
                   "t.seller_fee_fen, t.maker_order_id, t.taker_order_id FROM exchange_trade t JOIN marketplace_instrument i ON i.id = t.instrument_id "
                   "JOIN marketplace_product p ON p.id = i.product_id ORDER BY t.id) TO STDOUT WITH CSV")
            with cur.cursor.copy(sql) as copy:
                for block in copy:
                    copied += bytes(block).count(b"\n")
        copy_s = time.perf_counter() - t
        copy_rate = copied / copy_s
        print(f"baseline COPY ... TO STDOUT CSV: {copied:,} rows in {copy_s:.1f} s = {copy_rate:,.0f} rows/s; export/COPY = {export_rate / copy_rate:.2f}")
        audit = {}
        if not args.no_audit:
            from oversight.audit import audit_ingest, audit_verify

            t = time.perf_counter()
            added = audit_ingest()
            ingest_s = time.perf_counter() - t
            t = time.perf_counter()
            chain_only = audit_verify(check_sources=False)
            chain_s = time.perf_counter() - t
            t = time.perf_counter()
            full = audit_verify()
            full_s = time.perf_counter() - t
            assert chain_only.ok and full.ok, (chain_only, full)
            n = sum(added.values())
            audit = {"audit_ingest_rows_per_s": round(n / ingest_s), "audit_verify_chain_rows_per_s": round(n / chain_s),
                     "audit_verify_with_sources_rows_per_s": round(n / full_s)}
            print(f"audit: ingested {n:,} records in {ingest_s:.1f} s ({n / ingest_s:,.0f}/s); verified the chain in {chain_s:.1f} s, "
                  f"chain + sources in {full_s:.1f} s")
        result = {
            "trades": args.trades, "tape_page_ms": round(max(medians.values()), 1),
            **{f"{k}_ms": round(v, 1) for k, v in medians.items()},
            "export_rows_per_s": round(export_rate), "export_rss_growth_mb": round(rss_growth_mb, 1), "copy_rows_per_s": round(copy_rate), "export_vs_copy": round(export_rate / copy_rate, 2),
            "goals_met": max(medians.values()) < 200 and export_rate > 50_000, **audit,
        }
    finally:
        connection.close()
        if not args.keep:
            admin_execute(url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    print(json.dumps(result))


if __name__ == "__main__":
    main()
