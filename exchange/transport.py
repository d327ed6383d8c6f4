"""How commands reach the matcher and answers come back.

- inline: the caller's thread runs the matcher under a process-wide lock (tests, one-off scripts);
- thread: the embedded default: one matcher thread in the server process drains a queue, so concurrent
  requests are matched and written in one batch (group commit);
- redis: production: `manage.py runmatcher --shard K --shards N` processes pop commands from a Redis list
  per shard and push each answer to a short-lived reply key the web process waits on.

Market data and user events go out over the channel layer either way (exchange.publish). A command that
gets no answer in time is not lost: orders and cancel requests are in the database before they are sent,
and every matcher re-reads what is pending when it starts and once a second while it runs.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import gc
import logging
import os
import queue
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass

import orjson
from django.conf import settings
from django.db import InterfaceError, OperationalError, close_old_connections, connection, transaction
from django.utils import timezone

from exchange.admission import Refusal
from exchange.matcher import Matcher, shard_of
from exchange.models import Order, OrderStatus
from ledger.services import InsufficientFunds
from marketplace.models import Instrument

# Messages on Redis are JSON (orjson: a matcher batch's answers were 3% of its CPU under json). Keys that are not
# strings are written as json would write them.
_dumps = functools.partial(orjson.dumps, option=orjson.OPT_NON_STR_KEYS)

log = logging.getLogger(__name__)
MAX_BATCH = 500
TAKE = 16  # runmatcher: queued messages moved per Redis round trip
_STOP = object()


class MatcherLoop:
    """Runs batches through a Matcher, isolating a failing command so it cannot block the others."""

    def __init__(self, matcher: Matcher) -> None:
        self.matcher = matcher
        self._last_housekeeping = 0.0

    def run(self, commands: list[dict]) -> list[dict]:
        try:
            return self.matcher.process(commands)
        except Exception as exc:
            if outage(exc):
                raise  # not the commands' fault: they are tried again once the database is back
            if len(commands) == 1:
                return [self._fail(commands[0], exc)]
            return [self.run([c])[0] for c in commands]

    def _fail(self, command: dict, exc: Exception) -> dict:
        if command.get("op") == "place":
            # Nothing was stored: the batch's transaction rolled back.
            if isinstance(exc, InsufficientFunds):  # a concurrent debit won the race for the funds
                return Refusal(400, "amount", str(exc)).as_reply()
            log.exception("matcher: command %r failed on its own", command)
            return {"op": "place", "error": "internal_error"}
        log.exception("matcher: command %r failed on its own", command)
        if command.get("op") == "submit":
            # A poison order must not block the queue: reject it and give back its hold.
            try:
                order = Order.objects.filter(pk=command["order"], status=OrderStatus.PENDING).first()
                if order is not None:
                    self.matcher.reject_broken(order)
            except Exception:
                log.exception("matcher: could not reject order %s", command.get("order"))
        return {"op": command.get("op"), "order": command.get("order"), "error": "internal_error"}

    def housekeeping(self, *, force: bool = False) -> None:
        """Once a second: expire GTD orders, close books past gate closure, pick up pending work, reload risk
        limits and kill switches (a switch whose command was lost still stops trading within a second)."""
        now = time.monotonic()
        if not force and now - self._last_housekeeping < settings.MATCHER_HOUSEKEEPING_SECONDS:
            return
        self._last_housekeeping = now
        commands = [{"op": "risk_sync"}, {"op": "expire"}]
        closing = Instrument.objects.filter(gate_closure__lte=timezone.now(), orders__status__in=[OrderStatus.OPEN, OrderStatus.PENDING]).values_list("pk", flat=True).distinct()
        commands += [{"op": "close", "instrument": iid} for iid in closing if self.matcher.owns(iid)]
        commands += self.matcher.pending_commands()
        self.run(commands)


@dataclass(frozen=True)
class Gate:
    """A counter in front of the queue (the order-rate limit): `send` adds one to it and queues the commands
    only while its total stays within `allowed`, else raises RateExceeded and queues nothing. `count` adds
    one wherever it is kept (the cache) and returns the new total; `redis_key`, when the counter is on the
    transport's own Redis, lets one script count and queue in the round trip that sends the commands."""

    count: Callable[[], int]
    allowed: int
    ttl: int
    redis_key: str | None = None

    def passes(self) -> None:
        total = self.count()
        if total > self.allowed:
            raise RateExceeded(total)


