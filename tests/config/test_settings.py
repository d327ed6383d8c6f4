"""The configured backends work: the same tests talk to SQLite/in-memory or PostgreSQL/Redis in CI."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import connection

ROOT = Path(__file__).resolve().parents[2]


def test_backends_match_the_environment():
    expected_db = "postgresql" if os.environ.get("DATABASE_URL") else "sqlite"
    assert connection.vendor == expected_db
    layer = type(get_channel_layer()).__name__
    assert layer == ("RedisChannelLayer" if os.environ.get("REDIS_URL") else "InMemoryChannelLayer")


def test_channel_layer_round_trip():
    layer = get_channel_layer()
    channel = async_to_sync(layer.new_channel)()
    async_to_sync(layer.send)(channel, {"type": "ping", "n": 7})
    assert async_to_sync(layer.receive)(channel) == {"type": "ping", "n": 7}


def _manage(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def test_embedded_server_says_which_backends_it_uses_in_one_line(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL"}}
    env |= {"SUANLI_SQLITE_PATH": str(tmp_path / "db.sqlite3"), "SUANLI_EMBEDDED_SCHEDULER": "0"}
    result = subprocess.run([sys.executable, "-c", "import config.asgi"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("Suanli")]
    assert lines == [
        f"Suanli (embedded): database SQLite file {tmp_path / 'db.sqlite3'}; in-memory channel layer; in-process background jobs"
    ]


@pytest.mark.slow
def test_production_mode_passes_the_deploy_check_and_refuses_missing_secret():
    env = dict(os.environ, SUANLI_ENV="production", ALLOWED_HOSTS="exchange.example.cn",
               SECRET_KEY="x9$Kq2!vT7@pLm4#Wz8&Rb1^Nc6*Hd3(Yf5)Gj0-Sa2+Ue7=Io9_Px4", DEBUG="0")
    result = _manage("check", env=env)  # tests/conftest.py's fast password hashing is refused in production
    assert result.returncode != 0 and "SUANLI_TEST_FAST_PASSWORDS is for tests" in result.stderr
    env.pop("SUANLI_TEST_FAST_PASSWORDS")
    result = _manage("check", "--deploy", "--fail-level", "WARNING", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout
    env.pop("SECRET_KEY")
    result = _manage("check", env=env)
    assert result.returncode != 0 and "SECRET_KEY must be set" in result.stderr
