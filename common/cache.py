"""One Redis connection pool per process for Django's cache.

Django keeps a cache backend per thread and, under ASGI, per request context (``caches`` is an asgiref Local),
and its Redis backend builds its connection pool lazily per backend object. Under uvicorn every request that
touched the cache therefore opened a new TCP connection to Redis, and an object cached against one backend
outlived it (the order-rate throttle's client kept every request's connection open: 550 Redis clients and
+200 MB in a ten-minute soak). ``SharedConnectionPool`` is the pool class the cache is configured with
(CACHES OPTIONS ``pool_class``): ``from_url`` answers the same pool for the same URL and options for the
life of the process, so all backends share its connections (redis-py pools are thread-safe and reset
themselves in a forked child)."""

from __future__ import annotations

import threading

import redis

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
