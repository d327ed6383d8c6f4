"""Exchange benchmark: order entry through the production stack, against a validate-only baseline.

Usage::

    .venv/bin/python bench/exchange_bench.py [--case rest|ws|all] [--ws-sockets 32] [--ws-inflight 8] [--ws-impl websockets-sansio] [--workers 8] [--clients 16] [--seconds 10]
        [--rounds 3] [--shards 1] [--buyers 100] [--sellers 20] [--fresh] [--profile DIR] [--settings MODULE]

DATABASE_URL names the bench database (default postgres://postgres@127.0.0.1:5432/suanli_xbench; created if
missing, then migrated); REDIS_URL the Redis database for the matcher transport and the channel layer
(default redis://127.0.0.1:6379/12, flushed at start).

Stack (the production shape of docs/ARCHITECTURE): ``manage.py runmatcher --shard K --shards N`` processes
over Redis (MATCHER_TRANSPORT=redis) and REST under gunicorn sync workers (``gunicorn config.wsgi -w W``),
both on PostgreSQL. A second gunicorn, same worker count, serves the baseline with
DJANGO_SETTINGS_MODULE=bench.bench_settings: the project's URLs plus POST /bench/validate-order/, which
authenticates the token and validates the same payload with the order-entry serializer, and writes nothing.

Market (set up once, idempotent): one day product (reference 15.00 CNY/unit, tick 0.01, lot 1 unit, band
10%, fees 5/10 bps), its instruments listed by ``instruments_roll``; ``--shards`` open instruments are
traded (the earliest whose gate closure is over two hours away, consecutive ids, so one per shard);
``--sellers`` supplier organisations, each with a data centre of 20,000 H100 listed for the product over
two weeks; ``--buyers`` buyer organisations funded with 100M CNY each from a provider clearing account
through ``ledger.services.transfer``; one trader per organisation with an API token.

Case ``rest``: each round runs the baseline, then order entry, for ``--seconds`` each, from
``--client-procs`` load-generator processes (asyncio, raw HTTP/1.1; ``--clients`` connections in all, each
sending its next request as soon as the previous answer arrives). Every request is a fresh order with a
unique client_order_id from a random trader: half buys, half sells; 60% GTC limits resting 1-10 ticks
behind the mid (1-10 lots), 40% IOC limits 10 ticks through it (1-20 lots), so trades happen and the
book stays about the same size. The answer to POST /api/v1/orders/ is the acknowledgement: the web worker
validates the order and sends it to the matcher, which stores it with its hold in its batch's transaction,
and answers when that batch is committed (201, status open/filled/cancelled) or after MATCHER_REPLY_TIMEOUT
(202, status pending: counted and reported; the order is stored when the matcher gets to it).
Latency is measured from before connecting (gunicorn sync workers close each connection) to the last byte
of the answer. Only requests completed in the window count; clients start 0.5 s before it.

CPU per request of each part (web workers, matcher, PostgreSQL backends, the Redis server, load generator,
everything else on the machine: other users' work on a shared machine) is read from /proc over the same
window. After the rounds (and a barrier command through each matcher): no order is left pending,
``ledger_verify()`` is ok, 201 answers <= orders stored <= 201 + 202 answers + requests left unanswered (client
timeout or broken connection: stored or not, the client cannot tell), trades = contracts, lots bought = lots sold = lots
traded, and no hold is left on a finished order. ``--settings`` runs the order server and the matchers
under another settings module (what-if experiments with patched code). ``--profile DIR`` adds one unmeasured order-entry phase
sampled with py-spy (web workers and matcher; raw collapsed stacks in DIR; the websocket case's files start
with ``ws-``).

Case ``ws``: one uvicorn process (``--ws websockets-sansio`` as README says, or ``--ws-impl``) serves bench.echo_asgi: config.asgi's application
plus /ws/echo/, a trivial AsyncWebsocketConsumer that sends each frame back. The matchers are the same
``runmatcher`` processes over Redis (MATCHER_TRANSPORT=redis; the embedded thread matcher would also do
with one uvicorn process, but redis is the production shape and keeps the matcher's CPU out of the web
process). Each round: the echo baseline, then order entry, ``--seconds`` each, ``--ws-sockets`` sockets in
all (half buyers' traders, half suppliers'), each keeping ``--ws-inflight`` frames outstanding
(pipelined). Order frames are {"type": "place", "request_id": n, ...} on /ws/user/ (token in the
Authorization header); an answer is the command's ack (the matcher has committed the batch: durable) or
error frame; order events in between are read and ignored. The echo baseline sends the same frames to
/ws/echo/. ws_ratio is the median of the per-round ratios of acks/s to echoes/s. CPU per ack or echo from
/proc as for rest (web = the uvicorn process). ``--case all`` runs rest then ws; the JSON has both sets of keys.

Medians of the rounds are reported; rest_ratio is the median of the per-round ratios of orders/s to the
baseline's requests/s. The last line printed is JSON.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import random
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from array import array
from typing import Any
from urllib.parse import unquote, urlsplit

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

DEFAULT_URL = "postgres://postgres@127.0.0.1:5432/suanli_xbench"
DEFAULT_REDIS = "redis://127.0.0.1:6379/12"
PREFIX = "xbench"
PRODUCT_CODE = "XBENCH-AI"
FUND_FEN = 10**10  # 100M CNY per buyer
DEVICES = 20_000  # H100 per supplier, all listed: ~475k lots per day instrument
MID_TICKS = 1500  # 15.00 CNY
ORDER_PATH = "/api/v1/orders/"
VALIDATE_PATH = "/bench/validate-order/"
GOAL_RPS, GOAL_P99_MS, GOAL_RATIO = 1000.0, 100.0, 0.4


# --- Setup ------------------------------------------------------------------------------------------------


def _django_setup(url: str, redis_url: str, shards: int) -> None:
    os.environ.update(
        DJANGO_SETTINGS_MODULE="config.settings",
        DATABASE_URL=url,
        REDIS_URL=redis_url,
        MATCHER_TRANSPORT="redis",
        MATCHER_SHARDS=str(shards),
        LOG_LEVEL="WARNING",
    )
    import django

    django.setup()


def _admin_connect(url: str):
    import psycopg

    u = urlsplit(url)
    return psycopg.connect(
        host=unquote(u.hostname or "127.0.0.1"),  # a Unix socket directory is given %-quoted
        port=u.port or 5432,
        user=u.username or "postgres",
        password=u.password,
        dbname="postgres",
        autocommit=True,
    )


def database_ensure(url: str, *, fresh: bool) -> None:
    name = urlsplit(url).path.lstrip("/")
    with _admin_connect(url) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone()
        if exists and fresh:
            conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
            exists = None
        if not exists:
            conn.execute(f'CREATE DATABASE "{name}"')
            print(f"created database {name}")


def market_prepare(*, buyers: int, sellers: int, shards: int) -> dict[str, Any]:
    """The product, its instruments, suppliers with listings, funded buyers, traders with tokens.
    Idempotent: what exists is reused, buyers below half their funding are topped up."""
    import datetime as dt
    from decimal import Decimal

    from django.db import transaction
    from django.utils import timezone
    from rest_framework.authtoken.models import Token

    from ledger import services as ledger
    from ledger.models import Account, AccountKind, EntryKind
    from marketplace import services as market
    from marketplace.models import (
        DeviceModel,
        Instrument,
        InstrumentStatus,
        Listing,
        MemberRole,
        Membership,
        Organisation,
        Product,
        User,
    )
    from marketplace.validators import make_credit_code

    t0 = time.perf_counter()
    product, _ = Product.objects.get_or_create(
        code=PRODUCT_CODE,
        defaults=dict(
            name="Bench AI training capacity",
            unit="FP16_PFH",
            chip_class="training",
            min_security_level=3,
            lot_size=Decimal("1"),
            tick_size=Decimal("0.01"),
            reference_price=Decimal("15.00"),
            price_band_bps=1000,
            maker_fee_bps=5,
            taker_fee_bps=10,
            window="day",
        ),
    )
    market.instruments_roll()
    h100, _ = DeviceModel.objects.get_or_create(
        vendor="NVIDIA",
        name="H100 SXM",
        defaults=dict(
            chip_class="training",
            is_domestic=False,
            fp16_tflops=Decimal("989"),
            fp32_tflops=Decimal("67"),
            fp64_tflops=Decimal("34"),
            memory_gb=80,
            power_w=700,
        ),
    )
    start = timezone.localtime().replace(hour=0, minute=0, second=0, microsecond=0)

    def org(kind: str, i: int) -> Organisation:
        name = f"{PREFIX}-{kind}-{i:04d}"
        found = Organisation.objects.filter(name=name).first()
        if found:
            return found
        body = ("A" if kind == "supplier" else "B") + f"{i:07d}"  # the code alphabet has no S
        return Organisation.objects.create(
            name=name,
            credit_code=make_credit_code("91310000", body),
            kind=kind,
            size_class="small",
            founded_on=dt.date(2020, 1, 1),
            registration_region="Shanghai Pudong",
        )

    def trader(o: Organisation) -> str:
        user, created = User.objects.get_or_create(username=f"{o.name}-trader")
        if created:
            user.set_unusable_password()
            user.save(update_fields=["password"])
            Membership.objects.create(user=user, organisation=o, role=MemberRole.TRADER)
        return Token.objects.get_or_create(user=user)[0].key

    seller_tokens, buyer_tokens = [], []
    with transaction.atomic():
        for i in range(sellers):
            o = org("supplier", i)
            listing = Listing.objects.filter(
                supplier=o, product=product, is_active=True, available_until__gte=start + dt.timedelta(days=9)
            ).first()
            if listing is None:
                dc = o.data_centres.first() or market.data_centre_save(
                    fields=dict(
                        owner=o,
                        name=f"{o.name} DC",
                        region="qingpu",
                        pue=Decimal("1.20"),
                        renewable_share=Decimal("40"),
                        carbon_intensity=Decimal("570"),
                        security_level=3,
                        interconnect_gbps=400,
                    ),
                    latencies=[{"metro": "shanghai", "rtt_ms": Decimal("2.0")}],
                    devices=[market.DeviceLine(device_model=h100, count=DEVICES)],
                )
                Listing.objects.filter(supplier=o, is_active=True).update(is_active=False)
                market.listing_create(
                    data_centre=dc,
                    product=product,
                    device_model=h100,
                    device_count=DEVICES,
                    available_from=start,
                    available_until=start + dt.timedelta(days=14),
                )
            seller_tokens.append(trader(o))
        clearing = ledger.platform_account(kind=AccountKind.PROVIDER_CLEARING, name=PREFIX)
        for i in range(buyers):
            o = org("buyer", i)
            available = ledger.account_for(organisation=o, kind=AccountKind.AVAILABLE)
            if available.balance_fen < FUND_FEN // 2:
                ledger.transfer(
                    source=clearing,
                    destination=available,
                    amount_fen=FUND_FEN - available.balance_fen,
                    idempotency_key=f"{PREFIX}:fund:{o.pk}:{secrets.token_hex(6)}",
                    kind=EntryKind.TOP_UP,
                    memo="exchange_bench funding",
                )
            buyer_tokens.append(trader(o))
        ledger.platform_account(kind=AccountKind.FEES)
        Account.objects.count()
    soon = timezone.now() + dt.timedelta(hours=2)
    open_ids = list(
        Instrument.objects.filter(product=product, status=InstrumentStatus.OPEN, gate_closure__gt=soon)
        .order_by("delivery_start")
        .values_list("pk", flat=True)
    )
    instruments = open_ids[:shards]
    if len(instruments) < shards or len({pk % shards for pk in instruments}) < shards:
        raise SystemExit(f"need {shards} open instruments on distinct shards, found {open_ids}")
    print(f"setup: {sellers} suppliers, {buyers} buyers, instruments {instruments} ({time.perf_counter() - t0:.1f} s)")
    return {"instruments": instruments, "buyer_tokens": buyer_tokens, "seller_tokens": seller_tokens}


# --- Processes --------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Service:
    """A child process in its own session (so it and its workers are stopped together), logging to a file."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], logdir: str) -> None:
        self.name = name
        self.log_path = os.path.join(logdir, f"{name}.log")
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            argv, cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def wait_for_log(self, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited:\n{self.tail()}")
            with open(self.log_path) as f:
                if text in f.read():
                    return
            time.sleep(0.1)
        raise RuntimeError(f"{self.name}: no {text!r} after {timeout} s:\n{self.tail()}")

    def tail(self, n: int = 30) -> str:
        with open(self.log_path) as f:
            return "".join(f.readlines()[-n:])

    def children(self) -> list[int]:
        return _children(self.proc.pid)

    def stop(self, timeout: float = 15) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)
        else:
            try:  # the leader is gone: make sure no worker of its session survives it
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.log.close()


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def _server_env(base: dict[str, str], url: str, redis_url: str, shards: int, settings_module: str) -> dict[str, str]:
    return dict(
        base,
        DJANGO_SETTINGS_MODULE=settings_module,
        DATABASE_URL=url,
        REDIS_URL=redis_url,
        MATCHER_TRANSPORT="redis",
        MATCHER_SHARDS=str(shards),
        ORDER_RATE_LIMIT="1000000/s",
        SECRET_KEY="xbench-" + secrets.token_hex(24),
        CHANNEL_PREFIX=PREFIX,
        LOG_LEVEL="WARNING",
        DEBUG="0",
        PYTHONUNBUFFERED="1",
        SUANLI_EMBEDDED_SCHEDULER="0",
    )


