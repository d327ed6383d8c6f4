"""One Redis connection pool per process for Django's cache.

Django keeps a cache backend per thread and, under ASGI, per request context (``caches`` is an asgiref Local),
and its Redis backend builds its connection pool lazily per backend object. Under uvicorn every request that
touched the cache therefore opened a new TCP connection to Redis, and an object cached against one backend
outlived it (the order-rate throttle's client kept every request's connection open: 550 Redis clients and
+200 MB in a ten-minute soak). ``SharedConnectionPool`` is the pool class the cache is configured with
(CACHES OPTIONS ``pool_class``): ``from_url`` answers the same pool for the same URL and options for the
life of the process, so all backends share its connections (redis-py pools are thread-safe and reset
themselves in a forked child).

``RedisCache`` is Django's backend with one more saving: Django's client builds a new redis-py client object
for every call (`get_client`), a third of the CPU of a cache read (py-spy, bench/RESULTS.md); here one client
per pool is kept (redis-py clients are thread-safe: each command borrows a connection from the pool)."""

from __future__ import annotations

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


_clients: dict[redis.ConnectionPool, redis.Redis] = {}


class _CacheClient(RedisCacheClient):
    def get_client(self, key=None, *, write=False) -> redis.Redis:
        pool = self._get_connection_pool(write)
        client = _clients.get(pool)
        if client is None:
            client = _clients.setdefault(pool, self._client(connection_pool=pool))
        return client


class RedisCache(_DjangoRedisCache):
    def __init__(self, server, params) -> None:
        super().__init__(server, params)
        self._class = _CacheClient
