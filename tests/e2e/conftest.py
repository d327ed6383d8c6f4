"""Browser tests: the portal served by uvicorn (config.asgi, embedded thread matcher, websockets) in a
subprocess, driven by Playwright through Debian's chromium. Nothing is downloaded: without /usr/bin/chromium
the tests are skipped locally and fail in CI (.ci/run installs it)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
from django.db import connection

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
OUTPUT = Path(__file__).with_name("output")  # git-ignored: screenshots and the server log of the last run


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _server_env(tmp_path: Path) -> dict:
    """As tests/exchange/live: SQLite's in-memory test database is copied to a file the server opens;
    PostgreSQL's test database is used as it is (and Redis as the channel layer when REDIS_URL is set)."""
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "SUANLI_SQLITE_PATH")}
    env |= {"MATCHER_TRANSPORT": "thread", "SUANLI_EMBEDDED_SCHEDULER": "0", "CELERY_TASK_ALWAYS_EAGER": "1",
            "PYTHONUNBUFFERED": "1", "CHANNEL_PREFIX": f"e2e-{uuid.uuid4().hex[:8]}", "LOG_LEVEL": "WARNING",
            "WS_HEARTBEAT_SECONDS": "2"}
    if connection.vendor == "sqlite":
        import sqlite3

        path = tmp_path / "e2e.sqlite3"
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


class Server:
    def __init__(self, tmp_path: Path) -> None:
        OUTPUT.mkdir(exist_ok=True)
        self.log_path = OUTPUT / "server.log"
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = self.log_path.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "config.asgi:application", "--ws", "websockets-sansio", "--host", "127.0.0.1",
             "--port", str(self.port), "--log-level", "warning"],
            cwd=ROOT, env=_server_env(tmp_path), stdout=self._log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while True:
            assert self.proc.poll() is None, self.log()
            try:
                urllib.request.urlopen(f"{self.url}/healthz", timeout=2).read()
                return
            except OSError:
                assert time.monotonic() < deadline, "the server did not start:\n" + self.log()
                time.sleep(0.2)

    def log(self) -> str:
        return self.log_path.read_text()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self._log.close()


@pytest.fixture
def portal(transactional_db, tmp_path):
    """The portal tests' world, committed, and a server over it. Set up before `browser` (ask for it first):
    no ORM call may happen while Playwright's event loop runs on this thread."""
    from tests.portal.world import world_build

    world = world_build()
    server = Server(tmp_path)
    yield world, server
    server.stop()


@pytest.fixture
def portal_traded(transactional_db, tmp_path):
    """As `portal`, with one trade (3 lots at 15.00) and its contract, a surveillance alert and an open
    voucher programme with one application, so every page has rows to render."""
    import datetime as dt

    from django.utils import timezone
    from rest_framework.test import APIClient

    from oversight.models import Alert
    from tests.factories import UserFactory
    from tests.portal.world import world_build
    from vouchers import services as vouchers

    world = world_build()
    api = APIClient()
    for user, side, extra in ((world["seller_user"], "sell", {"listing": world["listing"].pk}), (world["buyer_user"], "buy", {})):
        api.force_authenticate(user)
        response = api.post("/api/v1/orders/", {"instrument": world["instrument"].pk, "side": side, "price": "15.00", "quantity": 3,
                                                "client_order_id": f"crawl-{side}", **extra}, format="json")
        assert response.status_code in (200, 201), response.json()
    Alert.objects.create(kind="wash_trade", severity="high", fingerprint="crawl:1", organisation=world["buyer"],
                         instrument=world["instrument"], summary="crawl alert")
    authority = UserFactory(username="authority", platform_role="authority")
    now = timezone.now()
    programme = vouchers.programme_create(user=authority, code="crawl", name="Crawl programme", valid_from=now - dt.timedelta(days=1),
                                          valid_until=now + dt.timedelta(days=100), rate_bps=3000, org_cap_per_year_fen=10_000_000)
    vouchers.programme_fund(user=authority, programme=programme, amount_fen=50_000_000, idempotency_key="crawl")
    vouchers.application_submit(user=world["multi"], programme=programme, organisation=world["buyer"], credit_code=world["buyer"].credit_code,
                                 declared_size_class=world["buyer"].size_class, requested_fen=100_000, idempotency_key="crawl")
    world["authority"] = authority
    server = Server(tmp_path)
    yield world, server
    server.stop()


@pytest.fixture
def browser():
    if not os.path.exists(CHROMIUM):
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing: .ci/run installs Debian's chromium")
        pytest.skip(f"needs Debian's chromium at {CHROMIUM} (apt-get install -y chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield browser
        browser.close()
