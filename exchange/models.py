"""Orders, trades and contracts. The matcher is the only writer of order state after placement.

The foreign keys of orders, order events, trades, contracts and capacity holds say `db_constraint=False`:
they are still enforced by the database, once per statement rather than once per row (common.refchecks).
"""

from __future__ import annotations

from django.db import models
from django.db.models import Q
from django.utils.translation import gettext_lazy as _

from common.fields import KeyField
from ledger.models import Hold
from marketplace.models import Instrument, Listing, Organisation, User


class Side(models.TextChoices):
    BUY = "buy", _("buy")
    SELL = "sell", _("sell")


class OrderType(models.TextChoices):
    LIMIT = "limit", _("limit")
    MARKET = "market", _("market")


class TimeInForce(models.TextChoices):
    GTC = "GTC", _("good till cancelled")
    GTD = "GTD", _("good till date")
    IOC = "IOC", _("immediate or cancel")
    FOK = "FOK", _("fill or kill")


class SelfTradePrevention(models.TextChoices):
    CANCEL_NEWEST = "cancel_newest", _("cancel newest")
    CANCEL_OLDEST = "cancel_oldest", _("cancel oldest")
    CANCEL_BOTH = "cancel_both", _("cancel both")
    DECREMENT_AND_CANCEL = "decrement_and_cancel", _("decrement and cancel")


class OrderStatus(models.TextChoices):
    PENDING = "pending", _("pending")  # stored and funded, not yet processed by the matcher
    OPEN = "open", _("open")  # resting in the book (possibly partly filled)
    FILLED = "filled", _("filled")
    CANCELLED = "cancelled", _("cancelled")
    EXPIRED = "expired", _("expired")
    REJECTED = "rejected", _("rejected")


FINAL_STATUSES = (OrderStatus.FILLED, OrderStatus.CANCELLED, OrderStatus.EXPIRED, OrderStatus.REJECTED)


class Order(models.Model):
    """Prices are fen per lot (the engine's unit); the API speaks CNY per unit."""

    # No single-column indexes: (instrument, status), (organisation, status) and the client id's unique
    # constraint lead with these (a redundant index is one more write per order stored).
    instrument = models.ForeignKey(Instrument, on_delete=models.PROTECT, related_name="orders", db_index=False, db_constraint=False)
    organisation = models.ForeignKey(Organisation, on_delete=models.PROTECT, related_name="orders", db_index=False, db_constraint=False)
    user = models.ForeignKey(User, on_delete=models.PROTECT, related_name="orders", db_constraint=False)
    client_order_id = KeyField(max_length=64)
    side = models.CharField(max_length=4, choices=Side.choices)
    type = models.CharField(max_length=8, choices=OrderType.choices, default=OrderType.LIMIT)
    time_in_force = models.CharField(max_length=3, choices=TimeInForce.choices, default=TimeInForce.GTC)
    price_fen_per_lot = models.BigIntegerField(null=True, blank=True)
    quantity = models.PositiveIntegerField()
    min_quantity = models.PositiveIntegerField(default=0)
    post_only = models.BooleanField(default=False)
    stp = models.CharField(max_length=24, choices=SelfTradePrevention.choices, default=SelfTradePrevention.CANCEL_NEWEST)
    expires_at = models.DateTimeField(null=True, blank=True)
    status = models.CharField(max_length=10, choices=OrderStatus.choices, default=OrderStatus.PENDING)
    filled_quantity = models.PositiveIntegerField(default=0)
    open_quantity = models.PositiveIntegerField(default=0)
    reason = models.CharField(max_length=40, blank=True, help_text="Why it was rejected, cancelled or expired")
    # Value filled as maker and as taker, so fees are charged on running totals: a buyer's hold covers
    # the fee rounded once per role, never once per fill.
    maker_value_fen = models.BigIntegerField(default=0)
    taker_value_fen = models.BigIntegerField(default=0)
    fee_fen = models.BigIntegerField(default=0)
    # Set durably before the cancel reaches the matcher, so a restarted matcher still applies it.
    cancel_requested_at = models.DateTimeField(null=True, blank=True)
    # A buy order's hold, a sell order's listing: each NULL on half the orders, so each is indexed (and the
    # hold kept unique) only where set: a NULL is an index entry too, written on every insert and update.
    hold = models.ForeignKey(Hold, null=True, blank=True, on_delete=models.PROTECT, related_name="orders", db_index=False, db_constraint=False)
    listing = models.ForeignKey(Listing, null=True, blank=True, on_delete=models.PROTECT, related_name="orders", db_index=False, db_constraint=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(fields=["organisation", "client_order_id"], name="order_client_id_unique"),
            models.UniqueConstraint(fields=["hold"], condition=Q(hold__isnull=False), name="order_hold_unique"),
            models.CheckConstraint(condition=Q(quantity__gt=0), name="order_quantity_positive"),
            models.CheckConstraint(condition=Q(filled_quantity__lte=models.F("quantity")), name="order_not_overfilled"),
        ]
        indexes = [
            models.Index(fields=["instrument", "status"]),
            models.Index(fields=["organisation", "status"]),
            # A trader's order list, newest first (GET /orders/): read 50 entries of it, not sort all the
            # organisation's orders (16.8 -> 0.1 ms for 4,177 orders, linear before, bench/RESULTS.md).
            models.Index(fields=["organisation", "id"], name="order_organisation_newest"),
            # What each matcher looks for once a second (Matcher.pending_commands) and when it loads its risk
            # book: without these, every order ever stored was read through (instrument, status), a cost that
            # grew with the venue's history (13.8 ms a second after 146,000 orders, bench/RESULTS.md).
            models.Index(fields=["status", "id"], condition=Q(status__in=["pending", "open"]), name="order_pending_or_open"),
            models.Index(fields=["id"], condition=Q(status="open", cancel_requested_at__isnull=False), name="order_cancel_requested"),
            models.Index(fields=["listing"], condition=Q(listing__isnull=False), name="order_listing"),
        ]

    def __str__(self) -> str:
        return f"order {self.pk} {self.side} {self.quantity}@{self.price_fen_per_lot} {self.status}"


