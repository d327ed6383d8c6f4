"""The Redis transport's waits: an order request waits MATCHER_REPLY_TIMEOUT (or the caller's timeout) for the
matcher, however long that is; redis-py's default 5 s read timeout must not end it with an error."""

import json
import threading
import time

import pytest
import redis

from exchange import transport

pytestmark = pytest.mark.redis


@pytest.fixture
def queue(settings):
    settings.MATCHER_TRANSPORT, settings.MATCHER_SHARDS = "redis", 1
    r = redis.Redis.from_url(settings.REDIS_URL)
    r.flushdb()
    yield r
    r.flushdb()


def answer_after(r, seconds: float) -> threading.Thread:
    """A stand-in matcher: takes the next message from shard 0's queue and answers it `seconds` later."""

    def run() -> None:
        _, raw = r.brpop([transport.queue_key(0)], timeout=3)
        message = json.loads(raw)
        time.sleep(seconds)
        r.lpush(message["reply"], json.dumps([{"op": c["op"], "answered": True} for c in message["commands"]]))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_a_reply_slower_than_redis_pys_read_timeout_is_still_received(queue):
    matcher = answer_after(queue, 5.5)
    began = time.monotonic()
    replies = transport.RedisClient().request([{"op": "place", "instrument": 1}], timeout=8)
    assert replies == [{"op": "place", "answered": True}]
    assert 5.5 <= time.monotonic() - began < 8
    matcher.join()


def test_no_reply_within_a_long_timeout_is_none_not_an_error(queue):
    began = time.monotonic()
    assert transport.RedisClient().request([{"op": "place", "instrument": 1}], timeout=5.5) is None
    assert 5.5 <= time.monotonic() - began < 6.5
    assert queue.llen(transport.queue_key(0)) == 1  # still queued: a matcher that starts later processes it


def gate_on(key: str, allowed: int) -> transport.Gate:
    """A gate whose counter is on the transport's Redis; counting anywhere else would be a second round trip."""

    def elsewhere() -> int:
        raise AssertionError("counted apart from the push")

    return transport.Gate(count=elsewhere, allowed=allowed, ttl=60, redis_key=key)


def test_a_gated_send_counts_and_queues_in_one_round_trip_within_the_rate(queue):
    matcher = answer_after(queue, 0)
    replies = transport.RedisClient().request([{"op": "place", "instrument": 1}], timeout=3, gate=gate_on("test:rate", 1))
    assert replies == [{"op": "place", "answered": True}]
    assert int(queue.get("test:rate")) == 1 and 0 < queue.ttl("test:rate") <= 60  # the window's counter expires
    matcher.join()


def test_a_gated_send_past_the_rate_queues_nothing_and_answers_at_once(queue):
    queue.set("test:rate", 2)
    began = time.monotonic()
    with pytest.raises(transport.RateExceeded) as refused:
        transport.RedisClient().request([{"op": "place", "instrument": 1}], timeout=3, gate=gate_on("test:rate", 2))
    assert refused.value.total == 3
    assert time.monotonic() - began < 1  # not a wait for the reply timeout
    assert queue.llen(transport.queue_key(0)) == 0  # the matcher never sees the order
    assert queue.keys("suanli:reply:*") == []  # the marker that woke the wait is gone with it


def test_a_failed_round_trip_leaves_no_reply_behind_for_the_threads_next_request(queue):
    """Each thread sends its requests on its own connection: an error reply must not leave the rest of that
    round trip's replies to be read as the next request's."""
    client = transport.RedisClient()
    queue.set("test:rate", "not a number")  # the gated push's INCRBY fails: an error reply, then the BLPOP's
    with pytest.raises(redis.ResponseError):
        client.request([{"op": "place", "instrument": 1}], timeout=0.5, gate=gate_on("test:rate", 5))
    assert queue.llen(transport.queue_key(0)) == 0
    matcher = answer_after(queue, 0)
    assert client.request([{"op": "cancel", "instrument": 1}], timeout=3) == [{"op": "cancel", "answered": True}]
    matcher.join()


def test_a_threads_connection_closed_by_redis_while_idle_is_opened_anew_not_failed(queue):
    """After a Redis restart (here: the connection killed) the next order goes through, as with a pooled
    connection, which redis-py checks on checkout."""
    client = transport.RedisClient()
    matcher = answer_after(queue, 0)
    assert client.request([{"op": "place", "instrument": 1}], timeout=3) == [{"op": "place", "answered": True}]
    matcher.join()
    conn = client._local.conn
    conn.send_command("CLIENT", "ID")
    queue.client_kill_filter(_id=conn.read_response())
    time.sleep(0.05)
    matcher = answer_after(queue, 0)
    assert client.request([{"op": "cancel", "instrument": 1}], timeout=3) == [{"op": "cancel", "answered": True}]
    matcher.join()