class RateExceeded(Exception):
    """A gated send refused: the counter's total (this send's included) is past what is allowed."""

    def __init__(self, total: int) -> None:
        super().__init__(f"rate exceeded ({total})")
        self.total = total


class InlineClient:
    _lock = threading.Lock()
    _loops: dict[int, MatcherLoop] = {}

    def request(self, commands: list[dict], timeout: float, gate: Gate | None = None) -> list[dict] | None:
        if gate is not None:
            gate.passes()
        with self._lock:
            loop = self._loops.get(0)
            if loop is None:
                loop = self._loops[0] = MatcherLoop(Matcher())
            return loop.run(commands)

    async def submit(self, commands: list[dict], timeout: float):
        from asgiref.sync import sync_to_async

        return sync_to_async(self.request)(commands, timeout)  # runs (in order) when awaited

    def loop_for_tests(self) -> MatcherLoop:
        with self._lock:
            return self._loops.setdefault(0, MatcherLoop(Matcher()))

    @classmethod
    def reset(cls) -> None:
        with cls._lock:
            cls._loops.clear()


class ThreadClient:
    """The embedded matcher: a daemon thread owning the only Matcher of the process."""

    def __init__(self) -> None:
        self.queue: queue.Queue[tuple[list[dict], Future]] = queue.Queue()
        self.thread = threading.Thread(target=self._serve, name="suanli-matcher", daemon=True)
        self.loop = MatcherLoop(Matcher())
        self.figures = LoadFigures(0)
        self.thread.start()

    def request(self, commands: list[dict], timeout: float, gate: Gate | None = None) -> list[dict] | None:
        if gate is not None:
            gate.passes()
        future: Future = Future()
        self.queue.put((commands, future))
        try:
            return future.result(timeout=timeout)
        except FutureTimeout:
            return None

    async def submit(self, commands: list[dict], timeout: float):
        future: Future = Future()
        self.queue.put((commands, future))
        return _within(asyncio.wrap_future(future), timeout)

    def stop(self, timeout: float = 10) -> None:
        """End the matcher thread after what is queued (tests; the server's thread lives as long as it)."""
        self.queue.put(_STOP)  # type: ignore[arg-type]
        self.thread.join(timeout)

    def _serve(self) -> None:
        close_old_connections()
        try:
            self.loop.housekeeping(force=True)
        except Exception:
            log.exception("matcher: recovery failed; will retry")
        gc.freeze()  # the recovered books are long-lived: keep them out of the cyclic collector's scans
        while True:
            try:
                first = self.queue.get(timeout=settings.MATCHER_HOUSEKEEPING_SECONDS)
            except queue.Empty:
                first = None
            if first is _STOP:
                connection.close()
                return
            items = [] if first is None else [first]
            while items and len(items) < MAX_BATCH:
                try:
                    item = self.queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    self.queue.put(item)  # after this batch
                    break
                items.append(item)
            try:
                if items:
                    began = time.monotonic()
                    _answer(self.loop, items)
                    self.figures.add(sum(len(commands) for commands, _ in items), time.monotonic() - began)
                self.figures.written = time.time()  # alive
                self.figures.log_due()
                self.loop.housekeeping()
            except Exception:
                log.exception("matcher thread: batch failed")
            finally:
                close_old_connections()


