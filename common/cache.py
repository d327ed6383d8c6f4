"""One Redis connection pool per process for Django's cache.

Django keeps a cache backend per thread and, under ASGI, per request context (``caches`` is an asgiref Local),
and its Redis backend builds its connection pool lazily per backend object. Under uvicorn every request that
touched the cache therefore opened a new TCP connection to Redis, and an object cached against one backend
outlived it (the order-rate throttle's client kept every request's connection open: 550 Redis clients and
+200 MB in a ten-minute soak). ``SharedConnectionPool`` is the pool class the cache is configured with
(CACHES OPTIONS ``pool_class``): ``from_url`` answers the same pool for the same URL and options for the
life of the process, so all backends share its connections (redis-py pools are thread-safe and reset
themselves in a forked child).

``RedisCache`` is Django's backend with two more savings: Django's client builds a new redis-py client object
for every call (`get_client`), a third of the CPU of a cache read (py-spy, bench/RESULTS.md); here each thread
keeps one client per pool, which holds one connection of the pool for the thread's life instead of borrowing
one for every command."""

from __future__ import annotations

import os
import threading

import redis
from django.core.cache.backends.redis import RedisCache as _DjangoRedisCache
from django.core.cache.backends.redis import RedisCacheClient

_pools: dict[tuple, redis.ConnectionPool] = {}
_lock = threading.Lock()


class SharedConnectionPool(redis.ConnectionPool):
    @classmethod
    def from_url(cls, url: str, **kwargs) -> redis.ConnectionPool:
        key = (url, tuple(sorted((k, repr(v)) for k, v in kwargs.items())))
        pool = _pools.get(key)
        if pool is None:
            with _lock:
                pool = _pools.get(key)
                if pool is None:
                    pool = _pools[key] = redis.ConnectionPool.from_url(url, **kwargs)
        return pool


_local = threading.local()
os.register_at_fork(after_in_child=lambda: _local.__dict__.clear())  # the forking thread's clients hold the parent's sockets


class _CacheClient(RedisCacheClient):
    def get_client(self, key=None, *, write=False) -> redis.Redis:
        """This thread's client of the pool, holding one connection of it for the thread's life: a command
        then skips the pool's checkout and return (a lock each, and a poll of the socket for unread data):
        ~40 us of CPU of ~130 per command (bench/RESULTS.md, seventeenth session). A thread's connection goes
        back to the pool when the thread ends; a forked child makes its own."""
        pool = self._get_connection_pool(write)
        clients = _local.__dict__.setdefault("clients", {})
        client = clients.get(pool)
        if client is None:
            client = clients[pool] = self._client(connection_pool=pool, single_connection_client=True)
        return client


class RedisCache(_DjangoRedisCache):
    def __init__(self, server, params) -> None:
        super().__init__(server, params)
        self._class = _CacheClient
