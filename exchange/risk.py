"""Risk controls: per-account limits and operators' kill switches (docs/security.md, "Risk controls").

The matcher enforces both, because it sees every new order of its shard in arrival order: two orders sent
at once cannot both fit under a limit that has room for one. It keeps, per organisation, the number and
the notional (price x open quantity, both sides) of its resting orders in memory, rebuilt from the
database when it starts or after a failed batch and updated from each committed batch's changed orders, so
checking an order costs a few dictionary look-ups and no SQL. Limits and active kill switches are reloaded
from the database once a second (housekeeping) and at once when an operator changes them (a `risk_sync`
command sent to every shard).

With N matcher shards each shard enforces its share (limit // N) of an account's open-order and
open-notional limits, so the account's total stays within its limit whichever instruments it trades.
"""

from __future__ import annotations

import os
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from decimal import Decimal

from django.conf import settings
from django.db import connection

from exchange.admission import Refusal
from exchange.models import KillScope, KillSwitch, Order, OrderStatus, OrderType, RiskLimit, TimeInForce

KILL_REASON = "kill_switch"  # an order the kill switch cancelled, and a refused amend
RESTING_TIF = (TimeInForce.GTC, TimeInForce.GTD)


@dataclass(frozen=True)
class Limits:
    max_open_orders: int | None
    max_open_notional_fen: int | None
    max_order_notional_fen: int | None
    order_rate: str | None


# Venue defaults: a Django setting of the same name wins, else the environment variable, else this (fen;
# 0: no limit). The order rate's default is REST_FRAMEWORK DEFAULT_THROTTLE_RATES["orders"] (ORDER_RATE_LIMIT).
DEFAULTS = {
    "RISK_MAX_OPEN_ORDERS": 1_000,
    "RISK_MAX_OPEN_NOTIONAL_FEN": 5_000_000_000,  # 50,000,000.00 CNY
    "RISK_MAX_ORDER_NOTIONAL_FEN": 500_000_000,  # 5,000,000.00 CNY
}


def _default(name: str) -> int | None:
    value = getattr(settings, name, None)
    if value is None:
        value = int(os.environ.get(name, DEFAULTS[name]))
    return value or None


def default_limits() -> Limits:
    """The venue's defaults (0 or None: no limit)."""
    return Limits(
        max_open_orders=_default("RISK_MAX_OPEN_ORDERS"),
        max_open_notional_fen=_default("RISK_MAX_OPEN_NOTIONAL_FEN"),
        max_order_notional_fen=_default("RISK_MAX_ORDER_NOTIONAL_FEN"),
        order_rate=settings.REST_FRAMEWORK.get("DEFAULT_THROTTLE_RATES", {}).get("orders"),
    )


def limits_of(row: RiskLimit | None, defaults: Limits) -> Limits:
    if row is None:
        return defaults
    return Limits(
        max_open_orders=row.max_open_orders if row.max_open_orders is not None else defaults.max_open_orders,
        max_open_notional_fen=row.max_open_notional_fen if row.max_open_notional_fen is not None else defaults.max_open_notional_fen,
        max_order_notional_fen=row.max_order_notional_fen if row.max_order_notional_fen is not None else defaults.max_order_notional_fen,
        order_rate=row.order_rate or defaults.order_rate,
    )


def cny(fen: int) -> str:
    """500,000.00: amounts in refusals, with thousands separators."""
    return f"{Decimal(fen) / 100:,.2f}"


def kill_message(scope: str, reason: str, code: str = "") -> str:
    what = {KillScope.ACCOUNT: "for this account", KillScope.INSTRUMENT: f"in {code or 'this instrument'}", KillScope.VENUE: "on the venue"}[scope]
    return f"Trading {what} is stopped by an operator's kill switch ({reason}). Cancels are still accepted."


def active_kill_switches() -> list[KillSwitch]:
    return list(KillSwitch.objects.filter(released_at__isnull=True).select_related("instrument").order_by("pk"))


def kill_switch_for(organisation_id: int, instrument_id: int) -> KillSwitch | None:
    """The active switch that stops this account on this instrument, read now (amends: not the hot path)."""
    for switch in active_kill_switches():
        if switch.scope == KillScope.VENUE or switch.target == (organisation_id if switch.scope == KillScope.ACCOUNT else instrument_id):
            return switch
    return None


# --- Web side: the order rate per account ---------------------------------------------------------------