def _answer(loop: MatcherLoop, items: list[tuple[list[dict], Future]]) -> None:
    flat = [c for commands, _ in items for c in commands]
    try:
        replies = loop.run(flat)
    except Exception as exc:
        for _, future in items:
            future.set_exception(exc)
        return
    i = 0
    for commands, future in items:
        future.set_result(replies[i : i + len(commands)])
        i += len(commands)


# The longest one BLPOP blocks: under redis-py's default read timeout (5 s), which would otherwise end a longer
# wait (MATCHER_REPLY_TIMEOUT, the demo's 30 s) with a TimeoutError instead of "no answer yet".
BLOCK_SECONDS = 4.0


# A fixed window's counter, KEYS[1], ARGV n and ttl: INCRBY, and EXPIRE when the count is new, atomically and in
# one round trip. The order-rate counter (exchange.api.views) is this and `return n`.
COUNT_LUA = """
local n = redis.call('INCRBY', KEYS[1], ARGV[1])
if n == tonumber(ARGV[1]) then redis.call('EXPIRE', KEYS[1], ARGV[2]) end
"""

# A gated push (RedisClient.request): KEYS counter, queue, reply; ARGV n, ttl, allowed, message. Counts as
# COUNT_LUA and queues the message only if the total is within `allowed`; else puts a marker on the reply
# list, so the BLPOP sent after it in the same pipeline returns at once. Returns the total.
_GATED_PUSH_LUA = COUNT_LUA + """
if n > tonumber(ARGV[3]) then
  redis.call('LPUSH', KEYS[3], '')
  redis.call('EXPIRE', KEYS[3], 60)
else
  redis.call('LPUSH', KEYS[2], ARGV[4])
end
return n
"""


class RedisClient:
    def __init__(self) -> None:
        import redis

        self.redis = redis.Redis.from_url(settings.REDIS_URL)
        self._hubs: dict[asyncio.AbstractEventLoop, _ReplyHub] = {}
        self._local = threading.local()

    def _round_trip(self, commands: list[tuple]) -> list:
        """Send `commands` in one write on this thread's own connection and read their replies in order:
        redis-py's pipeline object (its pool checkout, retry wrapper and per-command bookkeeping) cost ~45 us
        of a REST order's CPU more (bench/RESULTS.md, nineteenth session). As the pool does on checkout, a
        connection with something to read while idle (closed by the server: Redis restarted, or the client
        killed) is opened anew before use. Any failure drops the connection (an unread reply would answer the
        next request); the thread opens another on its next request."""
        conn = getattr(self._local, "conn", None)
        if conn is None or self._local.pid != os.getpid():  # a forked child must not share its parent's socket
            conn = self._local.conn = self.redis.connection_pool.make_connection()
            self._local.pid = os.getpid()
        try:
            stale = conn.can_read()  # connects a new one; raises for a socket the server closed
        except Exception:  # noqa: BLE001 - whatever ails an idle connection, a new one replaces it
            stale = True
        if stale:
            conn.disconnect()  # sending connects again
        try:
            conn.send_packed_command(conn.pack_commands(commands), check_health=False)
            return [conn.read_response() for _ in commands]
        except BaseException:
            self._local.conn = None
            conn.disconnect()
            raise

    def request(self, commands: list[dict], timeout: float, gate: Gate | None = None) -> list[dict] | None:
        by_shard = _by_shard(commands)
        replies: list[dict | None] = [None] * len(commands)
        if not by_shard:
            return []
        if gate is not None and (gate.redis_key is None or len(by_shard) > 1):
            gate.passes()  # counted on its own, before anything is queued
            gate = None
        keys = []
        deadline = time.monotonic() + timeout
        # The pushes and the wait for the first answer in one round trip (Redis runs a pipeline's commands
        # in order, so BLPOP blocks only once the commands are queued). A gate's count rides in the same
        # round trip: its script queues the commands only within the rate, else wakes the BLPOP at once.
        sends: list[tuple] = []
        for shard, items in by_shard.items():
            key = f"suanli:reply:{uuid.uuid4().hex}"
            keys.append((key, items))
            message = _dumps({"reply": key, "commands": [c for _, c in items]})
            if gate is None:
                sends.append(("LPUSH", queue_key(shard), message))
            else:
                sends.append(("EVAL", _GATED_PUSH_LUA, 3, gate.redis_key, queue_key(shard), key, 1, gate.ttl, gate.allowed, message))
        sends.append(("BLPOP", keys[0][0], max(min(timeout, BLOCK_SECONDS), 0.01)))
        results = self._round_trip(sends)
        if gate is not None and int(results[0]) > gate.allowed:
            raise RateExceeded(int(results[0]))
        got = results[-1]
        for n, (key, items) in enumerate(keys):
            if n:  # the other shards' answers, within what is left of the timeout
                got = None
            while got is None:  # waits longer than one block: block again until the deadline
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                got = self.redis.blpop([key], timeout=max(min(left, BLOCK_SECONDS), 0.01))
            for (i, _), reply in zip(items, orjson.loads(got[1]), strict=True):
                replies[i] = reply
        return replies  # type: ignore[return-value]

    async def submit(self, commands: list[dict], timeout: float):
        """From an event loop (websocket order entry): the answer comes back through the process's one reply
        list, read by one task per loop, instead of a connection blocked per request."""
        loop = asyncio.get_running_loop()
        hub = self._hubs.get(loop)
        if hub is None:
            hub = self._hubs[loop] = _ReplyHub()
        return await hub.submit(commands, timeout)


