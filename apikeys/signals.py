"""Credentials that stop being valid close the user's open websockets (exchange.ws_auth), signing out included.

The message only tells the user's sockets to re-check their credential now; the same re-check also runs
on a timer in each socket (WS_AUTH_RECHECK_SECONDS), which covers changes made outside the ORM."""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth.signals import user_logged_out
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver
from rest_framework.authtoken.models import Token

from apikeys.models import ApiKey


def _recheck(user_id: int) -> None:
    from exchange.ws_auth import user_sockets_recheck

    user_sockets_recheck(user_id)


@receiver(post_save, sender=ApiKey, dispatch_uid="apikeys.key_saved")
def _key_saved(sender, instance: ApiKey, created: bool, **kwargs) -> None:
    if not created and not instance.is_usable():
        _recheck(instance.user_id)


@receiver(post_delete, sender=ApiKey, dispatch_uid="apikeys.key_deleted")
def _key_deleted(sender, instance: ApiKey, **kwargs) -> None:
    _recheck(instance.user_id)


@receiver(post_delete, sender=Token, dispatch_uid="apikeys.token_deleted")
def _token_deleted(sender, instance: Token, **kwargs) -> None:
    _recheck(instance.user_id)


@receiver(post_save, sender=settings.AUTH_USER_MODEL, dispatch_uid="apikeys.user_saved")
def _user_saved(sender, instance, created: bool, **kwargs) -> None:
    if not created and not instance.is_active:
        _recheck(instance.pk)


@receiver(post_delete, sender=settings.AUTH_USER_MODEL, dispatch_uid="apikeys.user_deleted")
def _user_deleted(sender, instance, **kwargs) -> None:
    _recheck(instance.pk)


@receiver(user_logged_out, dispatch_uid="apikeys.user_logged_out")
def _user_logged_out(sender, request, user, **kwargs) -> None:
    # The signed-out session's sockets fail the re-check (the session is gone); the user's other sessions,
    # tokens and keys pass it and stay open.
    if user is not None:
        _recheck(user.pk)