RATE_CACHE_SECONDS = 2.0
_rates: tuple[float, dict[int, str]] | None = None


def order_rate_for(organisation_id: int) -> str | None:
    """The account's order rate ("50/s"): its override, read at most every RATE_CACHE_SECONDS per process
    (one query for all overrides), else the venue default."""
    global _rates
    now = time.monotonic()
    if _rates is None or now - _rates[0] >= RATE_CACHE_SECONDS:
        _rates = (now, dict(RiskLimit.objects.exclude(order_rate="").values_list("organisation_id", "order_rate")))
    return _rates[1].get(organisation_id) or settings.REST_FRAMEWORK.get("DEFAULT_THROTTLE_RATES", {}).get("orders")


def caches_clear() -> None:
    global _rates
    _rates = None


# --- Matcher side -----------------------------------------------------------------------------------------


class RiskBook:
    """One matcher's view: resting exposure per account, limits, active kill switches."""

    def __init__(self, *, owns: Callable[[int], bool], shards: int) -> None:
        self.owns = owns
        self.shards = max(shards, 1)
        self.ready = False
        self.open: dict[int, tuple[int, int]] = {}  # resting order id -> (organisation, notional fen)
        self.count: dict[int, int] = defaultdict(int)
        self.notional: dict[int, int] = defaultdict(int)
        self.defaults = default_limits()
        self.overrides: dict[int, Limits] = {}
        self.switches: dict[tuple[str, int | None], KillSwitch] = {}  # (scope, target) -> active switch
        self.swept: set[int] = set()  # switches whose resting orders this matcher has cancelled (committed)
        self.synced = False

    # --- state ----------------------------------------------------------------------------------------

    def ensure(self) -> None:
        """Rebuild what rests from the database (first use, and after a batch that failed)."""
        if not self.synced:
            self.sync()
        if self.ready:
            return
        self.open.clear()
        self.count.clear()
        self.notional.clear()
        with connection.cursor() as cur:
            cur.execute("SELECT id, organisation_id, instrument_id, price_fen_per_lot, open_quantity FROM exchange_order WHERE status = %s",
                        [OrderStatus.OPEN.value])
            for pk, org, iid, price, qty in cur.fetchall():
                if self.owns(iid):
                    self._add(pk, org, (price or 0) * qty)
        self.ready = True

    def invalidate(self) -> None:
        self.ready = False

    def sync(self) -> list[KillSwitch]:
        """Reload limits and active switches; returns the active switches this matcher has not swept yet (all
        of them after a restart: sweeping again is idempotent). The caller marks them `swept` once its batch
        has committed, so a failed batch sweeps again at the next sync."""
        self.defaults = default_limits()
        self.overrides = {row.organisation_id: limits_of(row, self.defaults) for row in RiskLimit.objects.all()}
        self.switches = {(s.scope, s.target): s for s in active_kill_switches()}
        self.swept &= {s.pk for s in self.switches.values()}
        self.synced = True
        return [s for s in self.switches.values() if s.pk not in self.swept]

    def _add(self, pk: int, org: int, notional: int) -> None:
        self.open[pk] = (org, notional)
        self.count[org] += 1
        self.notional[org] += notional

    def apply(self, orders: Iterable[Order]) -> None:
        """A committed batch's changed orders: what rests now replaces what rested before."""
        if not self.ready:
            return
        for order in orders:
            old = self.open.pop(order.pk, None)
            if old is not None:
                self.count[old[0]] -= 1
                self.notional[old[0]] -= old[1]
            if order.status == OrderStatus.OPEN and self.owns(order.instrument_id):
                self._add(order.pk, order.organisation_id, (order.price_fen_per_lot or 0) * order.open_quantity)

    def limits(self, org: int) -> Limits:
        return self.overrides.get(org, self.defaults)

    # --- checks -------------------------------------------------------------------------------------------

    def killed(self, org: int, instrument_id: int) -> KillSwitch | None:
        if not self.switches:
            return None
        return (self.switches.get((KillScope.VENUE, None)) or self.switches.get((KillScope.ACCOUNT, org))
                or self.switches.get((KillScope.INSTRUMENT, instrument_id)))

    def _share(self, limit: int) -> int:
        """This shard's part of an account's limit: exact with one shard (the default)."""
        return limit // self.shards

    def _split(self, share) -> str:
        return f" (split across {self.shards} matcher shards: {share} here)" if self.shards > 1 else ""

    def admission(self) -> Callable[[dict, object, int], Refusal | None]:
        """A checker for one batch's new orders, counting those it lets through against the limits of the
        ones after them (conservatively: an order refused later for funds still counts in its batch)."""
        extra_count: dict[int, int] = defaultdict(int)
        extra_notional: dict[int, int] = defaultdict(int)

        def check(c: dict, inst, market_price_fen: int) -> Refusal | None:
            org = c["organisation"]
            switch = self.killed(org, c["instrument"])
            if switch is not None:
                return Refusal(403, "non_field_errors", kill_message(switch.scope, switch.reason, inst.code))
            limits = self.overrides.get(org, self.defaults)
            price = c["price_fen_per_lot"] if c["type"] == OrderType.LIMIT else market_price_fen
            notional = price * c["quantity"]
            if limits.max_order_notional_fen is not None and notional > limits.max_order_notional_fen:
                return Refusal(400, "quantity", f"Order notional limit of {cny(limits.max_order_notional_fen)} CNY exceeded "
                               f"(this order {cny(notional)} CNY).")
            if c["type"] != OrderType.LIMIT or c["time_in_force"] not in RESTING_TIF:
                return None  # never rests: only the single-order limit applies
            if limits.max_open_orders is not None:
                share = max(self._share(limits.max_open_orders), 1)  # an account may always rest one order per shard
                have = self.count.get(org, 0) + extra_count[org]
                if have + 1 > share:
                    return Refusal(400, "quantity", f"Open order limit of {limits.max_open_orders} would be exceeded "
                                   f"({have} open){self._split(share)}.")
            if limits.max_open_notional_fen is not None:
                share = self._share(limits.max_open_notional_fen)
                have = self.notional.get(org, 0) + extra_notional[org]
                if have + notional > share:
                    shown = cny(share) if self.shards > 1 else cny(limits.max_open_notional_fen)
                    return Refusal(400, "quantity", f"Open notional limit of {cny(limits.max_open_notional_fen)} CNY would be exceeded "
                                   f"(open {cny(have)} + this {cny(notional)}){self._split(shown)}.")
            extra_count[org] += 1
            extra_notional[org] += notional
            return None

        return check

    def amend_refusal(self, order: Order, price: int | None, open_qty: int | None) -> str | None:
        """Why the book must refuse an amend (kill switch, limits), or None."""
        if self.killed(order.organisation_id, order.instrument_id) is not None:
            return KILL_REASON
        limits = self.limits(order.organisation_id)
        new_price = price if price is not None else order.price_fen_per_lot or 0
        new_open = open_qty if open_qty is not None else order.open_quantity
        if limits.max_order_notional_fen is not None and new_price * (order.filled_quantity + new_open) > limits.max_order_notional_fen:
            return "order_notional_limit"
        if limits.max_open_notional_fen is not None:
            before = self.open.get(order.pk, (0, 0))[1]
            after = self.notional.get(order.organisation_id, 0) - before + new_price * new_open
            if new_price * new_open > before and after > self._share(limits.max_open_notional_fen):
                return "open_notional_limit"
        return None


