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
from tests.factories import UserFactory

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
        # What operators see of each shard (README, scaling out): serving, its two orders in at least one batch.
        api.force_authenticate(UserFactory(platform_role="operator"))
        shards = api.get("/api/v1/risk/matchers/").json()
        assert [s["shard"] for s in shards] == [0, 1] and all(s["serving"] for s in shards), shards
        assert all(s["commands"] >= 2 and 1 <= s["batches"] <= s["commands"] and s["busy_seconds"] > 0 for s in shards), shards
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=10)
        transport._client = None
    time.sleep(0.1)