class _ReplyHub:
    def __init__(self) -> None:
        import redis.asyncio

        self.redis = redis.asyncio.Redis.from_url(settings.REDIS_URL)
        self.listener = redis.asyncio.Redis.from_url(settings.REDIS_URL)
        self.key = f"suanli:reply:{uuid.uuid4().hex}"
        self.waiting: dict[str, asyncio.Future] = {}
        self.task: asyncio.Task | None = None

    async def submit(self, commands: list[dict], timeout: float):
        if self.task is None or self.task.done():
            self.task = asyncio.get_running_loop().create_task(self._listen())
        loop = asyncio.get_running_loop()
        waits = []
        pipe = self.redis.pipeline(transaction=False)
        for shard, items in _by_shard(commands).items():
            rid = uuid.uuid4().hex
            future = self.waiting[rid] = loop.create_future()
            waits.append((rid, future, items))
            pipe.lpush(queue_key(shard), _dumps({"reply": self.key, "id": rid, "commands": [c for _, c in items]}))
        await pipe.execute()
        return self._collect(waits, len(commands), timeout)

    async def _collect(self, waits, n: int, timeout: float) -> list[dict] | None:
        replies: list[dict | None] = [None] * n
        try:
            async with asyncio.timeout(timeout):
                for _, future, items in waits:
                    for (i, _), reply in zip(items, await future, strict=True):
                        replies[i] = reply
        except TimeoutError:
            return None
        finally:
            for rid, _, _ in waits:
                self.waiting.pop(rid, None)
        return replies  # type: ignore[return-value]

    async def _listen(self) -> None:
        while True:
            try:
                # Under redis-py 8's default 5 s read timeout: a 5 s block timed out client-side when idle.
                got = await self.listener.blpop([self.key], timeout=2)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("matcher replies: reading %s failed; retrying", self.key)
                await asyncio.sleep(0.5)
                continue
            if got is None:
                continue
            raws = [got[1]]
            try:  # what else came meanwhile, in the same turn: one round trip per reply fell behind a busy matcher
                raws += await self.listener.lpop(self.key, 500) or []
            except asyncio.CancelledError:
                raise
            except Exception:  # the rest are read by the next turn of the loop
                log.warning("matcher replies: draining %s failed; the next read takes them", self.key)
            for raw in raws:
                message = orjson.loads(raw)
                future = self.waiting.get(message["id"])
                if future is not None and not future.done():
                    future.set_result(message["replies"])


