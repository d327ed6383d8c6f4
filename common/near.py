"""A process's own copies of shared-cache entries, forgotten in every process when any one forgets them.

Reading an entry of the Redis cache costs a round trip and an unpickling: for an API token's user that was
~12-16% of a REST request's web CPU (bench/RESULTS.md, nineteenth session). A ``NearCache`` keeps what this
process last read in a dict and serves it from there while it can be sure it would hear of a change:

- whoever forgets entries (``forget``, after deleting them from the shared cache) drops its own copies and
  publishes the keys on a Redis channel of the cache's database; a thread of each other process listens and
  drops them from its dict;
- the dict is used only while that thread is subscribed and has heard from Redis (a message, or the answer
  to the PING it sends after a second of silence) within the last ``SILENCE`` seconds; otherwise every read
  goes to the shared cache, and the dict is emptied whenever the subscription is lost or made anew (a
  message published while nobody listened is lost, so nothing heard before it may be kept);
- a value read from the shared cache is kept only if no forget arrived while it was being read (the
  ``ticket``: a counter of forgets, taken before the read), so a reader cannot keep an answer older than a
  forget it has already applied; one it has not yet applied will drop it when it arrives;
- every entry also has the deadline the shared entry had, so changes nobody forgets (SQL) show as late as
  they do through the shared cache, no later.

So a forget reaches the other processes within the channel's delivery time (well under a millisecond on
one host) instead of at once: the window in which a revoked credential may still pass one request there.
Without Redis (the embedded default's in-memory cache, already per process) nothing is near: ``enabled`` is
false and callers use the shared cache as before."""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from typing import Any

from django.core.cache import caches

from common.cache import RedisCache

log = logging.getLogger(__name__)

SILENCE = 3.0  # seconds without a word from Redis after which this process's copies are not trusted
PING_AFTER = 1.0  # seconds of silence after which the listener asks Redis for one


class NearCache:
    def __init__(self, name: str, backend_alias: str = "default") -> None:
        self.name = name
        self.alias = backend_alias
        self._lock = threading.Lock()
        self._entries: dict[str, tuple[float, Any]] = {}  # key -> (deadline, value)
        self._forgets = 0  # forgets applied here; a reader's ticket
        self._subscribed = False
        self._heard = 0.0  # monotonic time of the last word from Redis
        self._pid = 0
        self._pubsub = None  # the listener's subscription (tests cut its connection)
        # The listening process's name on the channel (a message is "origin key key ..."), made with its listener;
        # a process that has none publishes as "-", which no listener is called.
        self._origin = "-"

    # --- the shared cache this one sits in front of
    def _backend(self):
        return caches[self.alias]

    def enabled(self) -> bool:
        return isinstance(self._backend(), RedisCache)

    def _redis(self):
        return self._backend()._cache.get_client(write=True)

    def channel(self) -> str:
        db = self._redis().connection_pool.connection_kwargs.get("db", 0)
        return f"near:{self.name}:{db}"

    # --- reading
    def live(self) -> bool:
        """Whether this process's copies may be served: its listener is subscribed and heard lately."""
        if self._pid != os.getpid():
            self._start()
            return False
        return self._subscribed and time.monotonic() - self._heard < SILENCE

    def lookup(self, key: str) -> tuple[Any, int | None]:
        """(value, None) when this process holds a live copy of `key`; else (None, ticket), the ticket to pass
        to `keep` with what the caller reads from the shared cache. (None, None) when nothing may be kept."""
        if not self.live():
            return None, None
        entry = self._entries.get(key)
        if entry is not None:
            if entry[0] > time.time():
                return entry[1], None
            self._entries.pop(key, None)
        return None, self._forgets

    def keep(self, key: str, value: Any, deadline: float, ticket: int | None) -> None:
        """Keep `value` (read from the shared cache, valid until `deadline`, epoch seconds) unless a forget
        arrived since `ticket` was taken."""
        if ticket is None:
            return
        with self._lock:
            if ticket == self._forgets and self._subscribed:
                self._entries[key] = (deadline, value)

    # --- forgetting
    def forget(self, keys: list[str]) -> None:
        """Drop `keys` here and tell every process to drop them (after the caller deleted them from the shared
        cache, so that a process hearing this cannot read them back from there)."""
        if not keys:
            return
        self._drop(keys)
        # A forked child that has not listened yet must not publish as its parent (whose listener would ignore it).
        origin = self._origin if self._pid == os.getpid() else "-"
        self._redis().publish(self.channel(), " ".join([origin, *keys]))

    def _drop(self, keys) -> None:
        with self._lock:
            self._forgets += 1
            for key in keys:
                self._entries.pop(key, None)

    def _reset(self, subscribed: bool) -> None:
        with self._lock:
            self._forgets += 1
            self._entries.clear()
            self._subscribed = subscribed
            if subscribed:
                self._heard = time.monotonic()

    # --- listening
    def _start(self) -> None:
        with self._lock:
            if self._pid == os.getpid():
                return
            self._pid = os.getpid()  # a forked child has the parent's dict but not its listener
            self._origin = uuid.uuid4().hex
            self._entries.clear()
            self._forgets += 1
            self._subscribed = False
            threading.Thread(target=self._listen, name=f"near-cache-{self.name}", daemon=True).start()

    def _listen(self) -> None:
        pause = 0.1
        pid = os.getpid()
        while self._pid == pid:
            pubsub = None
            try:
                pubsub = self._pubsub = self._redis().pubsub()
                pubsub.subscribe(self.channel())
                asked = 0.0
                while self._pid == pid:
                    message = pubsub.get_message(timeout=PING_AFTER / 2)
                    now = time.monotonic()
                    if message is not None:
                        self._heard = now
                        kind = message["type"]
                        if kind == "subscribe":
                            self._reset(subscribed=True)
                            pause = 0.1
                        elif kind == "message":
                            data = message["data"]
                            origin, *keys = (data.decode() if isinstance(data, bytes) else data).split()
                            if origin != self._origin:  # this process dropped its own before publishing
                                self._drop(keys)
                    elif now - self._heard > SILENCE:
                        raise ConnectionError(f"no word from Redis for {SILENCE} s")
                    elif now - self._heard > PING_AFTER and now - asked > PING_AFTER:
                        pubsub.ping()
                        asked = now
            except Exception as exc:  # noqa: BLE001 - any failure: stop trusting the copies, then subscribe again
                self._reset(subscribed=False)
                log.warning("near cache %s: listener lost Redis (%s); reading the shared cache until back", self.name, exc)
                time.sleep(pause)
                pause = min(pause * 2, 2.0)
            finally:
                if pubsub is not None:
                    try:
                        pubsub.close()
                    except Exception as exc:  # noqa: BLE001 - closing what is already broken
                        log.debug("near cache %s: closing the subscription: %s", self.name, exc)
