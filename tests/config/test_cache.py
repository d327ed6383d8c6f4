"""Django's cache on Redis shares one connection pool per process (common/cache.py).

Django keeps a cache backend per thread and, under ASGI, per request; its Redis backend builds a connection
pool per backend object. Without the shared pool every request opened a TCP connection to Redis, and the
order-rate throttle kept each one: uvicorn grew by 200 MB and Redis held 550 clients after a ten-minute soak."""

import os
import threading
import uuid

import pytest
import redis
from django.conf import settings
from django.core.cache import caches

from exchange.api.views import _count

pytestmark = pytest.mark.redis


def _clients() -> int:
    r = redis.Redis.from_url(settings.REDIS_URL)
    try:
        return int(r.info("clients")["connected_clients"])
    finally:
        r.close()


def _in_new_threads(fn, n: int) -> list:
    out: list = []
    for i in range(n):  # one after another: each thread has its own cache backend, as each ASGI request does
        t = threading.Thread(target=lambda i=i: out.append(fn(i)))
        t.start()
        t.join()
    return out


def test_cache_backends_of_different_threads_share_one_redis_pool():
    def use(i):
        backend = caches["default"]
        backend.set(f"test-cache-{i}", i, 30)
        assert backend.get(f"test-cache-{i}") == i
        return backend, backend._cache._get_connection_pool(True)  # objects, not ids: a freed id is reused

    seen = _in_new_threads(use, 5)
    assert len({id(backend) for backend, _ in seen}) == 5  # Django's per-thread backends, as before
    assert len({id(pool) for _, pool in seen}) == 1


def test_a_hundred_throttled_requests_do_not_leave_a_hundred_redis_connections():
    before = _clients()
    key = f"throttle:test:{uuid.uuid4().hex}"
    counts = _in_new_threads(lambda i: _count(key, 60), 100)
    assert counts == list(range(1, 101))  # one counter, shared by every backend
    assert _clients() - before <= 3, f"Redis clients grew from {before} to {_clients()}"


def test_a_throttle_counter_expires_with_its_window():
    key = f"throttle:test:{uuid.uuid4().hex}"
    assert [_count(key, 61) for _ in range(3)] == [1, 2, 3]
    r = redis.Redis.from_url(settings.REDIS_URL)
    try:
        assert 0 < r.ttl(caches["default"].make_and_validate_key(key)) <= 61
    finally:
        r.close()


def test_a_forked_child_uses_its_own_redis_connection():
    backend = caches["default"]
    backend.set("test-cache-fork", 1, 30)
    parent = backend._cache.get_client(None, write=True)
    pid = os.fork()
    if pid == 0:  # the child: a client of its own, and it works
        try:
            child = caches["default"]._cache.get_client(None, write=True)
            ok = child is not parent and child.connection is not parent.connection and caches["default"].get("test-cache-fork") == 1
        except BaseException:
            ok = False
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert backend.get("test-cache-fork") == 1  # the parent's connection is undisturbed
