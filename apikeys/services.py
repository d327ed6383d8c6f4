"""Create, check and revoke API keys. The plaintext exists once, in the answer to its creation."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from apikeys.models import ApiKey, Scope
from common.errors import ServiceError

KEY_PREFIX = "sl_"
KEY_RE = re.compile(r"^sl_([0-9a-f]{12})_([A-Za-z0-9_-]{20,100})$")
MAX_KEYS_PER_USER = 50


def last_used_interval() -> timedelta:
    """last_used_at is written at most this often per key, so a busy key does not write on every request."""
    return timedelta(seconds=int(getattr(settings, "API_KEY_LAST_USED_SECONDS", 60)))


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def scopes_normalise(scopes: list[str]) -> list[str]:
    """Sorted, unique, known; "read" is always included (a key that may trade may see its orders)."""
    unknown = sorted(set(scopes) - set(Scope.values))
    if unknown:
        raise ServiceError(f"Unknown scope {unknown[0]!r}: one of {', '.join(Scope.values)}.", field="scopes")
    return sorted({Scope.READ.value, *(str(s) for s in scopes)})


@transaction.atomic
def api_key_create(*, user, name: str, scopes: list[str], expires_at: datetime | None = None) -> tuple[ApiKey, str]:
    """A new key for `user`; returns the row and the plaintext key (never stored, never shown again)."""
    if not user.is_active:
        raise ServiceError("An inactive user cannot have API keys.", status_code=403)
    if expires_at is not None and expires_at <= timezone.now():
        raise ServiceError("The expiry must be in the future.", field="expires_at")
    if ApiKey.objects.filter(user=user, revoked_at__isnull=True).count() >= MAX_KEYS_PER_USER:
        raise ServiceError(f"At most {MAX_KEYS_PER_USER} live keys per user: revoke one first.")
    scopes = scopes_normalise(scopes)
    while True:
        prefix = secrets.token_hex(6)
        if not ApiKey.objects.filter(prefix=prefix).exists():
            break
    secret = secrets.token_urlsafe(32)  # 256 bits: a plain SHA-256 is enough, no slow hash needed
    key = ApiKey.objects.create(user=user, name=name, prefix=prefix, secret_hash=_digest(secret), scopes=scopes, expires_at=expires_at)
    return key, f"{KEY_PREFIX}{prefix}_{secret}"


def api_key_authenticate(raw: str) -> ApiKey | None:
    """The usable key `raw` names, with its user (active), or None. Marks it used (at most once a minute)."""
    match = KEY_RE.match(raw.strip())
    if match is None:
        return None
    prefix, secret = match.groups()
    key = ApiKey.objects.select_related("user").filter(prefix=prefix).first()
    # Compare even when there is no row, so timing does not tell which prefixes exist.
    expected = key.secret_hash if key is not None else "0" * 64
    if not hmac.compare_digest(expected, _digest(secret)) or key is None:
        return None
    now = timezone.now()
    if not key.is_usable(now) or not key.user.is_active:
        return None
    if key.last_used_at is None or now - key.last_used_at >= last_used_interval():
        # A conditional update: concurrent requests write once, and nothing here holds a lock.
        stale = now - last_used_interval()
        ApiKey.objects.filter(Q(last_used_at__isnull=True) | Q(last_used_at__lte=stale), pk=key.pk).update(last_used_at=now)
        key.last_used_at = now
    return key


@transaction.atomic
def api_key_revoke(*, key: ApiKey) -> ApiKey:
    """Revoke once (a second call changes nothing); the user's open sockets using it close (signals)."""
    key = ApiKey.objects.select_for_update().get(pk=key.pk)
    if key.revoked_at is None:
        key.revoked_at = timezone.now()
        key.save(update_fields=["revoked_at"])
    return key


def api_key_still_valid(key_id: int) -> bool:
    """For a socket's periodic re-check: the key is neither revoked nor expired and its user is active."""
    key = ApiKey.objects.select_related("user").filter(pk=key_id).first()
    return key is not None and key.is_usable() and key.user.is_active