def _by_shard(commands: list[dict]) -> dict[int, list[tuple[int, dict]]]:
    by_shard: dict[int, list[tuple[int, dict]]] = {}
    for i, command in enumerate(commands):
        by_shard.setdefault(_shard_for(command), []).append((i, command))
    return by_shard


def _shard_for(command: dict) -> int:
    if "shard" in command:  # addressed to one shard (broadcast)
        return command["shard"]
    iid = command.get("instrument")
    if iid is None and "order" in command:
        iid = Order.objects.filter(pk=command["order"]).values_list("instrument_id", flat=True).first() or 0
    return shard_of(iid or 0, settings.MATCHER_SHARDS)


def outage(exc: BaseException) -> bool:
    """Redis or the database is unreachable (restarting, failing over): no fault of the batch at hand."""
    import redis

    if isinstance(exc, redis.ConnectionError | redis.TimeoutError):
        return True
    if isinstance(exc, OperationalError | InterfaceError):
        try:
            return not connection.is_usable()
        except Exception:
            return True
    return False


OUTAGE_PAUSE = 0.5  # seconds between attempts to reach Redis or the database again


def serve_redis(*, shard: int, shards: int, stop: threading.Event | None = None) -> None:
    """The body of `manage.py runmatcher`: recover, then pop and answer batches until stopped.

    Reliable queue: each message moves (LMOVE, atomically) from the shard's queue to its in-flight list and
    leaves it only after its batch is committed and answered. A matcher killed in between finds the messages
    in the in-flight list when it restarts and processes them first (they arrived before anything still
    queued); what was already committed answers as a replay (orders are idempotent on client_order_id).

    Redis or PostgreSQL going away (a restart) is waited out, not fatal: the matcher reconnects and starts
    over from its in-flight list, exactly as after a restart of its own."""
    import redis

    r = redis.Redis.from_url(settings.REDIS_URL)
    loop = MatcherLoop(Matcher(shard=shard, shards=shards))
    while stop is None or not stop.is_set():
        try:
            _serve_redis(r, loop, shard, stop)
            return
        except Exception as exc:
            if not outage(exc):
                raise
            log.warning("matcher shard %s: %s: %s; reconnecting", shard, type(exc).__name__, exc)
            loop.matcher._forget(list(loop.matcher.engine.books))  # reloaded from the database once it answers
            try:
                connection.close()
            except Exception:  # nosec B110 # the connection is already broken by the outage; the loop reconnects
                pass
            time.sleep(OUTAGE_PAUSE)


class LoadFigures:
    """How busy a shard's single writer is: commands and batches served and the seconds spent on them (from
    a batch's first message to its answers), cumulative in a Redis hash `suanli:matcher:K:load` (updated with
    every batch's answers, in the same round trip), and a log line per MATCHER_LOAD_LOG_SECONDS with the
    window's batch times. A writer busy most of the time is the venue's limit: add shards (README)."""

    def __init__(self, shard: int) -> None:
        self.shard = shard
        self.key = load_key(shard)
        self.started = self.written = time.time()
        self.batches = self.commands = 0
        self.busy_us = 0
        self.window: list[float] = []  # batch seconds since the last log line
        self.window_start = time.monotonic()
        self.window_commands = 0

    def add(self, commands: int, seconds: float) -> None:
        self.batches += 1
        self.commands += commands
        self.busy_us += round(seconds * 1e6)
        self.window.append(seconds)
        self.window_commands += commands

    def as_hash(self) -> dict[str, int | float]:
        """The figures as matcher_load reads them; `updated` is when they were last written (to Redis), or
        when the embedded matcher's thread last went round its loop."""
        return {"batches": self.batches, "commands": self.commands, "busy_us": self.busy_us,
                "started": round(self.started, 3), "updated": round(self.written, 3)}

    def stamped(self) -> dict[str, int | float]:
        """as_hash, written now."""
        self.written = time.time()
        return self.as_hash()

    def log_due(self) -> None:
        every = settings.MATCHER_LOAD_LOG_SECONDS
        elapsed = time.monotonic() - self.window_start
        if not every or elapsed < every:
            return
        times = sorted(self.window)
        if times:
            def pct(q: float) -> float:
                return times[min(len(times) - 1, int(q * len(times)))] * 1000

            log.info(
                "matcher shard %s: %d commands in %d batches over %.0f s (%.1f per batch, %.0f/s), busy %.0f%%, batch p50 %.1f ms p99 %.1f ms max %.1f ms",
                self.shard, self.window_commands, len(times), elapsed, self.window_commands / len(times), self.window_commands / elapsed,
                100 * sum(times) / elapsed, pct(0.5), pct(0.99), times[-1] * 1000,
            )
        self.window, self.window_commands, self.window_start = [], 0, time.monotonic()


