"""DRF authentication by account token (`Authorization: Token <key>`), as rest_framework's, read cheaper.

The token's user is kept in the cache (Redis when configured, shared by every process) for
AUTH_TOKEN_CACHE_SECONDS, so an API request needs no database connection to know who is asking: reading it
was a fifth of the CPU of an order request (bench/RESULTS.md). On Redis each process also keeps what it read
(common.near: no round trip, no unpickling), dropped when any process forgets the token. What could make a
cached user wrong is forgotten at once and again when the change commits: a deleted or re-saved token, a saved
user (deactivated, say) or a deleted one, through the ORM (the receivers below); other processes drop their
copies when Redis delivers the forget to them. A change made outside the ORM (SQL, `QuerySet.update`) shows
within the TTL."""

from __future__ import annotations

import hashlib
import time

from django.conf import settings
from django.core.cache import cache
from django.db import transaction
from django.db.models.base import ModelState
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver
from django.utils.translation import gettext_lazy as _
from rest_framework import authentication, exceptions
from rest_framework.authtoken.models import Token

from common.near import NearCache
from marketplace.models import User

_near = NearCache("auth-token")


def _cache_key(key: str) -> str:
    # A digest, not the key: whoever can list the cache's keys must not learn credentials from them. The
    # entry is (deadline, user): the deadline bounds the near copies too.
    return "auth:token-user:" + hashlib.sha256(key.encode()).hexdigest()


def _own_copy(user: User) -> User:
    """A request's own instance of a near-cached user (a request may set attributes on its user): the
    same field values, a fresh model state (no cached relations)."""
    clone = User.__new__(User)
    clone.__dict__.update(user.__dict__)
    clone._state = ModelState()
    clone._state.adding = False
    clone._state.db = user._state.db
    return clone


def token_user(key: str) -> User | None:
    """The user a token key belongs to (active or not), or None for an unknown key."""
    seconds = settings.AUTH_TOKEN_CACHE_SECONDS
    ticket = None
    if seconds:
        cache_key = _cache_key(key)
        if _near.enabled():
            user, ticket = _near.lookup(cache_key)
            if user is not None:
                return _own_copy(user)
        entry = cache.get(cache_key)
        if entry is not None:
            deadline, user = entry
            if ticket is not None:
                _near.keep(cache_key, _own_copy(user), deadline, ticket)
            return user
    users = list(User.objects.raw(
        "SELECT u.* FROM authtoken_token k JOIN marketplace_user u ON u.id = k.user_id WHERE k.key = %s", [key]))
    if not users:
        return None  # unknown keys are not cached: a token created next is valid at once
    if seconds:
        deadline = time.time() + seconds
        cache.set(cache_key, (deadline, users[0]), seconds)
        if ticket is not None:
            _near.keep(cache_key, _own_copy(users[0]), deadline, ticket)
    return users[0]


def token_cache_forget(keys) -> None:
    """Forget the tokens' cached users now and, inside a transaction, again when it commits: a request
    reading the token between the change and its commit still sees the old row and may cache it again."""
    keys = list(keys)
    if not keys:
        return
    _forget(keys)
    connection = transaction.get_connection()
    if connection.in_atomic_block:
        transaction.on_commit(lambda: _forget(keys), robust=True)  # the change is committed: a failure is logged


def _forget(keys: list[str]) -> None:
    cache_keys = [_cache_key(k) for k in keys]
    cache.delete_many(cache_keys)
    if _near.enabled():
        _near.forget(cache_keys)


class TokenAuthentication(authentication.TokenAuthentication):
    """The same answers as DRF's TokenAuthentication: the token's user, refused when the token is unknown or
    the user inactive. The token and its user are read by one constant SQL statement instead of a query
    compiled per request (1.1 ms of CPU against 0.4 ms, bench/db_paths_bench.py), and then from the cache.
    `request.auth` is the Token (key and user; `created` is not read)."""

    def authenticate_credentials(self, key):
        user = token_user(key)
        if user is None:
            raise exceptions.AuthenticationFailed(_("Invalid token."))
        if not user.is_active:
            raise exceptions.AuthenticationFailed(_("User inactive or deleted."))
        token = Token(key=key, user=user)
        token._state.adding = False
        token._state.db = user._state.db
        return user, token


@receiver(post_save, sender=Token, dispatch_uid="marketplace.token_cache_saved")
@receiver(post_delete, sender=Token, dispatch_uid="marketplace.token_cache_deleted")
def _token_changed(sender, instance: Token, **kwargs) -> None:
    token_cache_forget([instance.key])


@receiver(post_save, sender=User, dispatch_uid="marketplace.token_cache_user_saved")
def _user_changed(sender, instance: User, created: bool, update_fields=None, **kwargs) -> None:
    if created:  # deleting a user deletes its token first: _token_changed
        return
    if update_fields is not None and set(update_fields) <= {"last_login"}:
        return  # a sign-in (django.contrib.auth's update_last_login): nothing a token's answer depends on
    token_cache_forget(Token.objects.filter(user_id=instance.pk).values_list("key", flat=True))