class OrderEventKind(models.TextChoices):
    ACCEPTED = "accepted", _("accepted")
    REJECTED = "rejected", _("rejected")
    FILLED = "filled", _("filled")
    AMENDED = "amended", _("amended")
    REDUCED = "reduced", _("reduced")
    CANCELLED = "cancelled", _("cancelled")
    EXPIRED = "expired", _("expired")


class OrderEvent(models.Model):
    """The order audit trail: every change to an order, in order, with who asked and when."""

    order = models.ForeignKey(Order, on_delete=models.PROTECT, related_name="events", db_constraint=False)
    kind = models.CharField(max_length=10, choices=OrderEventKind.choices)
    quantity = models.PositiveIntegerField(default=0)
    price_fen_per_lot = models.BigIntegerField(null=True, blank=True)
    reason = models.CharField(max_length=40, blank=True)
    # Indexed only where set (below): two events in five name no trade, and three in five (fills, expiries) no actor.
    trade = models.ForeignKey("Trade", null=True, blank=True, on_delete=models.PROTECT, related_name="+", db_index=False, db_constraint=False)
    actor = models.ForeignKey(User, null=True, blank=True, on_delete=models.PROTECT, related_name="+", db_index=False, db_constraint=False)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["id"]
        indexes = [
            models.Index(fields=["trade"], condition=Q(trade__isnull=False), name="orderevent_trade"),
            models.Index(fields=["actor"], condition=Q(actor__isnull=False), name="orderevent_actor"),
        ]

    def __str__(self) -> str:
        return f"{self.order_id} {self.kind}"


class Trade(models.Model):
    instrument = models.ForeignKey(Instrument, on_delete=models.PROTECT, related_name="trades", db_index=False, db_constraint=False)  # trade_seq_unique leads with it
    seq = models.PositiveBigIntegerField(help_text="Per-instrument trade sequence, from 1")
    maker_order = models.ForeignKey(Order, on_delete=models.PROTECT, related_name="maker_trades", db_constraint=False)
    taker_order = models.ForeignKey(Order, on_delete=models.PROTECT, related_name="taker_trades", db_constraint=False)
    buyer = models.ForeignKey(Organisation, on_delete=models.PROTECT, related_name="buys", db_constraint=False)
    seller = models.ForeignKey(Organisation, on_delete=models.PROTECT, related_name="sells", db_constraint=False)
    price_fen_per_lot = models.BigIntegerField()
    quantity = models.PositiveIntegerField()
    value_fen = models.BigIntegerField()
    taker_side = models.CharField(max_length=4, choices=Side.choices)
    buyer_fee_fen = models.BigIntegerField(default=0)
    seller_fee_fen = models.BigIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["id"]
        constraints = [models.UniqueConstraint(fields=["instrument", "seq"], name="trade_seq_unique")]

    def __str__(self) -> str:
        return f"trade {self.instrument_id}#{self.seq} {self.quantity}@{self.price_fen_per_lot}"