def gunicorn_start(
    name: str, port: int, workers: int, env: dict[str, str], logdir: str, worker_class: str, threads: int = 1
) -> Service:
    argv = [
        sys.executable,
        "-m",
        "gunicorn",
        "config.wsgi",
        "-w",
        str(workers),
        "-b",
        f"127.0.0.1:{port}",
        "--worker-class",
        worker_class,
        "--backlog",
        "2048",
        "--timeout",
        "60",
        "--graceful-timeout",
        "5",
        "--preload",
        "--log-level",
        "warning",
        *(["--threads", str(threads)] if threads > 1 else []),
    ]
    svc = Service(name, argv, env, logdir)
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
                if r.status == 200 and len(svc.children()) >= workers:
                    return svc
        except OSError:
            pass
        if svc.proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{name} did not start:\n{svc.tail()}")
        time.sleep(0.2)


# --- CPU accounting from /proc ----------------------------------------------------------------------------

_TICK = os.sysconf("SC_CLK_TCK")


def _cpu_s(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _TICK  # utime + stime
    except (OSError, IndexError, ValueError):
        return 0.0


def _machine_busy_s() -> float:
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return (sum(v[:8]) - v[3] - v[4]) / _TICK  # all but idle and iowait


def _redis_server() -> list[int]:
    """The Redis server's pid (shared with other users of the server: its CPU is an upper bound for ours)."""
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/comm") as f:
                    if f.read().strip() == "redis-server":
                        return [int(name)]
            except OSError:
                continue
    return []


def _pg_backends(db_name: str) -> list[int]:
    from django.db import connection

    with connection.cursor() as cur:
        cur.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()", [db_name])
        return [r[0] for r in cur.fetchall()]


class CpuMeter:
    """CPU seconds used by each group of processes between start() and stop()."""

    def __init__(self, groups, load_keys: tuple[object, list[str]] | None = None) -> None:
        self.groups = groups  # name -> callable returning pids
        self.load_keys = load_keys  # (redis client, the matchers' load hashes): read at the window's ends too
        self.load: dict[str, float] = {}

    def _sample(self) -> tuple[dict[str, dict[int, float]], float]:
        return {name: {pid: _cpu_s(pid) for pid in pids()} for name, pids in self.groups.items()}, _machine_busy_s()

    def _load(self) -> tuple[float, dict[str, int]]:
        r, keys = self.load_keys
        totals = {"batches": 0, "commands": 0, "busy_us": 0}
        for key in keys:
            h = r.hgetall(key)
            for k in totals:
                totals[k] += int(h.get(k.encode(), 0))
        return time.monotonic(), totals

    def start(self) -> None:
        self.load_before = self._load() if self.load_keys else None
        self.before = self._sample()

    def stop(self) -> dict[str, float]:
        after, busy = self._sample()
        if self.load_before:
            (t0, a), (t1, b) = self.load_before, self._load()
            batches = b["batches"] - a["batches"]
            shards = len(self.load_keys[1])
            # The matchers' own figures (exchange.transport.LoadFigures): commands per batch, share of the
            # window each shard's writer was busy (averaged over shards).
            self.load = {"batches": batches, "mean_batch": round((b["commands"] - a["commands"]) / batches, 2) if batches else 0.0,
                         "busy": round((b["busy_us"] - a["busy_us"]) / 1e6 / (t1 - t0) / shards, 3)}
        out = {}
        for name, pids in after.items():
            out[name] = sum(cpu - self.before[0][name].get(pid, 0.0) for pid, cpu in pids.items())
        out["machine"] = busy - self.before[1]
        out["other"] = out["machine"] - sum(v for k, v in out.items() if k != "machine")
        return out


# --- Load generator (spawned processes, stdlib asyncio, raw HTTP/1.1) ---------------------------------------


def order_terms(rng: random.Random, side: str) -> tuple[int, int, str]:
    """(price in ticks, lots, time in force) of the next order of `side`: 60% GTC limits resting 1-10 ticks
    behind the mid (1-10 lots), 40% IOC limits 10 ticks through it (1-20 lots)."""
    sign = 1 if side == "buy" else -1
    if rng.random() < 0.6:
        return MID_TICKS - sign * rng.randint(1, 10), rng.randint(1, 10), "GTC"
    return MID_TICKS + sign * 10, rng.randint(1, 20), "IOC"


def _order_payloads(rng: random.Random, spec: dict, tag: str):
    """An endless stream of (token, body) for realistic orders: see the module docstring."""
    n = 0
    instruments, buyers, sellers = spec["instruments"], spec["buyer_tokens"], spec["seller_tokens"]
    while True:
        n += 1
        side = "buy" if rng.random() < 0.5 else "sell"
        ticks, qty, tif = order_terms(rng, side)
        body = json.dumps(
            {
                "instrument": rng.choice(instruments),
                "side": side,
                "type": "limit",
                "price": f"{ticks // 100}.{ticks % 100:02d}",
                "quantity": qty,
                "time_in_force": tif,
                "client_order_id": f"{tag}-{n}",
            }
        ).encode()
        yield rng.choice(buyers if side == "buy" else sellers), body


def _client_tallies() -> tuple[array, dict[str, int], dict[str, int], list[str], dict[str, int]]:
    """uvloop when installed, and what each load-generator process counts: latencies, answers by status,
    errors, a few sample answers, totals."""
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    return array("d"), {}, {}, [], {"sent": 0, "answered": 0, "created": 0, "unconfirmed": 0, "events": 0}


def _client_main(
    index: int, host: str, port: int, path: str, spec: dict, connections: int, tag: str, ready, go, results
) -> None:
    import asyncio

    latencies, statuses, errors, samples, totals = _client_tallies()
    http: dict[int, int] = {}

    async def request(reader, writer, raw: bytes) -> tuple[int, bytes, bool]:
        writer.write(raw)
        line = await reader.readline()
        if not line:
            raise ConnectionError("closed before answering")
        code = int(line.split(b" ", 2)[1])
        length, close = None, False
        while True:
            h = await reader.readline()
            if h in (b"\r\n", b"\n", b""):
                break
            name, _, value = h.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"connection" and value.strip().lower() == b"close":
                close = True
        body = await reader.readexactly(length) if length is not None else await reader.read()
        return code, body, close or length is None

    async def client(k: int, t_begin: float, t0: float, t1: float) -> None:
        rng = random.Random(f"{tag}-{index}-{k}")
        payloads = _order_payloads(rng, spec, f"{tag}-{index}-{k}")
        reader = writer = None
        while time.monotonic() < t_begin:
            await asyncio.sleep(t_begin - time.monotonic())
        while True:
            start = time.monotonic()
            if start >= t1:
                break
            token, body = next(payloads)
            raw = (
                f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Token {token}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
            ).encode() + body
            totals["sent"] += 1
            try:
                if writer is None:
                    reader, writer = await asyncio.open_connection(host, port)
                code, answer, close = await asyncio.wait_for(request(reader, writer, raw), 30)
            except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError, IndexError) as exc:
                errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                if writer is not None:
                    writer.close()
                reader = writer = None
                await asyncio.sleep(0.01)
                continue
            end = time.monotonic()
            totals["answered"] += 1
            if close:
                writer.close()
                reader = writer = None
            http[code] = http.get(code, 0) + 1
            status = "http_" + str(code)
            if code in (200, 201):
                try:
                    status = json.loads(answer).get("status", "?")
                except ValueError:
                    status = "bad_json"
                totals["created"] += code == 201
            elif code == 202:  # the matcher did not answer in time: queued, stored later
                totals["unconfirmed"] += 1
                status = "pending"
            elif len(samples) < 5:
                samples.append(f"{code} {answer[:300]!r}")
            if t0 <= end <= t1:
                latencies.append((end - start) * 1000)
                statuses[status] = statuses.get(status, 0) + 1
        if writer is not None:
            writer.close()

    async def main(t_begin: float, t0: float, t1: float) -> None:
        await asyncio.gather(*(client(k, t_begin, t0, t1) for k in range(connections)))

    ready.put(index)
    t_begin, t0, t1 = go.get()
    asyncio.run(main(t_begin, t0, t1))
    results.put(
        {
            "index": index,
            "latencies": latencies.tobytes(),
            "http": http,
            "statuses": statuses,
            "errors": errors,
            "samples": samples,
            **totals,
        }
    )