def _serve_redis(r, loop: MatcherLoop, shard: int, stop: threading.Event | None) -> None:
    key, inflight = queue_key(shard), inflight_key(shard)
    figures = LoadFigures(shard)
    recovered = [orjson.loads(raw) for raw in reversed(r.lrange(inflight, 0, -1))]  # oldest first
    if recovered:
        log.warning("matcher shard %s: re-processing %d messages in flight at the last stop", shard, len(recovered))
        _serve_messages(r, loop, recovered, inflight, figures, time.monotonic())
    loop.housekeeping(force=True)
    gc.freeze()  # the recovered books are long-lived: keep them out of the cyclic collector's scans
    tidied = time.monotonic()
    while stop is None or not stop.is_set():
        raw = r.blmove(key, inflight, timeout=min(max(settings.MATCHER_HOUSEKEEPING_SECONDS, 0.1), BLOCK_SECONDS), src="RIGHT", dest="LEFT")
        began = time.monotonic()
        messages = [] if raw is None else [orjson.loads(raw)]
        while messages and len(messages) < MAX_BATCH:
            # Whatever else is queued, up to TAKE messages per round trip (an empty queue answers None).
            pipe = r.pipeline(transaction=False)
            for _ in range(min(TAKE, MAX_BATCH - len(messages))):
                pipe.lmove(key, inflight, src="RIGHT", dest="LEFT")
            taken = [orjson.loads(raw) for raw in pipe.execute() if raw is not None]
            messages.extend(taken)
            if len(taken) < TAKE:
                break
        if messages:
            _serve_messages(r, loop, messages, inflight, figures, began)
        loop.housekeeping()
        figures.log_due()
        if time.time() - figures.written >= 1.0:  # idle or not, once a second: the shard is alive
            r.hset(figures.key, mapping=figures.stamped())
        if time.monotonic() - tidied >= 1.0:
            # The database connection is kept from batch to batch (a pool borrow and its check cost a round
            # trip each time); once a second it is given back if it broke or the pool wants it renewed.
            close_old_connections()
            tidied = time.monotonic()


def _serve_messages(r, loop: MatcherLoop, messages: list[dict], inflight: str, figures: LoadFigures, began: float) -> None:
    """Run the messages' commands as one batch; then answer each message and empty the in-flight list in
    one MULTI/EXEC, so a matcher killed before it finds them all in flight again and one killed after finds none.
    The shard's load figures go out in that MULTI too."""
    flat = [c for m in messages for c in m["commands"]]
    replies = loop.run(flat)
    i = 0
    answers: dict[str, list[str]] = {}  # reply list -> its answers in order (one LPUSH pushes them in that order)
    for m in messages:
        n = len(m["commands"])
        answer = replies[i : i + n]
        # A message with an id shares its process's reply list (websocket order entry): say which it answers.
        answers.setdefault(m["reply"], []).append(_dumps({"id": m["id"], "replies": answer} if "id" in m else answer))
        i += n
    pipe = r.pipeline()
    for reply, values in answers.items():
        pipe.lpush(reply, *values)
        pipe.expire(reply, 60)
    pipe.delete(inflight)
    figures.add(len(flat), time.monotonic() - began)
    pipe.hset(figures.key, mapping=figures.stamped())
    pipe.execute()


