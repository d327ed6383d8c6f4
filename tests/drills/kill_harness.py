"""Fault drills: our own Redis and PostgreSQL instances, the real server processes, and a client that retries.

Nothing here touches the shared services (127.0.0.1:5432, 127.0.0.1:6379): each drill starts a redis-server
(and, for the PostgreSQL drill, a cluster made with initdb) on a free port in a temporary directory, and
kills or restarts only those. Processes write to log files (a pipe nobody reads would fill and block them);
a failed readiness wait shows the log's tail.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[2]
PG_BIN = Path("/usr/lib/postgresql/15/bin")
# Service settings the drills must not inherit from the test run's environment.
_OWN = ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL", "SUANLI_SQLITE_PATH", "CELERY_TASK_ALWAYS_EAGER", "MATCHER_TRANSPORT",
        "MATCHER_SHARDS", "SUANLI_ENV")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(what: str, check: Callable[[], bool], timeout: float, interval: float = 0.05) -> float:
    """Poll `check` until true; returns the seconds it took, or fails naming `what`."""
    started = time.monotonic()
    while True:
        try:
            if check():
                return time.monotonic() - started
        except Exception:
            pass
        if time.monotonic() - started > timeout:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(interval)


def tail(path: Path, n: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except FileNotFoundError:
        return "(no log)"


# --- Redis ------------------------------------------------------------------------------------------------

class RedisServer:
    """A redis-server of our own, without persistence: a restart loses everything it held, as a crash of
    production's cache-only Redis would."""

    def __init__(self, workdir: Path) -> None:
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.log = self.dir / "redis.log"

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        assert binary, "redis-server is not installed"
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(self.dir),
             "--logfile", str(self.log)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        import redis

        wait_for(f"redis on {self.port}\n{tail(self.log)}", lambda: redis.Redis(port=self.port, socket_timeout=1).ping(), 15)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def restart(self, down_for: float = 0.0) -> None:
        self.kill()
        time.sleep(down_for)
        self.start()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()


# --- PostgreSQL -------------------------------------------------------------------------------------------