def load_phase(
    *,
    port: int,
    path: str,
    spec: dict,
    clients: int,
    procs: int,
    seconds: float,
    tag: str,
    meter: CpuMeter,
    client_pids: list[int],
    on_window=None,
) -> dict[str, Any]:
    """Run the load for one phase; returns throughput, latency percentiles, status counts and CPU."""
    ctx = mp.get_context("spawn")
    ready, go, results = ctx.Queue(), ctx.Queue(), ctx.Queue()
    shares = [clients // procs + (1 if i < clients % procs else 0) for i in range(procs)]
    workers = [
        ctx.Process(
            target=_client_main,
            args=(i, "127.0.0.1", port, path, spec, shares[i], tag, ready, go, results),
            daemon=True,
        )
        for i in range(procs)
        if shares[i]
    ]
    for w in workers:
        w.start()
    client_pids[:] = [w.pid for w in workers]
    try:
        for _ in workers:
            ready.get(timeout=60)
        t_begin = time.monotonic() + 0.2
        t0, t1 = t_begin + 0.5, t_begin + 0.5 + seconds
        for _ in workers:
            go.put((t_begin, t0, t1))
        time.sleep(max(t0 - time.monotonic(), 0))
        meter.start()
        extra = on_window(seconds) if on_window else None
        time.sleep(max(t1 - time.monotonic(), 0))
        cpu = meter.stop()
        if extra:
            extra()
        parts = [results.get(timeout=120) for _ in workers]
    finally:
        for w in workers:
            w.join(timeout=10)
            if w.is_alive():
                w.kill()
        client_pids[:] = []
    return _merge_parts(parts, seconds, cpu, counters=("http", "statuses", "errors"))


# --- Websocket order entry (case ws): uvicorn serving bench.echo_asgi, clients on /ws/user/ and /ws/echo/ ---


WS_PATH = "/ws/user/"
ECHO_PATH = "/ws/echo/"
GOAL_WS_RPS, GOAL_WS_RATIO = 3000.0, 0.6


def uvicorn_start(name: str, port: int, env: dict[str, str], logdir: str, ws_impl: str = "websockets-sansio") -> Service:
    """One uvicorn worker (the process itself) serving the project plus the echo route."""
    argv = [
        sys.executable, "-m", "uvicorn", "bench.echo_asgi:application", "--host", "127.0.0.1", "--port", str(port),
        "--ws", ws_impl, "--log-level", "warning", "--no-access-log", "--timeout-graceful-shutdown", "3",
    ]
    svc = Service(name, argv, env, logdir)
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
                if r.status == 200:
                    return svc
        except OSError:
            pass
        if svc.proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{name} did not start:\n{svc.tail()}")
        time.sleep(0.2)


def _ws_frames(rng: random.Random, spec: dict, tag: str, side: str):
    """Endless `place` frames for one side, the same mix as _order_payloads (60% resting GTC, 40% IOC)."""
    n = 0
    while True:
        n += 1
        ticks, qty, tif = order_terms(rng, side)
        yield n, {
            "type": "place", "request_id": n, "instrument": rng.choice(spec["instruments"]), "side": side,
            "order_type": "limit", "price": f"{ticks // 100}.{ticks % 100:02d}", "quantity": qty,
            "time_in_force": tif, "client_order_id": f"{tag}-{n}",
        }


def _ws_client_main(
    index: int, port: int, path: str, spec: dict, sockets: int, inflight: int, tag: str, ready, go, results
) -> None:
    """`sockets` websockets, each keeping `inflight` frames outstanding (pipelined); for /ws/user/ an answer
    is the command's ack (or error) frame, for /ws/echo/ the echoed frame. Latency: send to answer."""
    import asyncio

    from websockets.asyncio.client import connect

    latencies, statuses, errors, samples, totals = _client_tallies()
    echo = path == ECHO_PATH

    async def one(k: int, t_begin: float, t0: float, t1: float) -> None:
        side = "buy" if (index + k) % 2 == 0 else "sell"
        tokens = spec["buyer_tokens"] if side == "buy" else spec["seller_tokens"]
        token = tokens[(index * sockets + k) % len(tokens)]
        frames = _ws_frames(random.Random(f"{tag}-{index}-{k}"), spec, f"{tag}-{index}-{k}", side)
        sent_at: dict[int, float] = {}
        try:
            ws = await connect(
                f"ws://127.0.0.1:{port}{path}", additional_headers={"Authorization": f"Token {token}"}, origin=f"http://127.0.0.1:{port}",
                compression=None, ping_interval=None, max_size=2**22, open_timeout=30,
            )
        except Exception as exc:
            errors["connect:" + type(exc).__name__] = errors.get("connect:" + type(exc).__name__, 0) + 1
            return
        try:
            if not echo:
                welcome = json.loads(await ws.recv())
                if welcome.get("type") != "welcome":
                    raise RuntimeError(f"no welcome: {welcome}")
            while time.monotonic() < t_begin:
                await asyncio.sleep(t_begin - time.monotonic())

            async def send_next() -> None:
                n, frame = next(frames)
                sent_at[n] = time.monotonic()
                totals["sent"] += 1
                await ws.send(json.dumps(frame))

            for _ in range(inflight):
                await send_next()
            while sent_at:
                left = max(t1 + 10 - time.monotonic(), 0.1)  # after the window: wait for what is outstanding
                text = await asyncio.wait_for(ws.recv(), left)
                msg = json.loads(text)
                kind = msg.get("type")
                rid = msg.get("request_id")
                if rid is None or (not echo and kind not in ("ack", "error")):
                    if kind == "order" and t0 <= time.monotonic() <= t1:
                        totals["events"] += 1  # the user stream's order events (the matcher's publications)
                    continue  # order events, heartbeats
                start = sent_at.pop(rid, None)
                if start is None:
                    continue
                end = time.monotonic()
                totals["answered"] += 1
                if echo:
                    status = "echo"
                elif kind == "ack":
                    status = msg["order"]["status"] if msg.get("confirmed") else "pending"
                    totals["created"] += bool(msg.get("created"))
                    totals["unconfirmed"] += not msg.get("confirmed")
                else:
                    status = "error_" + str(msg.get("code"))
                    if len(samples) < 5:
                        samples.append(text[:300])
                if t0 <= end <= t1:
                    latencies.append((end - start) * 1000)
                    statuses[status] = statuses.get(status, 0) + 1
                if end < t1:
                    await send_next()
        except Exception as exc:
            errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
            if len(samples) < 5:
                samples.append(repr(exc)[:300])
        finally:
            await ws.close()

    async def main(t_begin: float, t0: float, t1: float) -> None:
        await asyncio.gather(*(one(k, t_begin, t0, t1) for k in range(sockets)))

    ready.put(index)
    t_begin, t0, t1 = go.get()
    asyncio.run(main(t_begin, t0, t1))
    results.put({"index": index, "latencies": latencies.tobytes(), "http": {}, "statuses": statuses,
                 "errors": errors, "samples": samples, **totals})


def ws_load_phase(
    *, port: int, path: str, spec: dict, sockets: int, inflight: int, procs: int, seconds: float, tag: str,
    meter: CpuMeter, client_pids: list[int], on_window=None,
) -> dict[str, Any]:
    """Like load_phase, over websockets; `rps` counts answers (acks or echoes) inside the window."""
    ctx = mp.get_context("spawn")
    ready, go, results = ctx.Queue(), ctx.Queue(), ctx.Queue()
    shares = [sockets // procs + (1 if i < sockets % procs else 0) for i in range(procs)]
    workers = [
        ctx.Process(target=_ws_client_main, args=(i, port, path, spec, shares[i], inflight, tag, ready, go, results), daemon=True)
        for i in range(procs)
        if shares[i]
    ]
    for w in workers:
        w.start()
    client_pids[:] = [w.pid for w in workers]
    try:
        for _ in workers:
            ready.get(timeout=60)
        t_begin = time.monotonic() + 1.0  # sockets connect (and get their welcome) before this
        t0, t1 = t_begin + 0.5, t_begin + 0.5 + seconds
        for _ in workers:
            go.put((t_begin, t0, t1))
        time.sleep(max(t0 - time.monotonic(), 0))
        meter.start()
        extra = on_window(seconds) if on_window else None
        time.sleep(max(t1 - time.monotonic(), 0))
        cpu = meter.stop()
        if extra:
            extra()
        parts = [results.get(timeout=120) for _ in workers]
    finally:
        for w in workers:
            w.join(timeout=10)
            if w.is_alive():
                w.kill()
        client_pids[:] = []
    return _merge_parts(parts, seconds, cpu, counters=("statuses", "errors"))


def _merge_parts(parts: list[dict], seconds: float, cpu, *, counters: tuple[str, ...]) -> dict:
    """Combine the client processes' results: latencies into percentiles, counters summed."""
    lat = array("d")
    merged: dict[str, dict] = {"http": {}, **{key: {} for key in counters}}
    samples: list[str] = []
    for p in parts:
        lat.frombytes(p["latencies"])
        for key in counters:
            for k, v in p[key].items():
                merged[key][k] = merged[key].get(k, 0) + v
        samples += p["samples"]
    done = len(lat)
    ordered = sorted(lat)

    def pct(q: float) -> float:
        return ordered[min(int(q * done), done - 1)] if done else float("nan")

    return {
        "rps": done / seconds, "done": done, "p50_ms": pct(0.50), "p90_ms": pct(0.90), "p99_ms": pct(0.99),
        "max_ms": ordered[-1] if done else float("nan"), "http": merged["http"], "statuses": merged["statuses"],
        "errors": merged["errors"], "samples": samples[:5], "cpu": cpu,
        "sent": sum(p["sent"] for p in parts), "answered": sum(p["answered"] for p in parts),
        "created": sum(p["created"] for p in parts),
        "unconfirmed": sum(p["unconfirmed"] for p in parts),
        "events": sum(p.get("events", 0) for p in parts),
    }


# --- Checks -----------------------------------------------------------------------------------------------


def run_checks(
    instruments: list[int], tags: list[str], created: int, unconfirmed: int = 0, unanswered: int = 0
) -> dict[str, Any]:
    from django.db.models import Q, Sum

    from exchange import transport
    from exchange.models import Contract, Order, OrderStatus, Trade
    from ledger.models import HoldStatus
    from ledger.verify import ledger_verify

    # A barrier per shard: answered after everything queued before it (answers that timed out included).
    for iid in instruments:
        transport.send([{"op": "expire", "instrument": iid}], timeout=60)
    deadline = time.monotonic() + 15
    while (pending := Order.objects.filter(status=OrderStatus.PENDING).count()) and time.monotonic() < deadline:
        time.sleep(0.5)
    tagged = Q()
    for tag in tags:
        tagged |= Q(client_order_id__startswith=f"{tag}-")
    stored = Order.objects.filter(tagged).count()
    trades = Trade.objects.filter(instrument_id__in=instruments)
    t = trades.aggregate(n=Sum("quantity"))["n"] or 0
    bought = (
        Order.objects.filter(instrument_id__in=instruments, side="buy").aggregate(n=Sum("filled_quantity"))["n"] or 0
    )
    sold = (
        Order.objects.filter(instrument_id__in=instruments, side="sell").aggregate(n=Sum("filled_quantity"))["n"] or 0
    )
    open_holds_on_final = (
        Order.objects.filter(instrument_id__in=instruments, side="buy", hold__status=HoldStatus.OPEN)
        .exclude(status__in=[OrderStatus.OPEN, OrderStatus.PENDING])
        .count()
    )
    report = ledger_verify()
    checks = {
        "pending_left": pending,
        "orders_stored": stored,
        "orders_acknowledged_201": created,
        "answers_unconfirmed": unconfirmed,
        "requests_unanswered": unanswered,
        "trades": trades.count(),
        "contracts": Contract.objects.filter(instrument_id__in=instruments).count(),
        "lots_traded": t,
        "lots_bought": bought,
        "lots_sold": sold,
        "open_holds_on_final_orders": open_holds_on_final,
        "ledger_ok": report.ok,
        "ledger_problems": report.problems[:5],
        "journal_entries": report.entries,
    }
    checks["ok"] = (
        pending == 0
        # An unconfirmed order (202) is stored once the matcher gets to it; a request whose answer never came
        # (the client timed out or the connection broke) may or may not have been stored; an acknowledged one is.
        and created <= stored <= created + unconfirmed + unanswered
        and checks["trades"] > 0
        and checks["trades"] == checks["contracts"]
        and t == bought == sold
        and open_holds_on_final == 0
        and report.ok
    )
    return checks


# --- Profiling ---------------------------------------------------------------------------------------------


def profiler(outdir: str, web: Service, matchers: list[Service], prefix: str = "", wall: bool = False):
    """A callback for load_phase: py-spy samples the web server's processes and the matchers over the window
    (CPU: stacks holding the GIL; wall: every stack, idle ones included, to see where a request waits)."""
    pyspy = shutil.which("py-spy") or os.path.join(os.path.dirname(sys.executable), "py-spy")

    def record(pid: int, out: str, seconds: float, *extra: str) -> subprocess.Popen:
        argv = [pyspy, "record", "--nonblocking", "--idle" if wall else "--gil", "--format", "raw", "-r", "100", "-d", str(int(seconds)),
                "-p", str(pid), *extra, "-o", os.path.join(outdir, out)]
        return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def start(seconds: float):
        os.makedirs(outdir, exist_ok=True)
        procs = [record(web.proc.pid, f"{prefix}web.txt", seconds, "--subprocesses")]
        procs += [record(m.proc.pid, f"{prefix}{m.name}.txt", seconds) for m in matchers]

        def finish():
            for p in procs:
                try:
                    p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    p.kill()

        return finish

    return start


# --- Main -------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--case", choices=["rest", "ws", "all"], default="rest", help="rest: REST order entry; ws: websocket order entry; all: both"
    )
    parser.add_argument("--ws-sockets", type=int, default=32, help="case ws: websockets in all (one trader each)")
    parser.add_argument("--ws-inflight", type=int, default=8, help="case ws: frames outstanding per socket (pipelined)")
    parser.add_argument("--ws-impl", default="websockets-sansio", help="case ws: uvicorn --ws implementation (README's is websockets-sansio)")
    parser.add_argument("--workers", type=int, default=8, help="W: gunicorn workers (each server)")
    parser.add_argument("--worker-class", default="sync", help="gunicorn worker class (sync: no keep-alive)")
    parser.add_argument(
        "--threads", type=int, default=1, help="gunicorn threads per worker (more than 1: the gthread worker class)"
    )
    parser.add_argument("--clients", type=int, default=16, help="N: concurrent client connections")
    parser.add_argument(
        "--client-procs", type=int, default=2, help="load-generator processes sharing the N connections"
    )
    parser.add_argument("--seconds", type=float, default=10, help="measured window of each phase")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=float, default=3, help="unmeasured seconds of load on each server first")
    parser.add_argument("--shards", type=int, default=1, help="matcher shards (one instrument traded per shard)")
    parser.add_argument("--buyers", type=int, default=100)
    parser.add_argument("--sellers", type=int, default=20)
    parser.add_argument("--fresh", action="store_true", help="drop and recreate the bench database first")
    parser.add_argument(
        "--settings",
        default="config.settings",
        help="DJANGO_SETTINGS_MODULE of the order server and the matchers (what-if experiments; the baseline keeps bench.bench_settings)",
    )
    parser.add_argument(
        "--profile", metavar="DIR", help="after the rounds, one unmeasured order phase sampled by py-spy"
    )
    parser.add_argument(
        "--profile-wall", action="store_true", help="with --profile: sample every stack (waits included), not only those on CPU"
    )
    args = parser.parse_args()

    url = os.environ.get("DATABASE_URL", DEFAULT_URL)
    redis_url = os.environ.get("REDIS_URL", DEFAULT_REDIS)
    db_name = urlsplit(url).path.lstrip("/")
    database_ensure(url, fresh=args.fresh)
    _django_setup(url, redis_url, args.shards)
    from django.core.management import call_command
    from django.db import connection

    call_command("migrate", verbosity=0)
    import redis

    redis.Redis.from_url(redis_url).flushdb()
    spec = market_prepare(buyers=args.buyers, sellers=args.sellers, shards=args.shards)
    connection.close()

    logdir = tempfile.mkdtemp(prefix="xbench-")
    base_env = dict(os.environ)
    services: list[Service] = []
    client_pids: list[int] = []
    rounds: list[dict[str, Any]] = []
    ws_rounds: list[dict[str, Any]] = []
    tags: list[str] = []
    created = unconfirmed = unanswered = 0
    checks: dict[str, Any] = {}
    try:
        menv = _server_env(base_env, url, redis_url, args.shards, args.settings)
        matchers = [
            Service(
                f"matcher{k}",
                [sys.executable, "manage.py", "runmatcher", "--shard", str(k), "--shards", str(args.shards)],
                menv,
                logdir,
            )
            for k in range(args.shards)
        ]
        services += matchers
        for m in matchers:
            m.wait_for_log("serving", 60)
        do_rest, do_ws = args.case in ("rest", "all"), args.case in ("ws", "all")
        if do_rest:
            web_port, base_port = _free_port(), _free_port()
            web = gunicorn_start("web", web_port, args.workers, menv, logdir, args.worker_class, args.threads)
            services.append(web)
            base = gunicorn_start(
                "baseline",
                base_port,
                args.workers,
                _server_env(base_env, url, redis_url, args.shards, "bench.bench_settings"),
                logdir,
                args.worker_class,
                args.threads,
            )
            services.append(base)
            print(
                f"matcher x{args.shards}, gunicorn {args.worker_class} x{args.workers}"
                f"{f' x{args.threads} threads' if args.threads > 1 else ''} on :{web_port} (orders) and :{base_port} "
                f"(validate-only), {args.clients} clients in {args.client_procs} processes, logs in {logdir}"
            )
        if do_ws:
            ws_port = _free_port()
            uv = uvicorn_start("uvicorn", ws_port, menv, logdir, args.ws_impl)
            services.append(uv)
            print(
                f"matcher x{args.shards}, uvicorn x1 (bench.echo_asgi, MATCHER_TRANSPORT=redis) on :{ws_port}: "
                f"{args.ws_sockets} sockets x {args.ws_inflight} in flight in {args.client_procs} processes, logs in {logdir}"
            )

        from exchange.transport import load_key

        load_keys = (redis.Redis.from_url(redis_url), [load_key(k) for k in range(args.shards)])

        def meter(server: Service) -> CpuMeter:
            return CpuMeter(
                {
                    "web": (lambda: [server.proc.pid, *server.children()]) if server.name == "uvicorn" else server.children,
                    "matcher": lambda: [m.proc.pid for m in matchers],
                    "postgres": lambda: _pg_backends(db_name),
                    "redis": _redis_server,
                    "client": lambda: list(client_pids),
                },
                load_keys,
            )

        def phase(server: Service, port: int, path: str, seconds: float, on_window=None) -> dict[str, Any]:
            nonlocal created, unconfirmed, unanswered
            tag = f"x{secrets.token_hex(3)}"
            window = meter(server)
            if path in (WS_PATH, ECHO_PATH):
                out = ws_load_phase(
                    port=port, path=path, spec=spec, sockets=args.ws_sockets, inflight=args.ws_inflight,
                    procs=args.client_procs, seconds=seconds, tag=tag, meter=window, client_pids=client_pids,
                    on_window=on_window,
                )
            else:
                out = load_phase(
                    port=port,
                    path=path,
                    spec=spec,
                    clients=args.clients,
                    procs=args.client_procs,
                    seconds=seconds,
                    tag=tag,
                    meter=window,
                    client_pids=client_pids,
                    on_window=on_window,
                )
            out["matcher_load"] = window.load
            if path in (ORDER_PATH, WS_PATH):
                tags.append(tag)
                created += out["created"]
                unconfirmed += out["unconfirmed"]
                unanswered += out["sent"] - out["answered"]
            return out

        if do_rest:
            if args.warmup:
                phase(base, base_port, VALIDATE_PATH, args.warmup)
                phase(web, web_port, ORDER_PATH, args.warmup)
            for r in range(1, args.rounds + 1):
                load = os.getloadavg()[0]
                b = phase(base, base_port, VALIDATE_PATH, args.seconds)
                o = phase(web, web_port, ORDER_PATH, args.seconds)
                row = {
                    "round": r,
                    "baseline": b,
                    "rest": o,
                    "ratio": o["rps"] / b["rps"] if b["rps"] else 0.0,
                    "load": load,
                }
                rounds.append(row)
                _print_round(row)
            if args.profile:
                phase(web, web_port, ORDER_PATH, args.seconds, on_window=profiler(args.profile, web, matchers, wall=args.profile_wall))
                print(f"profile: py-spy raw stacks in {args.profile}")
        if do_ws:
            if args.warmup:
                phase(uv, ws_port, ECHO_PATH, args.warmup)
                phase(uv, ws_port, WS_PATH, args.warmup)
            for r in range(1, args.rounds + 1):
                load = os.getloadavg()[0]
                e = phase(uv, ws_port, ECHO_PATH, args.seconds)
                o = phase(uv, ws_port, WS_PATH, args.seconds)
                row = {"round": r, "echo": e, "ws": o, "ratio": o["rps"] / e["rps"] if e["rps"] else 0.0, "load": load}
                ws_rounds.append(row)
                _print_ws_round(row)
            if args.profile:
                phase(uv, ws_port, WS_PATH, args.seconds, on_window=profiler(args.profile, uv, matchers, "ws-", wall=args.profile_wall))
                print(f"profile: py-spy raw stacks in {args.profile}")
        connection.close()
        checks = run_checks(spec["instruments"], tags, created, unconfirmed, unanswered)
    finally:
        for svc in reversed(services):
            svc.stop()
    summary = _summarise(rounds, checks, args) if rounds else {"case": args.case}
    if ws_rounds:
        summary.update(_summarise_ws(ws_rounds, args))
        # Every placement changes its order, and the order's event goes to its organisation's socket: fewer
        # events than acks means the matcher's publications are not arriving.
        checks["ws_events_per_order"] = summary["ws_events_per_order"]
        if summary["ws_events_per_order"] < 0.9:
            checks["ok"] = False
    summary["checks_ok"] = bool(checks.get("ok"))
    if rounds:
        _print_summary(summary, checks)
    if ws_rounds:
        _print_ws_summary(summary)
    print(f"checks: {checks}")
    print(json.dumps(summary))


