"""On Redis each process keeps the token users it read (common.near) and drops them when any process forgets
them: no Redis round trip per API request, and a revoked token still refused everywhere."""

import multiprocessing
import socket
import time

import pytest
import redis
from django.conf import settings
from django.db import connection
from rest_framework import exceptions
from rest_framework.authtoken.models import Token

from common.near import NearCache
from marketplace import authentication
from marketplace.authentication import TokenAuthentication, _cache_key, _near
from tests.factories import UserFactory

pytestmark = [pytest.mark.redis, pytest.mark.django_db]


def _until(condition, seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


def _listening() -> None:
    _near.live()  # starts this process's listener
    assert _until(_near.live), "the near cache's listener did not subscribe"


class _NoSharedCache:
    def get(self, *args, **kwargs):
        raise AssertionError("the shared cache was read")


def _another_process_forgets(key: str) -> None:
    """What another process's token_cache_forget does: delete the shared entry, then forget it through its own
    near cache (another origin on the same channel)."""
    authentication.cache.delete(_cache_key(key))
    NearCache("auth-token").forget([_cache_key(key)])


def _delete_token_behind_the_orm(key: str) -> None:
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM authtoken_token WHERE key = %s", [key])


def test_a_token_read_once_is_then_answered_without_redis_each_request_its_own_user(monkeypatch):
    _listening()
    user = UserFactory(username="near-quant")
    key = Token.objects.create(user=user).key
    first, _ = TokenAuthentication().authenticate_credentials(key)
    monkeypatch.setattr(authentication, "cache", _NoSharedCache())
    second, token = TokenAuthentication().authenticate_credentials(key)
    third, _ = TokenAuthentication().authenticate_credentials(key)
    assert (second.pk, second.username, token.key) == (user.pk, "near-quant", key)
    second.note = "set by one request"
    assert second is not third and not hasattr(third, "note")


def test_a_token_forgotten_by_another_process_is_refused_here_once_redis_delivers_it():
    _listening()
    key = Token.objects.create(user=UserFactory(username="near-rotated")).key
    TokenAuthentication().authenticate_credentials(key)
    _delete_token_behind_the_orm(key)  # as another process's transaction would, then it forgets:
    _another_process_forgets(key)

    def refused() -> bool:
        try:
            TokenAuthentication().authenticate_credentials(key)
        except exceptions.AuthenticationFailed as exc:
            return str(exc.detail) == "Invalid token."
        return False

    assert _until(refused, 1.0)


def _forget_in_this_process(key: str) -> None:
    _near.forget([_cache_key(key)])


def test_a_forked_child_that_forgets_before_it_listens_is_heard_by_its_parent():
    """A process forked from one that listens (a pre-forking server's worker, a task pool's child) has its
    parent's near cache: its first forget must not go out in the parent's name, which the parent's listener
    ignores as its own."""
    _listening()
    key = Token.objects.create(user=UserFactory(username="near-forked")).key
    TokenAuthentication().authenticate_credentials(key)
    _delete_token_behind_the_orm(key)
    authentication.cache.delete(_cache_key(key))
    child = multiprocessing.get_context("fork").Process(target=_forget_in_this_process, args=(key,))
    child.start()
    child.join(10)
    assert child.exitcode == 0

    def refused() -> bool:
        try:
            TokenAuthentication().authenticate_credentials(key)
        except exceptions.AuthenticationFailed:
            return True
        return False

    assert _until(refused, 1.0)


def test_copies_are_dropped_when_the_subscription_is_lost_as_its_forgets_may_be(caplog):
    _listening()
    key = Token.objects.create(user=UserFactory(username="near-cut")).key
    TokenAuthentication().authenticate_credentials(key)
    before = _near._pubsub
    before.connection._sock.shutdown(socket.SHUT_RDWR)  # the listener's connection breaks
    # A forget published while nobody here listened: the shared entry deleted, the message lost.
    _delete_token_behind_the_orm(key)
    r = redis.Redis.from_url(settings.REDIS_URL)
    r.delete(authentication.cache.make_and_validate_key(_cache_key(key)))
    r.close()
    assert _until(lambda: _near._pubsub is not before and _near.live()), "the listener did not subscribe again"
    with pytest.raises(exceptions.AuthenticationFailed):
        TokenAuthentication().authenticate_credentials(key)
    assert "listener lost Redis" in caplog.text


def test_a_value_read_while_a_forget_arrived_is_not_kept():
    _listening()
    value, ticket = _near.lookup("k-race")
    assert value is None and ticket is not None
    _near._drop(["k-race"])  # a forget applied between the shared read and keeping it
    _near.keep("k-race", "stale", time.time() + 60, ticket)
    assert _near.lookup("k-race")[0] is None
    _, ticket = _near.lookup("k-race")
    _near.keep("k-race", "fresh", time.time() + 60, ticket)
    assert _near.lookup("k-race")[0] == "fresh"


def test_a_copy_lasts_no_longer_than_the_shared_entry():
    _listening()
    _, ticket = _near.lookup("k-old")
    _near.keep("k-old", "expired", time.time() - 1, ticket)
    assert _near.lookup("k-old")[0] is None


def test_not_trusted_when_redis_has_been_silent(monkeypatch):
    _listening()
    _, ticket = _near.lookup("k-silent")
    _near.keep("k-silent", "v", time.time() + 60, ticket)
    monkeypatch.setattr(_near, "_heard", time.monotonic() - 10)
    assert not _near.live() and _near.lookup("k-silent") == (None, None)