class ContractStatus(models.TextChoices):
    """Kept by metering (its ContractDelivery is the detail), mirrored here for the contract tapes."""

    OPEN = "open", _("awaiting delivery")
    DELIVERING = "delivering", _("delivering")
    SETTLED = "settled", _("settled")
    DISPUTED = "disputed", _("disputed")


class Contract(models.Model):
    """A trade's promise: the seller delivers `quantity` lots in the instrument's window; the buyer's
    escrow pays for what metering proves."""

    trade = models.OneToOneField(Trade, on_delete=models.PROTECT, related_name="contract", db_constraint=False)
    instrument = models.ForeignKey(Instrument, on_delete=models.PROTECT, related_name="contracts", db_constraint=False)
    buyer = models.ForeignKey(Organisation, on_delete=models.PROTECT, related_name="bought_contracts", db_constraint=False)
    seller = models.ForeignKey(Organisation, on_delete=models.PROTECT, related_name="sold_contracts", db_constraint=False)
    listing = models.ForeignKey(Listing, on_delete=models.PROTECT, related_name="contracts", db_constraint=False)
    quantity = models.PositiveIntegerField(help_text="lots")
    price_fen_per_lot = models.BigIntegerField()
    value_fen = models.BigIntegerField()
    status = models.CharField(max_length=10, choices=ContractStatus.choices, default=ContractStatus.OPEN)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return f"contract {self.pk} {self.quantity} lots of {self.instrument}"


class CapacityHold(models.Model):
    """Lots of a listing reserved by a seller's order on one instrument; sold lots become contracts."""

    listing = models.ForeignKey(Listing, on_delete=models.PROTECT, related_name="capacity_holds", db_index=False, db_constraint=False)  # capacityhold_listing_inst leads with it
    order = models.OneToOneField(Order, on_delete=models.PROTECT, related_name="capacity_hold", db_constraint=False)
    instrument = models.ForeignKey(Instrument, on_delete=models.PROTECT, related_name="+", db_constraint=False)
    lots = models.PositiveIntegerField()
    sold_lots = models.PositiveIntegerField(default=0)
    released_lots = models.PositiveIntegerField(default=0)

    class Meta:
        constraints = [
            models.CheckConstraint(condition=Q(lots__gte=models.F("sold_lots") + models.F("released_lots")), name="capacity_hold_not_overdrawn"),
        ]
        # Admission sums a listing's holds on one instrument (exchange.admission._listings_sql): without
        # it, that read went through every hold the listing ever had, on every instrument.
        indexes = [models.Index(fields=["listing", "instrument"], name="capacityhold_listing_inst")]

    def __str__(self) -> str:
        return f"{self.lots} lots of listing {self.listing_id} for order {self.order_id}"

    @property
    def open_lots(self) -> int:
        return self.lots - self.sold_lots - self.released_lots


class ListingUsage(models.Model):
    """Lots of a listing held for one instrument by sell orders' capacity holds, sold or still offered: the sum
    of `lots - released_lots` over those holds. The database keeps it (triggers on the capacity holds, migration
    0007), whoever writes them, so admission reads one row per listing where it summed every hold the listing
    ever had on the instrument: a cost that grew with the listing's history (bench/RESULTS.md)."""

    listing = models.ForeignKey(Listing, on_delete=models.CASCADE, related_name="+", db_index=False)  # the unique constraint leads with it
    instrument = models.ForeignKey(Instrument, on_delete=models.CASCADE, related_name="+")
    lots = models.PositiveIntegerField(default=0)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["listing", "instrument"], name="listing_usage_unique")]

    def __str__(self) -> str:
        return f"{self.lots} lots of listing {self.listing_id} held for instrument {self.instrument_id}"