def _cpu_us(phase: dict[str, Any]) -> dict[str, float]:
    n = max(phase["done"], 1)
    return {k: v * 1e6 / n for k, v in phase["cpu"].items()}


def _load_text(phase: dict[str, Any]) -> str:
    load = phase.get("matcher_load") or {}
    if not load.get("batches"):
        return "no batches"
    return f"{load['batches']} batches, {load['mean_batch']:.1f} orders each, busy {100 * load['busy']:.0f}%"


def _print_round(row: dict[str, Any]) -> None:
    b, o = row["baseline"], row["rest"]
    print(
        f"round {row['round']} (load {row['load']:.1f}): validate-only {b['rps']:,.0f}/s p50 {b['p50_ms']:.1f} p99 {b['p99_ms']:.1f} ms | "
        f"orders {o['rps']:,.0f}/s p50 {o['p50_ms']:.1f} p90 {o['p90_ms']:.1f} p99 {o['p99_ms']:.1f} max {o['max_ms']:.0f} ms | "
        f"ratio {row['ratio']:.2f}"
    )
    print(f"  order acks: {dict(sorted(o['statuses'].items()))}  http {o['http']}  errors {o['errors'] or 0}  matcher {_load_text(o)}")
    if b["errors"] or set(b["http"]) - {200}:
        print(f"  baseline http {b['http']} errors {b['errors']} {b['samples'][:2]}")
    if o["samples"]:
        print(f"  samples: {o['samples'][:2]}")
    for name, p in (("validate-only", b), ("orders", o)):
        cpu = _cpu_us(p)
        print(
            f"  CPU us/request {name}: "
            + ", ".join(
                f"{k} {cpu[k]:,.0f}" for k in ("web", "matcher", "postgres", "redis", "client", "other", "machine")
            )
        )


