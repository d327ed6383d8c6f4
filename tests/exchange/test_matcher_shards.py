"""Production shape: two `runmatcher` processes, one per shard, behind the Redis transport."""

import os
import time

import pytest

from exchange import transport
from exchange.models import Order, Trade
from ledger.verify import ledger_verify
from marketplace import services as market
from marketplace.models import Instrument
from tests.exchange.conftest import start_matcher

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.django_db(transaction=True)]


def test_two_shards_match_their_own_instruments(api, market_setup, settings):
    import redis

    redis.Redis.from_url(os.environ["REDIS_URL"]).flushdb()
    m = market_setup
    market.instruments_roll()
    instruments = list(Instrument.objects.filter(product=m["product"], status="open").order_by("pk")[:2])
    assert {i.pk % 2 for i in instruments} == {0, 1}
    settings.MATCHER_TRANSPORT = "redis"
    settings.MATCHER_SHARDS = 2
    settings.MATCHER_REPLY_TIMEOUT = 10
    transport._client = None
    procs = []
    try:
        procs = [start_matcher(k, 2) for k in range(2)]
        for inst in instruments:
            api.force_authenticate(m["seller_user"])
            sell = api.post("/api/v1/orders/", {"instrument": inst.pk, "side": "sell", "price": "15.00", "quantity": 4, "client_order_id": f"s{inst.pk}"}, format="json")
            assert sell.status_code == 201 and sell.json()["status"] == "open", sell.json()
            api.force_authenticate(m["buyer_user"])
            buy = api.post("/api/v1/orders/", {"instrument": inst.pk, "side": "buy", "price": "15.00", "quantity": 3, "client_order_id": f"b{inst.pk}"}, format="json")
            assert buy.json()["status"] == "filled", buy.json()
        assert Trade.objects.count() == 2
        assert sorted(Trade.objects.values_list("instrument_id", flat=True)) == [i.pk for i in instruments]
        assert not Order.objects.filter(status="pending").exists()
        assert ledger_verify().ok
        # Each shard's load figures (README, scaling out): its two orders, in at least one batch, some time busy.
        r = redis.Redis.from_url(os.environ["REDIS_URL"])
        for k in range(2):
            load = {key.decode(): float(v) for key, v in r.hgetall(transport.load_key(k)).items()}
            assert load["commands"] >= 2 and 1 <= load["batches"] <= load["commands"] and load["busy_us"] > 0, (k, load)
            assert load["updated"] >= load["started"]
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=10)
        transport._client = None
    time.sleep(0.1)