class PostgresCluster:
    """A PostgreSQL 15 cluster of our own (initdb in a temporary directory, trust auth on 127.0.0.1, no
    fsync). initdb and pg_ctl refuse to run as root: as root (CI) they run as the postgres user."""

    def __init__(self, workdir: Path) -> None:
        self.dir = workdir
        self.data = workdir / "data"
        self.sockets = workdir / "sock"
        self.log = workdir / "postgres.log"
        self.port = free_port()

    def _as_owner(self, *argv: str) -> list[str]:
        return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else list(argv)

    def _run(self, *argv: str) -> None:
        done = subprocess.run(self._as_owner(*argv), capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, f"{' '.join(argv)} failed:\n{done.stdout}\n{done.stderr}\n{tail(self.log)}"

    def init(self) -> None:
        assert (PG_BIN / "initdb").exists(), f"PostgreSQL 15 is not installed in {PG_BIN}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.sockets.mkdir(exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
            shutil.chown(self.sockets, "postgres", "postgres")
            self.dir.chmod(0o755)
            for parent in self.dir.parents:  # postgres must be able to reach the directory
                if parent == Path("/") or parent.stat().st_mode & 0o001:
                    continue
                parent.chmod(parent.stat().st_mode | 0o001)
        self._run(str(PG_BIN / "initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust", "--no-sync", "-E", "UTF8")

    def start(self) -> None:
        # fsync off: the drills crash PostgreSQL, never the machine, so what reached the OS survives. NOT
        # synchronous_commit off: a commit would be acknowledged before its WAL left PostgreSQL's memory, and
        # an immediate shutdown loses it (the PostgreSQL drill caught exactly that: an acknowledged order gone).
        options = f"-p {self.port} -k {self.sockets} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off -c max_connections=60"
        self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "-o", options, "start")

    def stop(self, mode: str = "fast") -> None:
        """mode "immediate" is a crash: no shutdown checkpoint, crash recovery at the next start."""
        self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")

    def restart(self, *, mode: str = "immediate", down_for: float = 0.0) -> None:
        self.stop(mode)
        time.sleep(down_for)
        self.start()

    def url(self, db: str) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{db}"

    def clone_from(self, source_url: str, db: str) -> None:
        """Create `db` here as a copy (schema and rows) of the database at `source_url`."""
        self._run(str(PG_BIN / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", db)
        dump = subprocess.Popen([str(PG_BIN / "pg_dump"), "--no-owner", "--no-privileges", "-d", source_url], stdout=subprocess.PIPE)
        load = subprocess.run([str(PG_BIN / "psql"), "-q", "-v", "ON_ERROR_STOP=1", "-d", self.url(db)], stdin=dump.stdout,
                              capture_output=True, text=True, timeout=120)
        dump.stdout.close()
        assert dump.wait(timeout=60) == 0 and load.returncode == 0, f"copying the test database failed:\n{load.stderr[-2000:]}"

    def discard(self) -> None:
        """Stop it for good. The directory stays with the test's tmp_path (pytest removes old ones): deleting
        a cluster's files took longer than the drill itself on a busy disk."""
        if (self.data / "postmaster.pid").exists():
            self.stop("immediate")


# --- the application's processes -------------------------------------------------------------------------

def service_env(*, database_url: str, redis_url: str, **extra: str) -> dict[str, str]:
    """The environment of a production-shaped process (Redis matcher transport, Celery broker) against the
    given database and Redis."""
    env = {k: v for k, v in os.environ.items() if k not in _OWN}
    env |= {
        "DATABASE_URL": database_url, "REDIS_URL": redis_url, "CELERY_BROKER_URL": redis_url, "MATCHER_TRANSPORT": "redis",
        "MATCHER_SHARDS": "1", "CELERY_TASK_ALWAYS_EAGER": "0", "SUANLI_EMBEDDED_SCHEDULER": "0", "ORDER_RATE_LIMIT": "100000/s",
        "PYTHONUNBUFFERED": "1", "LOG_LEVEL": "WARNING",
    }
    env |= extra
    return env


class Service:
    """One of the application's processes, started in its own session so a kill takes all of it (a
    prefork worker's children too), as an OOM kill or a node loss would."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], workdir: Path, ready: Callable[[Service], bool],
                 timeout: float = 60) -> None:
        self.name, self.argv, self.env, self.ready, self.timeout = name, argv, env, ready, timeout
        self.log = workdir / f"{name}.log"
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self.kills = 0
        self._mark = 0  # log offset at the latest start: readiness reads only what this run wrote

    def since_start(self) -> str:
        try:
            with self.log.open("rb") as f:
                f.seek(self._mark)
                return f.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def start(self) -> None:
        self._mark = self.log.stat().st_size if self.log.exists() else 0
        with self.log.open("ab") as out:
            out.write(f"\n==== {self.name}: start {self.starts + 1} ====\n".encode())
            self._mark = out.tell()
            self.proc = subprocess.Popen(self.argv, cwd=ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self.starts += 1
        started = time.monotonic()
        while not self.ready(self):
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited ({self.proc.returncode}) while starting:\n{tail(self.log)}")
            if time.monotonic() - started > self.timeout:
                self.kill()  # not left running behind a failed test
                raise AssertionError(f"{self.name} not ready within {self.timeout} s:\n{tail(self.log)}")
            time.sleep(0.05)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL, to the whole process group: no handler runs, nothing is flushed or acknowledged."""
        if self.alive():
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(timeout=10)
            self.kills += 1

    def crash_later(self, delay: float) -> threading.Thread:
        """After `delay` seconds, SIGKILL the process and start it again (a supervisor's restart)."""
        def crash():
            time.sleep(delay)
            self.kill()
            self.start()

        thread = threading.Thread(target=crash, name=f"crash-{self.name}", daemon=True)
        thread.start()
        return thread

    def crash_when(self, condition: Callable[[], bool], *, timeout: float = 10) -> threading.Thread:
        """SIGKILL the process the moment `condition()` holds (polled every half millisecond; at `timeout`
        regardless), then start it again. The thread's `caught` says whether the condition was met."""
        def crash():
            deadline = time.monotonic() + timeout
            while not condition():
                if time.monotonic() > deadline:
                    break
                time.sleep(0.0005)
            else:
                thread.caught = True
            self.kill()
            self.start()

        thread = threading.Thread(target=crash, name=f"crash-{self.name}", daemon=True)
        thread.caught = False
        thread.start()
        return thread

    def stop(self) -> None:
        if not self.alive():
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.kill()


def web(env: dict[str, str], workdir: Path) -> tuple[Service, str]:
    """uvicorn serving config.asgi:application, as `make run` does; returns it and its base URL."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"

    def ready(_: Service) -> bool:
        try:
            return requests.get(f"{base}/healthz", timeout=1).status_code == 200
        except requests.RequestException:
            return False

    argv = [sys.executable, "-m", "uvicorn", "config.asgi:application", "--ws", "websockets-sansio", "--host", "127.0.0.1",
            "--port", str(port), "--log-level", "warning", "--no-access-log"]
    return Service("web", argv, env, workdir, ready), base


def matcher(env: dict[str, str], workdir: Path) -> Service:
    argv = [sys.executable, "manage.py", "runmatcher", "--shard", "0", "--shards", "1"]
    return Service("matcher", argv, env, workdir, lambda s: "serving" in s.since_start())


def worker(env: dict[str, str], workdir: Path) -> Service:
    """A Celery worker; solo pool (one process: the machine's two cores are shared with the rest)."""
    argv = [sys.executable, "-m", "celery", "-A", "config", "worker", "--pool", "solo", "--loglevel", "INFO", "--without-gossip",
            "--without-mingle", "--without-heartbeat", "-n", f"drill-{os.getpid()}@%h"]
    return Service("worker", argv, env, workdir, lambda s: " ready." in s.since_start())


# --- a client that retries, as a real one does ------------------------------------------------------------

class RetryingClient:
    """HTTP with retries on what a client cannot tell from a lost request: connection errors, 5xx and (for
    order entry) 202 "queued, not confirmed". Every retry repeats the same body: the same client_order_id,
    event ids and webhook event id, so the server's idempotency decides what happens."""

    def __init__(self, base: str, *, token: str | None = None, give_up_after: float = 60) -> None:
        self.base = base
        self.session = requests.Session()
        if token:
            self.session.headers["Authorization"] = f"Token {token}"
        self.give_up_after = give_up_after
        self.attempts = 0
        self.retries = 0
        self.longest_outage = 0.0

    def call(self, method: str, path: str, *, done: Callable[[requests.Response], bool] | None = None, before: Callable[[], dict] | None = None,
             **kwargs) -> requests.Response:
        """Repeat the request until `done(response)` (default: status < 500); `before` gives per-attempt
        keyword arguments (a webhook re-signed with a fresh timestamp)."""
        done = done or (lambda r: r.status_code < 500)
        started = time.monotonic()
        pause = 0.05
        while True:
            self.attempts += 1
            try:
                response = self.session.request(method, self.base + path, timeout=10, **kwargs, **(before() if before else {}))
                if done(response):
                    self.longest_outage = max(self.longest_outage, time.monotonic() - started)
                    return response
                problem = f"{response.status_code} {response.text[:300]}"
            except requests.RequestException as exc:
                problem = repr(exc)
                self.session.close()  # a connection the server dropped: start fresh
            if time.monotonic() - started > self.give_up_after:
                raise AssertionError(f"{method} {path}: no answer for {self.give_up_after} s; last: {problem}")
            self.retries += 1
            time.sleep(pause)
            pause = min(pause * 1.5, 0.5)


# --- a market-data client that reconnects, as a real one does -------------------------------------------

class MarketWatcher:
    """A /ws/market/<id>/ client on its own thread, using only the public `websockets` library: keeps a local
    book (snapshot, then updates), checks every message's checksum, asks for a resync on a gap or a wrong
    checksum, and reconnects (new snapshot) whenever the socket drops."""

    def __init__(self, ws_base: str, instrument_id: int) -> None:
        self.url = f"{ws_base}/ws/market/{instrument_id}/"
        self.seq = -1
        self.levels: dict[str, dict[int, int]] = {"buy": {}, "sell": {}}
        self.connects = 0
        self.snapshots = 0
        self.mismatches: list[str] = []  # checksum or sequence problems seen (each followed by a resync)
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._main, name="market-watcher", daemon=True)

    def start(self) -> MarketWatcher:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def state(self) -> tuple[int, int]:
        """(book seq, checksum of the local book)."""
        with self.lock:
            return self.seq, self.checksum()

    def checksum(self) -> int:
        from exchange.selectors import checksum

        bids = sorted(self.levels["buy"].items(), key=lambda level: -level[0])
        asks = sorted(self.levels["sell"].items())
        return checksum(bids, asks)

    def _main(self) -> None:
        import asyncio

        asyncio.run(self._run())

    async def _run(self) -> None:
        import asyncio
        import json

        from websockets.asyncio.client import connect

        while not self._stop.is_set():
            try:
                # An Origin of ours: the server refuses a websocket without one (exchange.ws_auth).
                async with connect(self.url, origin="http://127.0.0.1", open_timeout=5, close_timeout=1) as ws:
                    self.connects += 1
                    while not self._stop.is_set():
                        try:
                            raw = await asyncio.wait_for(ws.recv(), 0.5)
                        except TimeoutError:
                            continue
                        with self.lock:
                            trusted = self._handle(json.loads(raw))
                        if not trusted:
                            await ws.send(json.dumps({"type": "resync"}))
            except Exception:
                await asyncio.sleep(0.2)  # the server or its Redis is away: try again

    def _handle(self, msg: dict) -> bool:
        """Apply one message; False when the book is no longer trustworthy (then the client resyncs)."""
        kind = msg["type"]
        if kind == "snapshot":
            self.snapshots += 1
            self.seq = msg["seq"]
            self.levels = {"buy": dict(map(tuple, msg["bids_fen_per_lot"])), "sell": dict(map(tuple, msg["asks_fen_per_lot"]))}
            return True
        if kind != "book" or self.seq < 0:
            return True
        if msg["first"] != self.seq + 1:
            self.mismatches.append(f"gap: at {self.seq}, message from {msg['first']}")
            self.seq = -1
            return False
        for u in msg["updates"]:
            side = self.levels[u["side"]]
            if u["quantity"]:
                side[u["price_fen_per_lot"]] = u["quantity"]
            else:
                side.pop(u["price_fen_per_lot"], None)
        self.seq = msg["seq"]
        if self.checksum() != msg["checksum"]:
            self.mismatches.append(f"checksum at {self.seq}")
            self.seq = -1
            return False
        return True
