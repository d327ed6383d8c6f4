"""Vouchers benchmark: what the voucher funding hook costs metering's ingest path on PostgreSQL.

Usage::

    .venv/bin/python bench/vouchers_bench.py [--batch 2000] [--batches 5] [--rounds 3] [--contracts 8]

DATABASE_URL names the bench database (default postgres://postgres@127.0.0.1:5432/suanli_vbench; dropped and
created, then migrated). Setup reuses bench/metering_bench.py's market (a supplier with 2,000 H100, a funded
buyer, contracts of 2,000 lots at 15.00 CNY traded through the order API, window moved around now) twice:
one set of contracts without a voucher share, one set whose buyer's voucher committed 20% of each.

Each round runs three modes in turn, the same number of events each, calling
metering.services.usage_batch_ingest in this process (no HTTP, so the hook's share of the cost shows):
  off       the vouchers funding source unregistered (metering alone, the baseline)
  plain     source registered, contracts without a redemption (one extra SELECT per batch)
  voucher   source registered, every contract with a committed share (an extra ledger entry per contract)
events_per_s per mode is the median over rounds; ratio = mode / off in the same rounds. After the rounds
the bench checks that each voucher contract's paid share = committed x released // value and that the
ledger verifies. The last line printed is JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from exchange_bench import database_ensure  # noqa: E402
from metering_bench import _django_setup, _events, market_prepare  # noqa: E402

DEFAULT_URL = "postgres://postgres@127.0.0.1:5432/suanli_vbench"


def voucher_prepare() -> None:
    """A programme and a voucher for the bench buyer, issued a day ago (before the contracts)."""
    import datetime as dt

    from django.utils import timezone

    from marketplace.models import Membership, Organisation, User
    from vouchers import services

    authority, _ = User.objects.get_or_create(username="vbench-authority", defaults={"platform_role": "authority"})
    buyer = Organisation.objects.get(name="MBench Buyer")
    admin, created = User.objects.get_or_create(username="vbench-buyer-admin")
    if created:
        Membership.objects.create(user=admin, organisation=buyer, role="admin")
    now = timezone.now()
    prog = services.programme_create(user=authority, code="vbench", name="bench", valid_from=now - dt.timedelta(days=30),
                                     valid_until=now + dt.timedelta(days=365), rate_bps=2000, org_cap_per_year_fen=10**12)
    services.programme_fund(user=authority, programme=prog, amount_fen=10**11, idempotency_key="bench")
    app, _ = services.application_submit(user=admin, programme=prog, organisation=buyer, credit_code=buyer.credit_code,
                                         declared_size_class=buyer.size_class, requested_fen=10**10, idempotency_key="bench",
                                         now=now - dt.timedelta(days=1))
    services.application_approve(user=authority, application_id=app.pk, now=now - dt.timedelta(days=1))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=2000)
    ap.add_argument("--batches", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--contracts", type=int, default=8)
    args = ap.parse_args()
    url = os.environ.get("DATABASE_URL", DEFAULT_URL)
    database_ensure(url, fresh=True)
    _django_setup(url)
    import datetime as dt

    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    from ledger.verify import ledger_verify
    from metering import funding
    from metering import services as metering
    from metering.models import ContractDelivery
    from vouchers import services
    from vouchers.models import Redemption

    market_prepare(contracts=1, tag="warm")  # creates the organisations
    voucher_prepare()
    # market_prepare moves its instrument's window to now (whole seconds) - 12 h: a second apart, or two
    # instruments of the product would get the same window.
    time.sleep(1.1)
    plain = market_prepare(contracts=args.contracts, tag="plain")
    time.sleep(1.1)
    subsidised = market_prepare(contracts=args.contracts, tag="voucher")
    for pk in subsidised["contracts"]:
        r = services.redemption_commit(contract_id=pk)
        assert r is not None and r.status == "committed", r
    rng = random.Random(7)
    count = args.batch * args.batches
    results: dict[str, list[float]] = {"off": [], "plain": [], "voucher": []}
    for round_no in range(args.rounds):
        for mode in ("off", "plain", "voucher"):
            spec = subsidised if mode == "voucher" else plain
            batches = _events(spec, rng, round_no, count, 0.0, args.batch, f"{mode}{round_no}")
            if mode == "off":
                funding.source_unregister("vouchers")
            else:
                funding.source_register("vouchers", services.escrow_moves_fund)
            now = dt.datetime.fromtimestamp(spec["now"], dt.UTC)
            t0 = time.perf_counter()
            accepted = 0
            for b in batches:
                accepted += metering.usage_batch_ingest(supplier_ids={spec["supplier"]}, events=b, now=now).accepted
            elapsed = time.perf_counter() - t0
            assert accepted == count, (mode, accepted)
            results[mode].append(count / elapsed)
            print(f"round {round_no} {mode:8s} {count / elapsed:10.0f} events/s")
    funding.source_register("vouchers", services.escrow_moves_fund)
    for r in Redemption.objects.filter(contract_id__in=subsidised["contracts"]):
        released = ContractDelivery.objects.get(pk=r.contract_id).released_fen
        assert r.paid_fen == r.committed_fen * released // r.value_fen and r.paid_fen > 0
    assert ledger_verify().ok
    med = {m: statistics.median(v) for m, v in results.items()}
    ratios = {m: [v / o for v, o in zip(results[m], results["off"], strict=True)] for m in ("plain", "voucher")}
    out = {
        "bench": "vouchers_hook", "batch": args.batch, "events_per_mode_round": count, "rounds": args.rounds,
        "events_per_s": {m: round(v) for m, v in med.items()},
        "ratio_vs_off": {m: round(statistics.median(v), 3) for m, v in ratios.items()},
        "checks": "ok",
    }
    print(f"median events/s: off {med['off']:.0f}, plain {med['plain']:.0f}, voucher {med['voucher']:.0f}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
