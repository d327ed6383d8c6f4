"""The matcher loop tells an outage (database unreachable) from a failing command: an outage is raised, so
the batch is tried again whole once the database is back (runmatcher keeps the messages in flight), instead
of failing every command one by one. The drills in test_kill_drills.py restart real services; this is the
same decision without them."""

import pytest
from django.db import OperationalError, connection

from exchange.transport import MatcherLoop, outage

pytestmark = pytest.mark.django_db


class _Failing:
    def __init__(self, exc):
        self.exc = exc
        self.calls = 0

    def process(self, commands):
        self.calls += 1
        raise self.exc


def test_an_unreachable_database_is_an_outage_and_the_batch_is_not_failed_command_by_command(monkeypatch):
    monkeypatch.setattr(connection, "is_usable", lambda: False)
    matcher = _Failing(OperationalError("connection refused"))
    with pytest.raises(OperationalError):
        MatcherLoop(matcher).run([{"op": "place"}, {"op": "place"}])
    assert matcher.calls == 1


def test_an_error_on_a_working_connection_fails_only_the_commands(monkeypatch):
    monkeypatch.setattr(connection, "is_usable", lambda: True)
    matcher = _Failing(OperationalError("deadlock detected"))
    replies = MatcherLoop(matcher).run([{"op": "place"}, {"op": "place"}])
    assert replies == [{"op": "place", "error": "internal_error"}] * 2
    assert matcher.calls == 3  # the batch, then each command alone


def test_redis_connection_errors_are_outages():
    import redis

    assert outage(redis.ConnectionError("Connection refused")) and outage(redis.TimeoutError("Timeout reading"))
    assert not outage(ValueError("bad command"))
