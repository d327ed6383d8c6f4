"""Crash safety: SIGKILL the matcher mid-stream, restart it, and end exactly where an uninterrupted run ends."""

import os
import random
import signal
import subprocess
import threading

import pytest

from exchange import services, transport
from exchange.models import Contract, Order, Trade
from ledger import services as ledger
from ledger.models import AccountKind
from ledger.selectors import balances_get
from ledger.verify import ledger_verify
from marketplace import services as market
from marketplace.models import Instrument
from tests.exchange.conftest import start_matcher
from tests.factories import OrganisationFactory, member

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.django_db(transaction=True)]


def _matcher() -> subprocess.Popen:
    return start_matcher(0, 1, MATCHER_HOUSEKEEPING_SECONDS="0.2")


def _stream(n: int, seed: int) -> list[tuple]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        side = rng.choice(["buy", "sell"])
        price = 1500 + rng.randint(-20, 20) * (1 if side == "sell" else 1)
        out.append((side, price, rng.randint(1, 6), f"o{i}", rng.choice(["GTC", "GTC", "IOC"])))
    return out


def _run(setup, stream, *, kill_at: int | None, settings) -> dict:
    instrument, buyer, seller, buyer_user, seller_user, tag = setup
    proc = _matcher()
    settings.MATCHER_REPLY_TIMEOUT = 5
    killed_at = None
    try:
        for k, (side, price, qty, cid, tif) in enumerate(stream):
            if kill_at is not None and k == kill_at:
                # Kill while this order's batch is being matched and written, not between requests.
                threading.Timer(0.003, proc.send_signal, args=(signal.SIGKILL,)).start()
                killed_at = k
                settings.MATCHER_REPLY_TIMEOUT = 0.3
            if killed_at is not None and k == killed_at + 10:
                assert proc.wait(timeout=10) == -signal.SIGKILL
                proc = _matcher()  # re-processes what was in flight, then the queue, in arrival order
                settings.MATCHER_REPLY_TIMEOUT = 5
            org, user = (buyer, buyer_user) if side == "buy" else (seller, seller_user)
            req = services.OrderRequest(instrument=instrument, side=side, quantity=qty, client_order_id=f"{tag}-{cid}", price=instrument.fen_per_lot_to_price(price), time_in_force=tif)
            # Unanswered (state None) while the matcher is down: the command waits in Redis, or in the dead
            # matcher's in-flight list if it had taken it, and is processed after the restart.
            services.order_place(user=user, organisation=org, request=req)
        transport.send([{"op": "expire"}], timeout=30)  # a barrier: answered after everything before it
        assert not Order.objects.filter(instrument=instrument, status="pending").exists()
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    orders = {o.client_order_id.split("-", 1)[1]: (o.status, o.filled_quantity, o.open_quantity, o.fee_fen) for o in Order.objects.filter(instrument=instrument)}
    cid = {o.pk: o.client_order_id.split("-", 1)[1] for o in Order.objects.filter(instrument=instrument)}
    trades = [(t.seq, cid[t.maker_order_id], cid[t.taker_order_id], t.price_fen_per_lot, t.quantity, t.buyer_fee_fen)
              for t in Trade.objects.filter(instrument=instrument).order_by("seq")]
    return {
        "orders": orders, "trades": trades,
        "contracts": sorted(Contract.objects.filter(instrument=instrument).values_list("quantity", "value_fen")),
        "buyer": balances_get(organisation=buyer), "seller_orders_open": sum(v[2] for k, v in orders.items()),
    }


def _setup(market_setup, tag: str, instrument: Instrument):
    buyer = OrganisationFactory(name=f"Buyer {tag}", kind="buyer")
    clearing = ledger.platform_account(kind=AccountKind.PROVIDER_CLEARING, name="offline")
    ledger.transfer(source=clearing, destination=ledger.account_for(organisation=buyer, kind="available"), amount_fen=100_000_000, idempotency_key=f"fund:{tag}", kind="top_up")
    seller = market_setup["supplier"]
    return (instrument, buyer, seller, member(buyer, role="trader", username=f"b-{tag}"), market_setup["seller_user"], tag)


def test_sigkill_mid_stream_loses_and_duplicates_nothing(market_setup, settings):
    import redis

    redis.Redis.from_url(os.environ["REDIS_URL"]).flushdb()
    settings.MATCHER_TRANSPORT = "redis"
    settings.MATCHER_SHARDS = 1
    transport._client = None
    market.instruments_roll()
    a, b = Instrument.objects.filter(product=market_setup["product"], status="open").order_by("pk")[:2]
    stream = _stream(80, seed=7)
    reference = _run(_setup(market_setup, "a", a), stream, kill_at=None, settings=settings)
    crashed = _run(_setup(market_setup, "b", b), stream, kill_at=30, settings=settings)
    assert reference["trades"], "the stream should trade"
    assert crashed == reference
    assert ledger_verify().ok
    transport._client = None