# --- Operators: limits and kill switches ------------------------------------------------------------------


def _audit(user, obj, flag: int, message: dict) -> None:
    """An operator's action, as a Django admin log entry: the audit job chains every entry
    (oversight.audit, source "admin_action"), whether it came from the admin or the API."""
    import json

    from django.contrib.admin.models import LogEntry
    from django.contrib.contenttypes.models import ContentType

    LogEntry.objects.create(
        user_id=user.pk, content_type_id=ContentType.objects.get_for_model(type(obj)).pk, object_id=str(obj.pk),
        object_repr=str(obj)[:200], action_flag=flag, change_message=json.dumps(message, sort_keys=True, default=str),
    )


@dataclass(frozen=True)
class SyncResult:
    confirmed: bool  # every shard answered in time
    cancelled: int  # resting orders the matchers cancelled in answer


def matchers_sync() -> SyncResult:
    """Tell every matcher shard to reload limits and switches now (each also does once a second)."""
    from exchange import transport

    replies = transport.broadcast({"op": "risk_sync"})
    if replies is None:
        return SyncResult(confirmed=False, cancelled=0)
    return SyncResult(confirmed=all("error" not in r for r in replies), cancelled=sum(r.get("cancelled", 0) for r in replies))


def kill_switch_pull(*, user, scope: str, reason: str, organisation=None, instrument=None,
                     idempotency_key: str | None = None) -> tuple[KillSwitch, bool, SyncResult]:
    """Pull a switch (audited), then have every shard cancel what rests in scope. Pulling one that is already
    active for the same target returns it (created False) and syncs again. With an idempotency key, a retry
    returns the switch that key pulled, even once released (a released switch is not pulled again by a retry);
    the same key for another target is refused (409)."""
    from django.contrib.admin.models import ADDITION
    from django.db import IntegrityError, transaction

    from common.errors import ServiceError

    target = {"organisation": organisation if scope == KillScope.ACCOUNT else None,
              "instrument": instrument if scope == KillScope.INSTRUMENT else None}

    def replay() -> KillSwitch | None:
        if not idempotency_key:
            return None
        earlier = KillSwitch.objects.filter(pulled_by=user, idempotency_key=idempotency_key).first()
        if earlier is not None and (earlier.scope, earlier.organisation_id, earlier.instrument_id) != (
                scope, getattr(target["organisation"], "pk", None), getattr(target["instrument"], "pk", None)):
            raise ServiceError("This idempotency key pulled a switch with another scope or target.",
                               field="idempotency_key", status_code=409)
        return earlier

    if (earlier := replay()) is not None:
        return earlier, False, matchers_sync()
    try:
        with transaction.atomic():
            switch = KillSwitch.objects.create(scope=scope, reason=reason, pulled_by=user, idempotency_key=idempotency_key or "", **target)
            _audit(user, switch, ADDITION, {"kill_switch": "pulled", "scope": scope, "organisation": switch.organisation_id,
                                            "instrument": switch.instrument_id, "reason": reason})
        created = True
    except IntegrityError:  # a concurrent retry with the same key, or a switch already active for the target
        switch = replay() or KillSwitch.objects.get(scope=scope, released_at__isnull=True, **target)
        created = False
    return switch, created, matchers_sync()