class BookState(models.Model):
    """What the matcher has persisted per instrument: market-data and trade sequence numbers."""

    instrument = models.OneToOneField(Instrument, on_delete=models.CASCADE, primary_key=True, related_name="book_state")
    book_seq = models.PositiveBigIntegerField(default=0)
    trade_seq = models.PositiveBigIntegerField(default=0)
    last_price_fen_per_lot = models.BigIntegerField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"book {self.instrument_id} seq {self.book_seq}"


class RiskLimit(models.Model):
    """An organisation's own risk limits (operators set them); a blank field takes the venue default from
    settings (RISK_MAX_OPEN_ORDERS, RISK_MAX_OPEN_NOTIONAL_FEN, RISK_MAX_ORDER_NOTIONAL_FEN, ORDER_RATE_LIMIT).
    Enforced by the matcher (exchange.risk) and, for the order rate, by order entry's throttle."""

    organisation = models.OneToOneField(Organisation, on_delete=models.CASCADE, primary_key=True, related_name="risk_limit")
    max_open_orders = models.PositiveIntegerField(null=True, blank=True, help_text="Resting orders at once")
    max_open_notional_fen = models.PositiveBigIntegerField(
        null=True, blank=True, help_text="Price x open quantity summed over resting orders, both sides (fen)")
    max_order_notional_fen = models.PositiveBigIntegerField(null=True, blank=True, help_text="One order's price x quantity (fen)")
    order_rate = models.CharField(max_length=20, blank=True, help_text='Orders per period, e.g. "50/s" or "600/min"')
    note = models.CharField(max_length=200, blank=True)
    updated_by = models.ForeignKey(User, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"risk limits of organisation {self.organisation_id}"


class KillScope(models.TextChoices):
    ACCOUNT = "account", _("account")
    INSTRUMENT = "instrument", _("instrument")
    VENUE = "venue", _("venue")


class KillSwitch(models.Model):
    """An operator's stop: while active (not released), new orders and amends in scope are refused and the
    matcher cancels what rests in scope. Released, trading may resume; cancelled orders stay cancelled."""

    scope = models.CharField(max_length=10, choices=KillScope.choices)
    organisation = models.ForeignKey(Organisation, null=True, blank=True, on_delete=models.PROTECT, related_name="kill_switches")
    instrument = models.ForeignKey(Instrument, null=True, blank=True, on_delete=models.PROTECT, related_name="kill_switches")
    reason = models.CharField(max_length=200)
    pulled_by = models.ForeignKey(User, on_delete=models.PROTECT, related_name="+")
    pulled_at = models.DateTimeField(auto_now_add=True)
    released_by = models.ForeignKey(User, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    released_at = models.DateTimeField(null=True, blank=True)
    release_reason = models.CharField(max_length=200, blank=True)
    # The operator's key for the pull: a retried POST answers with this switch, even after it was released.
    idempotency_key = models.CharField(max_length=100, blank=True, default="")

    class Meta:
        ordering = ["-id"]
        constraints = [
            models.UniqueConstraint(fields=["pulled_by", "idempotency_key"], condition=~Q(idempotency_key=""),
                                    name="kill_switch_idempotency_key_per_user"),
            models.CheckConstraint(
                condition=(Q(scope="account", organisation__isnull=False, instrument__isnull=True)
                           | Q(scope="instrument", organisation__isnull=True, instrument__isnull=False)
                           | Q(scope="venue", organisation__isnull=True, instrument__isnull=True)),
                name="kill_switch_target_matches_scope",
            ),
            models.UniqueConstraint(fields=["organisation"], condition=Q(scope="account", released_at__isnull=True), name="kill_switch_one_active_per_account"),
            models.UniqueConstraint(fields=["instrument"], condition=Q(scope="instrument", released_at__isnull=True), name="kill_switch_one_active_per_instrument"),
            models.UniqueConstraint(fields=["scope"], condition=Q(scope="venue", released_at__isnull=True), name="kill_switch_one_active_venue"),
        ]

    def __str__(self) -> str:
        target = {"account": self.organisation_id, "instrument": self.instrument_id}.get(self.scope, "")
        return f"kill switch {self.pk} {self.scope} {target}".strip()

    @property
    def target(self) -> int | None:
        return self.organisation_id if self.scope == KillScope.ACCOUNT else self.instrument_id if self.scope == KillScope.INSTRUMENT else None

    @property
    def active(self) -> bool:
        return self.released_at is None
