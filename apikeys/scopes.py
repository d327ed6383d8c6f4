"""Which scope an API request needs. Decided here, in one table, rather than on each view.

- Safe methods (GET, HEAD, OPTIONS): "read".
- Writes that move money out of a wallet: "withdraw" (every write on payouts; refunds of top-ups).
- Writes on API keys themselves: no key may do them (a key must not mint or revoke keys: that needs the
  user's own credential: the portal session or the interactive token).
- Every other write (orders, amend, cancel, cancel-all, demands, listings, top-ups, metering, vouchers...):
  "trade".

The scope only narrows: the view's own role checks still run for the key's user, so a key never does
more than its user may.
"""

from __future__ import annotations

from apikeys.models import Scope

SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
KEYS_FORBIDDEN = "forbidden"

# "module.Class": {action names} (a viewset) or "*" (every write of that view).
WITHDRAW_VIEWS: dict[str, set[str] | str] = {
    "ledger.payments.views.PayoutViewSet": "*",
    "ledger.payments.views.TopUpViewSet": {"refund"},
}
NO_KEY_VIEWS = {"apikeys.api.views.ApiKeyViewSet"}


def _view_name(view) -> str:
    cls = type(view)
    return f"{cls.__module__}.{cls.__qualname__}"


def required_scope(method: str, view) -> str:
    """"read", "trade", "withdraw", or KEYS_FORBIDDEN for a request of `method` to `view` (a DRF view)."""
    if method.upper() in SAFE_METHODS:
        return Scope.READ.value
    name = _view_name(view) if view is not None else ""
    if name in NO_KEY_VIEWS:
        return KEYS_FORBIDDEN
    actions = WITHDRAW_VIEWS.get(name)
    if actions == "*" or (actions and getattr(view, "action", None) in actions):
        return Scope.WITHDRAW.value
    return Scope.TRADE.value
