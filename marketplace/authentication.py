"""DRF authentication by account token (`Authorization: Token <key>`), as rest_framework's, read cheaper.

The token's user is kept in the cache (Redis when configured, shared by every process) for
AUTH_TOKEN_CACHE_SECONDS, so an API request needs no database connection to know who is asking: reading it
was a fifth of the CPU of an order request (bench/RESULTS.md). What could make a cached user wrong is
forgotten at once: a deleted or re-saved token, a saved user (deactivated, say) or a deleted one, through the ORM
(the receivers below). A change made outside the ORM (SQL, `QuerySet.update`) shows within the TTL."""

from __future__ import annotations

import hashlib

from django.conf import settings
from django.core.cache import cache
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver
from django.utils.translation import gettext_lazy as _
from rest_framework import authentication, exceptions
from rest_framework.authtoken.models import Token

from marketplace.models import User


def _cache_key(key: str) -> str:
    # A digest, not the key: whoever can list the cache's keys must not learn credentials from them.
    return "auth:token:" + hashlib.sha256(key.encode()).hexdigest()


def token_user(key: str) -> User | None:
    """The user a token key belongs to (active or not), or None for an unknown key."""
    seconds = settings.AUTH_TOKEN_CACHE_SECONDS
    if seconds:
        user = cache.get(_cache_key(key))
        if user is not None:
            return user
    users = list(User.objects.raw(
        "SELECT u.* FROM authtoken_token k JOIN marketplace_user u ON u.id = k.user_id WHERE k.key = %s", [key]))
    if not users:
        return None  # unknown keys are not cached: a token created next is valid at once
    if seconds:
        cache.set(_cache_key(key), users[0], seconds)
    return users[0]


def token_cache_forget(keys) -> None:
    keys = list(keys)
    if keys:
        cache.delete_many([_cache_key(k) for k in keys])


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
