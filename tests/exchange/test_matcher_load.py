"""A matcher shard's load figures: what an operator reads to decide when to add shards (README, scaling out)."""

import logging

import pytest

from exchange.transport import LoadFigures


def test_load_figures_add_up_and_log_a_line_per_window(settings, caplog, monkeypatch):
    settings.MATCHER_LOAD_LOG_SECONDS = 10
    clock = [1000.0]
    monkeypatch.setattr("exchange.transport.time.monotonic", lambda: clock[0])
    figures = LoadFigures(shard=1)
    for commands, seconds in [(3, 0.004), (1, 0.002), (8, 0.010), (4, 0.004)]:
        figures.add(commands, seconds)
    assert {k: figures.as_hash()[k] for k in ("batches", "commands", "busy_us")} == {"batches": 4, "commands": 16, "busy_us": 20_000}

    with caplog.at_level(logging.INFO, logger="exchange.transport"):
        clock[0] += 5
        figures.log_due()  # half a window: nothing yet
        assert caplog.messages == []
        clock[0] += 5
        figures.log_due()
    assert caplog.messages == [
        "matcher shard 1: 16 commands in 4 batches over 10 s (4.0 per batch, 2/s), busy 0%, batch p50 4.0 ms p99 10.0 ms max 10.0 ms"
    ]
    # The next window starts empty; the cumulative figures (the Redis hash) keep counting.
    figures.add(2, 0.5)
    clock[0] += 10
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="exchange.transport"):
        figures.log_due()
    assert caplog.messages == [
        "matcher shard 1: 2 commands in 1 batches over 10 s (2.0 per batch, 0/s), busy 5%, batch p50 500.0 ms p99 500.0 ms max 500.0 ms"
    ]
    assert figures.as_hash()["commands"] == 18 and figures.as_hash()["batches"] == 5


def test_an_idle_window_logs_nothing_and_zero_turns_the_log_off(settings, caplog, monkeypatch):
    clock = [0.0]
    monkeypatch.setattr("exchange.transport.time.monotonic", lambda: clock[0])
    figures = LoadFigures(shard=0)
    settings.MATCHER_LOAD_LOG_SECONDS = 0
    figures.add(5, 0.01)
    clock[0] += 3600
    with caplog.at_level(logging.INFO, logger="exchange.transport"):
        figures.log_due()
        settings.MATCHER_LOAD_LOG_SECONDS = 60
        figures.window, figures.window_commands = [], 0
        figures.log_due()  # a whole window without batches
    assert caplog.messages == []


@pytest.mark.django_db(transaction=True)
def test_operators_see_the_embedded_matcher_serving_and_its_load(api, market_setup, settings):
    from exchange import transport
    from tests.factories import UserFactory

    settings.MATCHER_TRANSPORT = "thread"
    transport._client = None
    m = market_setup
    try:
        api.force_authenticate(m["buyer_user"])
        for i in range(3):
            placed = api.post("/api/v1/orders/", {"instrument": m["instrument"].pk, "side": "buy", "price": "14.00", "quantity": 1,
                                                  "client_order_id": f"load-{i}"}, format="json")
            assert placed.status_code == 201, placed.json()
        assert api.get("/api/v1/risk/matchers/").status_code == 403  # traders do not see the venue's machinery
        api.force_authenticate(UserFactory(platform_role="operator"))
        [shard] = api.get("/api/v1/risk/matchers/").json()
        assert shard["shard"] == 0 and shard["serving"] is True
        assert shard["commands"] >= 3 and 1 <= shard["batches"] <= shard["commands"] and shard["busy_seconds"] > 0
        assert shard["started"] <= shard["updated"]
    finally:
        transport.client().stop()
        transport._client = None


@pytest.mark.redis
def test_a_shard_that_stopped_writing_its_figures_is_not_serving(api, settings, db):
    """Over Redis, three shards: 0 wrote just now, 1 a minute ago (stopped), 2 never (not started)."""
    import time

    import redis

    from exchange.transport import load_key
    from tests.factories import UserFactory

    settings.MATCHER_TRANSPORT, settings.MATCHER_SHARDS = "redis", 3
    r = redis.Redis.from_url(settings.REDIS_URL)
    r.delete(*(load_key(k) for k in range(3)))
    now = time.time()
    r.hset(load_key(0), mapping={"batches": 4, "commands": 9, "busy_us": 1_500, "started": now - 30, "updated": now})
    r.hset(load_key(1), mapping={"batches": 2, "commands": 2, "busy_us": 700, "started": now - 90, "updated": now - 60})
    api.force_authenticate(UserFactory(platform_role="regulator"))  # regulators read too
    shards = api.get("/api/v1/risk/matchers/").json()
    assert [(s["shard"], s["serving"], s["commands"], s["busy_seconds"]) for s in shards] == [(0, True, 9, 0.0015), (1, False, 2, 0.0007), (2, False, 0, 0.0)]
    assert shards[2]["updated"] is None and shards[0]["updated"].endswith("Z")