def kill_switch_release(*, user, switch: KillSwitch, reason: str = "") -> tuple[KillSwitch, SyncResult]:
    """Release a switch (audited): orders are accepted again in its scope; nothing cancelled comes back."""
    from django.contrib.admin.models import CHANGE
    from django.db import transaction
    from django.utils import timezone

    from common.errors import ServiceError

    with transaction.atomic():
        switch = KillSwitch.objects.select_for_update().get(pk=switch.pk)
        if switch.released_at is not None:
            raise ServiceError(f"Kill switch {switch.pk} was already released at {switch.released_at:%Y-%m-%d %H:%M:%S %Z}.", field="status")
        switch.released_at, switch.released_by, switch.release_reason = timezone.now(), user, reason
        switch.save(update_fields=["released_at", "released_by", "release_reason"])
        _audit(user, switch, CHANGE, {"kill_switch": "released", "scope": switch.scope, "organisation": switch.organisation_id,
                                      "instrument": switch.instrument_id, "reason": reason})
    return switch, matchers_sync()


LIMIT_FIELDS = ("max_open_orders", "max_open_notional_fen", "max_order_notional_fen", "order_rate", "note")


def risk_limit_set(*, user, organisation, **values) -> tuple[RiskLimit, SyncResult]:
    """Set (some of) an organisation's limit overrides (audited); None or "" returns a field to the default."""
    from django.contrib.admin.models import ADDITION, CHANGE
    from django.db import transaction

    with transaction.atomic():
        row, created = RiskLimit.objects.select_for_update().get_or_create(organisation=organisation)
        changed = {name: values[name] for name in LIMIT_FIELDS if name in values and getattr(row, name) != values[name]}
        for name, value in changed.items():
            setattr(row, name, value)
        row.updated_by = user
        row.save()
        if changed or created:
            _audit(user, row, ADDITION if created else CHANGE, {"risk_limit": changed, "organisation": organisation.pk})
    caches_clear()
    return row, matchers_sync()


def risk_limit_clear(*, user, organisation) -> SyncResult:
    from django.contrib.admin.models import DELETION
    from django.db import transaction

    with transaction.atomic():
        row = RiskLimit.objects.filter(organisation=organisation).first()
        if row is not None:
            _audit(user, row, DELETION, {"risk_limit": "cleared", "organisation": organisation.pk})
            row.delete()
    caches_clear()
    return matchers_sync()
