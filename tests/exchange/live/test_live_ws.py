"""Live: uvicorn serving config.asgi:application (embedded "thread" matcher) and three client processes that
trade against each other over /ws/user/ while rebuilding the book from /ws/market/<id>/.

Each client checks every update (no seq gap, its checksum equals the message's); at the end every client's
book must equal the server's REST /book/ (seq, checksum and levels). SQLite: the test database (in memory)
is copied to a file the server opens; PostgreSQL: the server uses the test database itself (and the Redis
channel layer when REDIS_URL is set)."""

from __future__ import annotations

import json
import os
import queue
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
from django.db import connection
from rest_framework.authtoken.models import Token

from exchange.models import Order
from ledger import services as ledger
from ledger.models import AccountKind
from ledger.verify import ledger_verify
from tests.factories import OrganisationFactory, member

ROOT = Path(__file__).resolve().parents[3]
CLIENT = Path(__file__).with_name("ws_client.py")
pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _server_env(tmp_path: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "SUANLI_SQLITE_PATH")}
    env |= {"MATCHER_TRANSPORT": "thread", "SUANLI_EMBEDDED_SCHEDULER": "0", "CELERY_TASK_ALWAYS_EAGER": "1",
            "ORDER_RATE_LIMIT": "100000/s", "PYTHONUNBUFFERED": "1", "CHANNEL_PREFIX": f"live-{uuid.uuid4().hex[:8]}",
            "LOG_LEVEL": "WARNING"}
    if connection.vendor == "sqlite":
        # The test database lives in this process's memory: copy it (schema and the committed set-up) to a file.
        import sqlite3

        path = tmp_path / "live.sqlite3"
        connection.ensure_connection()
        target = sqlite3.connect(path)
        connection.connection.backup(target)
        target.close()
        env["SUANLI_SQLITE_PATH"] = str(path)
    else:
        db = connection.settings_dict
        password = f":{db['PASSWORD']}" if db.get("PASSWORD") else ""
        env["DATABASE_URL"] = f"postgres://{db['USER']}{password}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"
    return env


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def _lines(proc: subprocess.Popen) -> queue.Queue:
    """A process's stdout lines, read on a thread so every wait below can time out."""
    lines: queue.Queue = queue.Queue()

    def pump():
        for line in proc.stdout:
            lines.put(line.rstrip("\n"))
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    return lines


def _next_line(lines: queue.Queue, timeout: float, what: str) -> str:
    try:
        line = lines.get(timeout=timeout)
    except queue.Empty:
        raise AssertionError(f"no {what} within {timeout} s") from None
    assert line is not None, f"the process ended before {what}"
    return line


def _stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=5)


def test_three_client_processes_trade_and_keep_the_servers_book(market_setup, tmp_path):
    m = market_setup
    inst = m["instrument"]
    second = OrganisationFactory(name="Lanting Labs", kind="buyer")
    clearing = ledger.platform_account(kind=AccountKind.PROVIDER_CLEARING, name="offline")
    ledger.transfer(source=clearing, destination=ledger.account_for(organisation=second, kind="available"),
                    amount_fen=1_000_000, idempotency_key=f"fund:{second.pk}", kind="top_up")
    traders = [
        ("seller", "sell", m["seller_user"]),
        ("buyer-a", "buy", m["buyer_user"]),
        ("buyer-b", "buy", member(second, role="trader", username="lt-trader")),
    ]
    tokens = {name: Token.objects.create(user=user).key for name, _, user in traders}

    port = _free_port()
    base = f"127.0.0.1:{port}"
    log = (tmp_path / "server.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "config.asgi:application", "--ws", "websockets-sansio", "--host", "127.0.0.1", "--port", str(port),
         "--log-level", "warning"],  # as in the Makefile: the market stream writes frames straight to its sockets
        cwd=ROOT, env=_server_env(tmp_path), stdout=log, stderr=subprocess.STDOUT,
    )
    procs = [server]
    try:
        deadline = time.monotonic() + 30
        while True:
            assert server.poll() is None, (tmp_path / "server.log").read_text()
            try:
                _get(f"http://{base}/api/v1/instruments/{inst.pk}/book/")
                break
            except OSError:
                assert time.monotonic() < deadline, "the server did not start:\n" + (tmp_path / "server.log").read_text()
                time.sleep(0.2)

        clients = []
        for seed, (name, side, _) in enumerate(traders, start=1):
            proc = subprocess.Popen(
                [sys.executable, str(CLIENT), "--url", f"ws://{base}", "--instrument", str(inst.pk), "--token", tokens[name],
                 "--side", side, "--name", name, "--orders", "30", "--seed", str(seed)],  # Origin: the server's own (the client's default)
                cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            )
            procs.append(proc)
            clients.append((name, proc, _lines(proc)))
        for name, _, lines in clients:
            line = _next_line(lines, 60, f"{name} subscribing")
            assert line == "READY", line
        for _, proc, _ in clients:  # every client subscribed before the first order: each sees the whole tape
            proc.stdin.write("GO\n")
            proc.stdin.flush()
        for name, _, lines in clients:
            line = _next_line(lines, 90, f"{name} placing its orders")
            assert line == "PLACED", line

        # Every order was answered, so every batch is committed and published: the REST book is final.
        rest = _get(f"http://{base}/api/v1/instruments/{inst.pk}/book/?depth=500")
        for _, proc, _ in clients:
            proc.stdin.write(f"FINISH {rest['seq']}\n")
            proc.stdin.flush()
        results = {}
        for name, _, lines in clients:
            line = _next_line(lines, 40, f"{name}'s result")
            results[name] = json.loads(line)

        trades, url = 0, f"http://{base}/api/v1/trades/?instrument={inst.pk}&page_size=500"
        while url:  # the tape pages by cursor: follow `next`
            page = _get(url)
            trades, url = trades + len(page["results"]), page["next"]
        assert trades > 0
        print("\nlive websocket clients:", json.dumps({n: {"seq": r["seq"], "ack_ms": r["ack_ms"], **r["counts"]} for n, r in results.items()}))
        for name, r in results.items():
            assert (r["seq"], r["checksum"]) == (rest["seq"], rest["checksum"]), name
            assert (r["bids"], r["asks"]) == (rest["bids_fen_per_lot"], rest["asks_fen_per_lot"]), name
            assert r["counts"]["resyncs"] == 0, name
            assert r["counts"]["updates"] > 0 and r["counts"]["user_events"] > 0, name
            assert r["counts"]["trades"] == trades, name  # every client saw the whole tape
        errors = [e for r in results.values() for e in r["errors"]]
        assert errors == [], errors[:5]
        assert "deadlock detected" not in (tmp_path / "server.log").read_text()
    except BaseException:
        _stop(procs)
        print("server log (tail):\n" + (tmp_path / "server.log").read_text()[-6000:])
        raise
    finally:
        _stop(procs)
        log.close()

    if connection.vendor == "postgresql":  # on SQLite the server wrote to its own copy
        assert not Order.objects.filter(status="pending").exists()
        assert ledger_verify().ok