def _summarise(rounds: list[dict[str, Any]], checks: dict[str, Any], args) -> dict[str, Any]:
    def med(values) -> float:
        return round(statistics.median(values), 2) if values else 0.0

    rest = [r["rest"] for r in rounds]
    base = [r["baseline"] for r in rounds]
    pending = sum(p["statuses"].get("pending", 0) for p in rest)
    errors = sum(sum(p["errors"].values()) + sum(v for k, v in p["http"].items() if k not in (200, 201)) for p in rest)
    summary = {
        "case": args.case,
        "rest_orders_per_s": med([p["rps"] for p in rest]),
        "rest_p50_ms": med([p["p50_ms"] for p in rest]),
        "rest_p99_ms": med([p["p99_ms"] for p in rest]),
        "rest_ratio": med([r["ratio"] for r in rounds]),
        "baseline_requests_per_s": med([p["rps"] for p in base]),
        "baseline_p99_ms": med([p["p99_ms"] for p in base]),
        "rest_pending_acks": pending,
        "rest_errors": errors,
        "rest_matcher_mean_batch": med([(p.get("matcher_load") or {}).get("mean_batch", 0.0) for p in rest]),
        "rest_matcher_busy": med([(p.get("matcher_load") or {}).get("busy", 0.0) for p in rest]),
        "rest_cpu_us_per_order": {
            k: med([_cpu_us(p)[k] for p in rest])
            for k in ("web", "matcher", "postgres", "redis", "client", "other", "machine")
        },
        "baseline_cpu_us_per_request": {
            k: med([_cpu_us(p)[k] for p in base]) for k in ("web", "postgres", "redis", "client", "other", "machine")
        },
        "rounds": len(rounds),
        "seconds": args.seconds,
        "clients": args.clients,
        "workers": args.workers,
        "threads": args.threads,
        "worker_class": "gthread" if args.threads > 1 and args.worker_class == "sync" else args.worker_class,
        "shards": args.shards,
        "checks_ok": bool(checks.get("ok")),
    }
    summary["goals"] = {
        "orders_per_s_ge_1000": summary["rest_orders_per_s"] >= GOAL_RPS,
        "p99_lt_100ms": summary["rest_p99_ms"] < GOAL_P99_MS,
        "ratio_ge_0_4": summary["rest_ratio"] >= GOAL_RATIO,
    }
    return summary


