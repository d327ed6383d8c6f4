"""API keys: a program's credential, per user, limited to scopes. Only a hash of the secret is stored."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone


class Scope(models.TextChoices):
    READ = "read", "read"  # safe methods (GET, HEAD, OPTIONS) and the websocket streams
    TRADE = "trade", "trade"  # order entry, amend, cancel and the other writes that do not move money out
    WITHDRAW = "withdraw", "withdraw"  # payouts (money out of a wallet) and refunds


class ApiKey(models.Model):
    """`sl_<prefix>_<secret>`: the prefix finds the row, SHA-256 of the secret is compared in constant time.

    A key acts as its user: it never has more rights than the user's roles give, only fewer (its scopes).
    A revoked or expired key, or a key of an inactive user, authenticates nobody."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_keys")
    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=16, unique=True)
    secret_hash = models.CharField(max_length=64)  # hex SHA-256 of the secret part
    scopes = models.JSONField(default=list)  # a sorted list of Scope values; "read" is always among them
    created_at = models.DateTimeField(default=timezone.now)
    last_used_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name = "API key"

    def __str__(self) -> str:
        return f"{self.name} (sl_{self.prefix}_…)"

    def is_usable(self, now=None) -> bool:
        now = now or timezone.now()
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > now)

    def has_scope(self, scope: str) -> bool:
        return scope in self.scopes