def queue_key(shard: int) -> str:
    return f"suanli:matcher:{shard}"


def inflight_key(shard: int) -> str:
    return f"suanli:matcher:{shard}:inflight"


def load_key(shard: int) -> str:
    return f"suanli:matcher:{shard}:load"


def matcher_load() -> list[dict]:
    """Each matcher shard's load figures (LoadFigures) as operators read them (/api/v1/risk/matchers/):
    `serving` is False when a shard has not written them for three seconds (it writes at least once a second)
    or never has. The embedded matcher answers for itself; the inline one (tests) has none."""
    now = time.time()

    def at(h: dict, name: str) -> dt.datetime | None:  # rendered by the API as ISO 8601 UTC
        t = float(h.get(name, 0))
        return dt.datetime.fromtimestamp(t, dt.UTC) if t else None

    def row(shard: int, h: dict) -> dict:
        updated = at(h, "updated")
        return {"shard": shard, "serving": updated is not None and now - updated.timestamp() < 3.0, "started": at(h, "started"),
                "updated": updated, "batches": int(h.get("batches", 0)), "commands": int(h.get("commands", 0)),
                "busy_seconds": int(h.get("busy_us", 0)) / 1e6}

    if settings.MATCHER_TRANSPORT == "redis":
        pipe = client().redis.pipeline(transaction=False)
        for k in range(settings.MATCHER_SHARDS):
            pipe.hgetall(load_key(k))
        return [row(k, {key.decode(): v.decode() for key, v in h.items()}) for k, h in enumerate(pipe.execute())]
    if settings.MATCHER_TRANSPORT == "thread":
        return [row(0, client().figures.as_hash())]
    return []


_client = None
_client_lock = threading.Lock()


def client():
    global _client
    with _client_lock:
        if _client is None:
            kind = settings.MATCHER_TRANSPORT
            _client = {"inline": InlineClient, "thread": ThreadClient, "redis": RedisClient}[kind]()
        return _client


def broadcast(command: dict, *, timeout: float | None = None) -> list[dict] | None:
    """Send one command to every matcher shard (e.g. `risk_sync`); the replies, one per shard, or None when
    one did not answer in time."""
    shards = settings.MATCHER_SHARDS if settings.MATCHER_TRANSPORT == "redis" else 1
    return send([{**command, "shard": k} for k in range(shards)], timeout=timeout)


async def submit_async(commands: list[dict], *, timeout: float | None = None):
    """`send` from an event loop, in two steps: returns once the commands are queued (so a socket's
    commands reach the matcher in the order it sent them) an awaitable of the replies (None when the matcher
    did not answer in time)."""
    return await client().submit(commands, settings.MATCHER_REPLY_TIMEOUT if timeout is None else timeout)


async def _within(future, timeout: float) -> list[dict] | None:
    try:
        return await asyncio.wait_for(future, timeout)
    except TimeoutError:
        return None


def send(commands: list[dict], *, timeout: float | None = None, gate: Gate | None = None) -> list[dict] | None:
    """Send commands after the current transaction commits (the matcher must see the stored order);
    returns the replies, or None when the matcher did not answer in time. With a gate, the commands are
    counted against it first and not sent at all past its limit (RateExceeded)."""
    if transaction.get_connection().in_atomic_block and not settings.MATCHER_TRANSPORT == "inline":
        raise RuntimeError("send() must be called outside a transaction: the matcher reads what you stored")
    return client().request(commands, settings.MATCHER_REPLY_TIMEOUT if timeout is None else timeout, gate)