def _print_summary(summary: dict[str, Any], checks: dict[str, Any]) -> None:
    print(
        f"median of {summary['rounds']} rounds: orders {summary['rest_orders_per_s']:,.0f}/s, p50 {summary['rest_p50_ms']} ms, "
        f"p99 {summary['rest_p99_ms']} ms; validate-only {summary['baseline_requests_per_s']:,.0f}/s (p99 {summary['baseline_p99_ms']} ms); "
        f"ratio {summary['rest_ratio']:.2f}; pending acks {summary['rest_pending_acks']}, errors {summary['rest_errors']}"
    )
    g = summary["goals"]
    print("goals: " + ", ".join(f"{k} {'met' if v else 'NOT met'}" for k, v in g.items()))


def _print_ws_round(row: dict[str, Any]) -> None:
    e, o = row["echo"], row["ws"]
    print(
        f"ws round {row['round']} (load {row['load']:.1f}): echo {e['rps']:,.0f} frames/s p50 {e['p50_ms']:.1f} p99 {e['p99_ms']:.1f} ms | "
        f"orders {o['rps']:,.0f}/s p50 {o['p50_ms']:.1f} p90 {o['p90_ms']:.1f} p99 {o['p99_ms']:.1f} max {o['max_ms']:.0f} ms | "
        f"ratio {row['ratio']:.3f}"
    )
    print(f"  order acks: {dict(sorted(o['statuses'].items()))}  errors {o['errors'] or 0}  echo errors {e['errors'] or 0}  matcher {_load_text(o)}")
    print(f"  order events received on the user streams: {o['events']:,} ({o['events'] / max(o['done'], 1):.2f} per ack)")
    if o["samples"] or e["samples"]:
        print(f"  samples: {(o['samples'] + e['samples'])[:3]}")
    for name, p in (("echo frame", e), ("ws order", o)):
        cpu = _cpu_us(p)
        print(
            f"  CPU us per {name}: "
            + ", ".join(f"{k} {cpu[k]:,.0f}" for k in ("web", "matcher", "postgres", "redis", "client", "other", "machine"))
        )


def _summarise_ws(rounds: list[dict[str, Any]], args) -> dict[str, Any]:
    def med(values) -> float:
        return round(statistics.median(values), 3) if values else 0.0

    ws = [r["ws"] for r in rounds]
    echo = [r["echo"] for r in rounds]
    keys = ("web", "matcher", "postgres", "redis", "client", "other", "machine")
    out = {
        "ws_orders_per_s": med([p["rps"] for p in ws]),
        "ws_p50_ms": med([p["p50_ms"] for p in ws]),
        "ws_p99_ms": med([p["p99_ms"] for p in ws]),
        "ws_ratio": med([r["ratio"] for r in rounds]),
        "echo_frames_per_s": med([p["rps"] for p in echo]),
        "echo_p99_ms": med([p["p99_ms"] for p in echo]),
        "ws_pending_acks": sum(p["statuses"].get("pending", 0) for p in ws),
        "ws_errors": sum(sum(p["errors"].values()) + sum(v for k, v in p["statuses"].items() if k.startswith("error_")) for p in ws),
        "ws_events_per_order": med([p["events"] / max(p["done"], 1) for p in ws]),
        "ws_matcher_mean_batch": med([(p.get("matcher_load") or {}).get("mean_batch", 0.0) for p in ws]),
        "ws_matcher_busy": med([(p.get("matcher_load") or {}).get("busy", 0.0) for p in ws]),
        "ws_cpu_us_per_order": {k: med([_cpu_us(p)[k] for p in ws]) for k in keys},
        "echo_cpu_us_per_frame": {k: med([_cpu_us(p)[k] for p in echo]) for k in keys},
        "ws_rounds": len(rounds),
        "ws_sockets": args.ws_sockets,
        "ws_inflight": args.ws_inflight,
        "ws_transport": f"redis (runmatcher), 1 uvicorn worker, --ws {args.ws_impl}",
    }
    out["ws_goals"] = {"ws_orders_per_s_ge_3000": out["ws_orders_per_s"] >= GOAL_WS_RPS, "ws_ratio_ge_0_6": out["ws_ratio"] >= GOAL_WS_RATIO}
    return out


def _print_ws_summary(summary: dict[str, Any]) -> None:
    print(
        f"ws median of {summary['ws_rounds']} rounds: orders {summary['ws_orders_per_s']:,.0f}/s, p50 {summary['ws_p50_ms']} ms, "
        f"p99 {summary['ws_p99_ms']} ms; echo {summary['echo_frames_per_s']:,.0f} frames/s; ratio {summary['ws_ratio']:.3f}; "
        f"pending acks {summary['ws_pending_acks']}, errors {summary['ws_errors']}"
    )
    print("ws goals: " + ", ".join(f"{k} {'met' if v else 'NOT met'}" for k, v in summary["ws_goals"].items()))


if __name__ == "__main__":
    main()
